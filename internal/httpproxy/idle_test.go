package httpproxy

import (
	"testing"
	"time"
)

// TestIdleDeadlineRenewal: a deadline is set when none is known, or when
// less than 7/8 of the timeout is left of the one set last; never with no
// timeout. An hour's timeout keeps the test's own run time far from the
// thresholds.
func TestIdleDeadlineRenewal(t *testing.T) {
	const d = time.Hour
	for _, tt := range []struct {
		name    string
		timeout time.Duration
		left    time.Duration // of the deadline set last, before due; 0: none set
		due     bool
	}{
		{"no timeout", 0, 0, false},
		{"none set", d, 0, true},
		{"all left", d, d, false},
		{"just over 7/8 left", d, d - d/8 + time.Minute, false},
		{"just under 7/8 left", d, d - d/8 - time.Minute, true},
		{"passed", d, -time.Minute, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			idle := idleDeadline{timeout: tt.timeout}
			if tt.left != 0 {
				idle.at.Store(monoTime(time.Now().Add(tt.left)))
			}
			before := time.Now()
			dl, due := idle.due()
			if due != tt.due {
				t.Fatalf("due %v, want %v", due, tt.due)
			}
			if !due {
				return
			}
			if dl.Before(before.Add(d)) || dl.After(time.Now().Add(d)) {
				t.Errorf("deadline %v, want the timeout from now", dl)
			}
			if idle.at.Load() != monoTime(dl) {
				t.Errorf("the deadline set is not remembered")
			}
			if _, again := idle.due(); again {
				t.Errorf("due again right after it was set")
			}
			idle.forget()
			if _, again := idle.due(); !again {
				t.Errorf("not due after forget")
			}
		})
	}
}
