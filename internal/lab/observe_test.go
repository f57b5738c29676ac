package lab

import "testing"

func TestAdminAddr(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "127.0.0.1:9901"},
		{[]string{"--log-level", "debug"}, "127.0.0.1:9901"},
		{[]string{"--admin", "off"}, ""},
		{[]string{"--admin=off"}, ""},
		{[]string{"-admin", "[::1]:9000"}, "[::1]:9000"},
		{[]string{"--admin", "off", "--admin=127.0.0.1:1234", "--admin-allow-remote"}, "127.0.0.1:1234"},
	} {
		if got := adminAddr(c.args); got != c.want {
			t.Errorf("adminAddr(%q) = %q, want %q", c.args, got, c.want)
		}
	}
}
