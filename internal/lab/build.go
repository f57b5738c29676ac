package lab

import (
	"fmt"
	"os/exec"
	"path/filepath"
)

// BuildDetour compiles the detour command into dir and returns its path,
// for tests that run the real binary in the lab's namespaces. extra are
// more `go build` flags, such as "-race".
func BuildDetour(dir string, extra ...string) (string, error) {
	bin := filepath.Join(dir, "detour")
	args := append(append([]string{"build", "-o", bin}, extra...), "github.com/detour-proxy/detour/cmd/detour")
	if out, err := exec.Command("go", args...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build detour: %v\n%s", err, out)
	}
	return bin, nil
}
