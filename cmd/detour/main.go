// Command detour is a transparent TCP and HTTP proxy for Linux. It checks
// what the kernel allows, installs and removes its own interception rules
// (TPROXY or REDIRECT), forwards each connection to its original
// destination, and ships a lab that rebuilds both deployments in network
// namespaces. Run `detour help` for the commands.
package main

import (
	"fmt"
	"io"
	"os"
)

// Exit codes, the contract scripts rely on.
const (
	exitOK      = 0
	exitFailure = 1 // runtime failure
	exitUsage   = 2 // usage or config error
)

type command struct {
	name, summary string
	run           func(args []string, stdout, stderr io.Writer) int
}

func commands() []command {
	return []command{
		{"run", "intercept and forward connections (installs rules, removes them on exit)", cmdRun},
		{"rules", "apply, clean or show the interception rules without proxying", cmdRules},
		{"check", "report what this kernel and these privileges allow, with fixes", cmdCheck},
		{"lab", "rebuild the tutorials' networks in namespaces and show detour at work", cmdLab},
		{"origdst", "print each redirected connection's original destination", cmdOrigDst},
		{"status", "show a running detour's listeners, rules and live hosts (from its admin endpoint)", cmdStatus},
		{"reload", "have a running detour reload its configuration file, and say whether it was applied", cmdReload},
		{"version", "print the version", cmdVersion},
	}
}

func main() {
	os.Exit(dispatch(os.Args[1:], os.Stdout, os.Stderr))
}

func dispatch(args []string, stdout, stderr io.Writer) int {
	// What other tools take: `envoy --version`, `git help COMMAND`.
	if len(args) > 0 && (args[0] == "--version" || args[0] == "-version") {
		args = append([]string{"version"}, args[1:]...)
	}
	if len(args) == 2 && args[0] == "help" {
		args = []string{args[1], "--help"}
	}
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stdout)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "detour: unknown command %q\n\n", args[0])
	usage(stderr)
	return exitUsage
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "detour — a transparent proxy for Linux (TPROXY and REDIRECT)")
	fmt.Fprintln(w, "\nUsage: detour COMMAND [flags]   (detour COMMAND --help, or detour help COMMAND, for each)")
	fmt.Fprintln(w, "\nCommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nExamples:")
	fmt.Fprintln(w, "  detour lab                                   # both tutorials' networks, end to end")
	fmt.Fprintln(w, "  detour check --mode tproxy --router")
	fmt.Fprintln(w, "  detour run --mode tproxy --intercept-port 80")
	fmt.Fprintln(w, "  detour run --mode redirect --intercept-port 80,443 --listen 127.0.0.1:4999")
}
