package main

import (
	"runtime/debug"
	"testing"
)

// TestVersionOf: `detour version` (and /server_info) names the revision
// once. Go 1.24 and later stamp a go build from a git clone with a
// pseudo-version that already ends in it.
func TestVersionOf(t *testing.T) {
	const rev = "5b8ed26185ee0123456789abcdef0123456789ab"
	vcs := []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}}
	for _, c := range []struct {
		name     string
		version  string
		settings []debug.BuildSetting
		want     string
	}{
		{"go run: nothing stamped", "(devel)", nil, "devel"},
		{"no version, a revision", "(devel)", vcs, "devel 5b8ed26185ee"},
		{"go build from a clone", "v0.0.0-20261206114827-5b8ed26185ee", vcs, "v0.0.0-20261206114827-5b8ed26185ee"},
		{"go build, local changes", "v0.0.0-20261206114827-5b8ed26185ee+dirty", vcs, "v0.0.0-20261206114827-5b8ed26185ee+dirty"},
		{"a tag", "v1.2.3", vcs, "v1.2.3 5b8ed26185ee"},
		{"a released module", "v1.2.3", nil, "v1.2.3"},
	} {
		bi := &debug.BuildInfo{Main: debug.Module{Path: "github.com/detour-proxy/detour", Version: c.version}, Settings: c.settings}
		if got := versionOf(bi); got != c.want {
			t.Errorf("%s: versionOf = %q, want %q", c.name, got, c.want)
		}
	}
	if got := versionOf(nil); got != "devel" {
		t.Errorf("no build info: versionOf = %q, want devel", got)
	}
}
