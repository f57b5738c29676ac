package main

import (
	"fmt"
	"io"
	"runtime"
)

func cmdVersion(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintf(stdout, "detour %s (%s)\n", buildVersion(), runtime.Version())
	return exitOK
}
