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
	other, err := Own(inNS(Options{TableName: "detour_b"}, a))
	if err != nil {
		t.Fatalf("another table in the same namespace: %v", err)
	}
	other.Release()
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
