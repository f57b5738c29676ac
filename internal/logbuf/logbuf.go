// Package logbuf is test support: a buffer that a component under test
// writes its log (or access log) into from its own goroutines while the
// test reads it.
package logbuf

import (
	"bytes"
	"strings"
	"sync"
	"time"
)

// Buffer is a bytes.Buffer safe for concurrent Write and String. The zero
// value is ready to use.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String is what was written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// WaitFor reports whether what was written holds substr n times within
// timeout.
func (b *Buffer) WaitFor(substr string, n int, timeout time.Duration) bool {
	for deadline := time.Now().Add(timeout); ; time.Sleep(10 * time.Millisecond) {
		if strings.Count(b.String(), substr) >= n {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}
