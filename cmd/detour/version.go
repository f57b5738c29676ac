package main

import (
	"flag"
	"fmt"
	"io"
	"runtime"
)

const versionHelp = `Usage: detour version

Prints detour's version and the Go version that built it. The version is
the module's: a release's tag; for a go build from a git clone, the
pseudo-version Go stamps, v0.0.0-DATE-COMMIT (+dirty with local
changes); "devel" when none was stamped (go run, -buildvcs=false).

Example:
  detour version
`

func cmdVersion(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	fs.SetOutput(stderr)
	setUsage(fs, versionHelp)
	if code, ok := parseFlagsOnly(fs, args, stdout, stderr); !ok {
		return code
	}
	fmt.Fprintf(stdout, "detour %s (%s)\n", buildVersion(), runtime.Version())
	return exitOK
}
