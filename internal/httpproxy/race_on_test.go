//go:build race

package httpproxy

// raceEnabled: the race detector moves crypto/rand's buffer to the heap,
// so allocation counts differ.
const raceEnabled = true
