//go:build !linux

package check

import "context"

// Run reports that detour's interception needs Linux.
func Run(ctx context.Context, o Options) []Result {
	return []Result{{Name: "operating system", Detail: "detour intercepts connections with Linux netfilter", Fix: "run detour on Linux"}}
}
