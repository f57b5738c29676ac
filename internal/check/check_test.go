package check

import (
	"bytes"
	"testing"
)

func TestPrint(t *testing.T) {
	tests := []struct {
		name   string
		rs     []Result
		want   string
		wantOK bool
	}{
		{"empty", nil, "", true},
		{"ok", []Result{{Name: "nftables", OK: true}}, "ok    nftables\n", true},
		{"ok with detail, fix hidden", []Result{{Name: "privileges", OK: true, Detail: "root", Fix: "unused"}}, "ok    privileges: root\n", true},
		{"failure with fix", []Result{
			{Name: "nftables tproxy expression", OK: true},
			{Name: "nftables socket expression", Detail: "no such file or directory", Fix: "modprobe nft_socket"},
		}, "ok    nftables tproxy expression\n" +
			"FAIL  nftables socket expression: no such file or directory\n" +
			"      fix: modprobe nft_socket\n", false},
		{"failure without fix", []Result{{Name: "x"}}, "FAIL  x\n", false},
		{"a warning does not fail", []Result{{Name: "IPv6", Warn: true, Detail: "disabled", Fix: "sysctl"}},
			"warn  IPv6: disabled\n      fix: sysctl\n", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			ok := Print(&b, tc.rs)
			if b.String() != tc.want || ok != tc.wantOK {
				t.Errorf("Print = %v\n%q\nwant %v\n%q", ok, b.String(), tc.wantOK, tc.want)
			}
		})
	}
}
