package main

import (
	"bufio"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/detour-proxy/detour/internal/config"
)

// unitFile reads contrib/systemd/detour.service's [Service] settings.
func unitFile(t *testing.T) map[string][]string {
	t.Helper()
	f, err := os.Open("../../contrib/systemd/detour.service")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	set := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#':
		case line[0] == '[':
			section = line
		case section == "[Service]":
			k, v, _ := strings.Cut(line, "=")
			set[k] = append(set[k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return set
}

// TestUnitFile: the unit agrees with what detour does. `systemctl
// reload` runs `detour reload`, which exits with the reload's outcome;
// with Type=notify-reload and no ExecReload= systemd sent SIGHUP, and a
// rejected file reloaded "successfully". A config error
// (exit 2) is not restarted: the file will not mend itself, and
// Restart=on-failure would retry it every RestartSec= until systemd's
// start limit, burying the one line that says what is wrong. The stop
// timeout leaves the default drain time to finish before SIGKILL, which
// would leave the rules in place.
func TestUnitFile(t *testing.T) {
	u := unitFile(t)
	prevent := strings.Fields(strings.Join(u["RestartPreventExitStatus"], " "))
	if !slices.Contains(prevent, strconv.Itoa(exitUsage)) {
		t.Errorf("RestartPreventExitStatus=%s: want it to list %d, the exit code of a config error", prevent, exitUsage)
	}
	for _, tc := range []struct{ key, want string }{
		{"Type", "notify"},
		// A rejected reload must fail `systemctl reload`: only a command
		// that waits for the outcome can tell systemd (TestDetourReload).
		{"ExecReload", "/usr/local/bin/detour reload"},
		{"Restart", "on-failure"},
		{"KillSignal", "SIGTERM"},
	} {
		if got := u[tc.key]; len(got) != 1 || got[0] != tc.want {
			t.Errorf("%s=%v, want %s", tc.key, got, tc.want)
		}
	}
	stop, err := time.ParseDuration(strings.Join(u["TimeoutStopSec"], ""))
	if err != nil || stop <= config.DefaultDrainTimeout {
		t.Errorf("TimeoutStopSec=%v (%v): want longer than the default drain_timeout, %v", u["TimeoutStopSec"], err, config.DefaultDrainTimeout)
	}
}
