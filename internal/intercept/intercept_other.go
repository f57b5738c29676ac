//go:build !linux

package intercept

import "errors"

var errNotLinux = errors.New("intercept: installing interception rules needs Linux (nftables)")

// Apply needs Linux.
func Apply(o Options) error { return errNotLinux }

// Drain needs Linux.
func Drain(o Options) error { return errNotLinux }

// Clean needs Linux.
func Clean(o Options) error { return errNotLinux }

// Show needs Linux.
func Show(o Options) (string, error) { return "", errNotLinux }

// Missing needs Linux.
func Missing(o Options) ([]string, error) { return nil, errNotLinux }

// Ensure needs Linux.
func Ensure(o Options) ([]string, error) { return nil, errNotLinux }

// Installed needs Linux.
func Installed(o Options) (bool, error) { return false, errNotLinux }

// Owner is a run's hold on its table's rules; it needs Linux.
type Owner struct{}

// ErrOwned is returned by Own when a live process holds the table.
var ErrOwned = errors.New("owned by another detour")

// Own needs Linux.
func Own(o Options) (*Owner, error) { return nil, errNotLinux }

// Release does nothing without Linux.
func (w *Owner) Release() {}

// Kept needs Linux.
func Kept(o Options) ([]string, error) { return nil, errNotLinux }

// CleanUnowned needs Linux.
func CleanUnowned(o Options) ([]string, error) { return nil, errNotLinux }
