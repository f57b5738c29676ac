package intercept

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
)

// TestOwn: one hold per table and network namespace, however many try;
// another table, or another namespace, is free; a released hold can be
// taken again.
func TestOwn(t *testing.T) {
	OwnerDir = t.TempDir()
	a := newNS(t)
	first, err := Own(inNS(Options{}, a))
	if err != nil {
		t.Fatal(err)
	}
	defer first.Release()
	_, err = Own(inNS(Options{}, a))
	if !errors.Is(err, ErrOwned) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) {
		t.Fatalf("second hold on the same table: %v, want ErrOwned naming pid %d", err, os.Getpid())
	}
	// In tproxy mode the policy routing is shared: another table needs its
	// own route table and mark.
	if _, err := Own(inNS(Options{TableName: "detour_b"}, a)); !errors.Is(err, ErrOwned) || !strings.Contains(err.Error(), "route table 100") {
		t.Errorf("another table with the same route table: %v, want ErrOwned naming route table 100", err)
	}
	if _, err := Own(inNS(Options{TableName: "detour_b", RouteTable: 101}, a)); !errors.Is(err, ErrOwned) || !strings.Contains(err.Error(), "tproxy mark 0x1") {
		t.Errorf("another table with the same mark: %v, want ErrOwned naming tproxy mark 0x1", err)
	}
	for _, o := range []Options{
		{TableName: "detour_b", RouteTable: 101, TProxyMark: 0x3, UpstreamMark: 0x4},
		{Mode: ModeRedirect, TableName: "detour_c"},
		{Mode: ModeRedirect, TableName: "t" + strings.Repeat("x", 250), RouteTable: 102, TProxyMark: 0x5}, // a long name: a hashed file name
	} {
		other, err := Own(inNS(o, a))
		if err != nil {
			t.Fatalf("%+v beside the first: %v", o, err)
		}
		other.Release()
	}
	t.Run("another namespace", func(t *testing.T) {
		elsewhere, err := Own(inNS(Options{}, newNS(t)))
		if err != nil {
			t.Fatalf("the same table in another namespace: %v", err)
		}
		elsewhere.Release()
	})

	first.Release()
	first.Release() // twice is harmless
	again, err := Own(inNS(Options{}, a))
	if err != nil {
		t.Fatalf("after the release: %v", err)
	}
	again.Release()
	if ents, _ := os.ReadDir(OwnerDir); len(ents) != 0 {
		t.Errorf("lock files left after every release: %v", ents)
	}
}
