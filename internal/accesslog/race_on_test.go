//go:build race

package accesslog

// raceEnabled: the race detector makes sync.Pool drop buffers at random.
const raceEnabled = true
