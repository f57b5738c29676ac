package main

import (
	"fmt"
	"io"
	"runtime/debug"
)

func cmdVersion(args []string, stdout, stderr io.Writer) int {
	v, rev := "devel", ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				rev = " " + s.Value[:12]
			}
		}
		fmt.Fprintf(stdout, "detour %s%s (%s)\n", v, rev, bi.GoVersion)
		return exitOK
	}
	fmt.Fprintf(stdout, "detour %s\n", v)
	return exitOK
}
