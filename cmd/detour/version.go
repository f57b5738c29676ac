package main

import (
	"flag"
	"fmt"
	"io"
	"runtime"
)

const versionHelp = `Usage: detour version

Prints detour's version (the module's, or "devel" for a build from a
working tree) and the Go version that built it.

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
