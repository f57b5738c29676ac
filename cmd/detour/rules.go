package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/detour-proxy/detour/internal/intercept"
)

const rulesHelp = `Usage: detour rules apply|clean|show [-c detour.yaml] [flags]

  apply   install the interception rules (atomically; replaces a previous set)
          --dry-run prints them instead
  clean   remove exactly what detour installed; succeeds when nothing is there;
          also the policy routing the table records, whatever --tproxy-mark
          and --route-table say (unless a running detour holds it: then it
          says so, and removes the table all the same); with --mode
          redirect, only that
  show    print what is installed, in nft syntax, with the policy routes
          (in tproxy mode those of the flags; in both, those the table
          records)

Example:
  detour rules apply --mode tproxy --intercept-port 80,443 --intercept-iface eth1
  detour rules show
  detour rules clean

Flags:
`

func cmdRules(args []string, stdout, stderr io.Writer) int {
	f := newConfigFlags("rules", stderr, false)
	dry := f.fs.Bool("dry-run", false, "apply: print the rules instead of installing them")
	setUsage(f.fs, rulesHelp)
	if len(args) == 0 || (args[0] != "apply" && args[0] != "clean" && args[0] != "show") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			f.fs.SetOutput(stdout)
			f.fs.Usage()
			return exitOK
		}
		if len(args) == 0 {
			fmt.Fprintln(stderr, "detour rules: say apply, clean or show")
		} else {
			fmt.Fprintf(stderr, "detour rules: %q is not apply, clean or show (the verb comes first: detour rules show --mode tproxy)\n", args[0])
		}
		f.fs.Usage()
		return exitUsage
	}
	verb := args[0]
	if code, ok := parseFlagsOnly(f.fs, args[1:], stdout, stderr); !ok {
		return code
	}
	cfg, err := f.load()
	if err != nil {
		fmt.Fprintf(stderr, "detour rules: %v\n", err)
		return exitUsage
	}
	o := interceptOptions(cfg)
	switch verb {
	case "apply":
		if len(o.Ports) == 0 {
			fmt.Fprintln(stderr, "detour rules apply: no --intercept-port given; nothing to intercept")
			return exitUsage
		}
		if *dry {
			text, err := intercept.Render(o)
			if err != nil {
				fmt.Fprintf(stderr, "detour rules apply: %v\n", err)
				return exitUsage
			}
			fmt.Fprint(stdout, text)
			return exitOK
		}
		if err := whileOwning(o, intercept.Apply); err != nil {
			fmt.Fprintf(stderr, "detour rules apply: %v\n", err)
			return exitFailure
		}
		fmt.Fprintf(stdout, "installed %s rules (table inet %s); remove them with `%s`\n", o.Mode, o.TableName, cleanCommand(o))
		if kept, _ := intercept.Kept(o); len(kept) > 0 {
			fmt.Fprintf(stdout, "used, and left in place by clean, policy routing detour did not add: %s\n", strings.Join(kept, "; "))
		}
	case "clean":
		// Only the table is held throughout: the mark and route table a
		// killed run's table shares with a live detour of another table
		// are that one's, and stay (inUse), while the table goes.
		inUse, err := intercept.CleanUnowned(o)
		if err != nil {
			fmt.Fprintf(stderr, "detour rules clean: %v\n", ownedHint(err))
			return exitFailure
		}
		fmt.Fprintln(stdout, "removed detour's rules (if any)")
		for _, p := range inUse {
			fmt.Fprintf(stdout, "left the policy routing %s: a running detour uses it, and removes it when it exits\n", p)
		}
		// Policy routing without detour's proto 222 stays: made by hand,
		// or a leftover of a detour older than that marking, which looks
		// the same. Only the user can tell which; say what stays.
		if kept, _ := intercept.Kept(o); len(kept) > 0 {
			fmt.Fprintf(stdout, "left policy routing detour did not add (made by hand, or by a detour older than its proto 222 marking: if it is a leftover, delete it with ip rule del / ip route del): %s\n", strings.Join(kept, "; "))
		}
	case "show":
		text, err := intercept.Show(o)
		if err != nil {
			fmt.Fprintf(stderr, "detour rules show: %v\n", err)
			return exitFailure
		}
		fmt.Fprint(stdout, text)
	}
	return exitOK
}

// cleanCommand is the command that removes what apply installed with o:
// clean finds the mark and route table in the table, but needs its name,
// and in redirect mode the mode, which has no policy routing of its own.
func cleanCommand(o intercept.Options) string {
	cmd := "detour rules clean"
	if o.Mode == intercept.ModeRedirect {
		cmd += " --mode redirect"
	}
	if o.TableName != intercept.DefaultTableName {
		cmd += " --table-name " + o.TableName
	}
	return cmd
}

// whileOwning runs change on o's rules unless a running detour owns them:
// replacing or removing them under it would leave it serving with rules it
// no longer has.
func whileOwning(o intercept.Options, change func(intercept.Options) error) error {
	owner, err := intercept.Own(o)
	if err != nil {
		return ownedHint(err)
	}
	defer owner.Release()
	return change(o)
}

// ownedHint adds what to do when another detour holds the table.
func ownedHint(err error) error {
	if errors.Is(err, intercept.ErrOwned) {
		return fmt.Errorf("%w: stop it first, or give this one another table (--table-name, intercept.table_name; in tproxy mode also another --route-table and --tproxy-mark)", err)
	}
	return err
}
