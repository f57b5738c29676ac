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

// Installed needs Linux.
func Installed(o Options) (bool, error) { return false, errNotLinux }
