package lab

import (
	"fmt"
	"regexp"
)

var validID = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,40}$`)

// CheckID reports whether id can name a lab's namespaces (dt-ID-ROLE).
func CheckID(id string) error {
	if !validID.MatchString(id) {
		return fmt.Errorf("lab id %q: use 1-40 letters, digits, '.', '_' or '-'", id)
	}
	return nil
}
