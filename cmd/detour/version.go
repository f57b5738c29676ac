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
	fs.Usage = func() { fmt.Fprint(fs.Output(), versionHelp); fs.PrintDefaults() }
	if code, ok := parse(fs, args, stdout); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "detour version: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	fmt.Fprintf(stdout, "detour %s (%s)\n", buildVersion(), runtime.Version())
	return exitOK
}
