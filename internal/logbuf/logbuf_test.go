package logbuf

import (
	"fmt"
	"testing"
	"time"
)

func TestWaitFor(t *testing.T) {
	var b Buffer
	go func() {
		for i := range 3 {
			fmt.Fprintf(&b, "line %d ready\n", i)
			time.Sleep(5 * time.Millisecond)
		}
	}()
	if !b.WaitFor("ready", 3, 10*time.Second) {
		t.Fatalf("three lines never came: %q", b.String())
	}
	if b.WaitFor("ready", 4, 50*time.Millisecond) {
		t.Fatalf("a fourth line counted that was never written: %q", b.String())
	}
}
