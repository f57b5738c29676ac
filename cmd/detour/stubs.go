package main

import "io"

func cmdCheck(args []string, stdout, stderr io.Writer) int { return exitFailure }
