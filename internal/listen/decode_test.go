package listen

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

func sockaddr4(ip [4]byte, port uint16) []byte {
	b := make([]byte, unix.SizeofSockaddrInet4)
	binary.NativeEndian.PutUint16(b, unix.AF_INET)
	binary.BigEndian.PutUint16(b[2:], port)
	copy(b[4:], ip[:])
	return b
}

func sockaddr6(ip [16]byte, port uint16) []byte {
	b := make([]byte, unix.SizeofSockaddrInet6)
	binary.NativeEndian.PutUint16(b, unix.AF_INET6)
	binary.BigEndian.PutUint16(b[2:], port)
	copy(b[8:], ip[:])
	return b
}

func TestDecodeSockaddr(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		want    string
		wantErr bool
	}{
		{"ipv4 port 80", sockaddr4([4]byte{198, 18, 2, 2}, 80), "198.18.2.2:80", false},
		// 0x1f90 = 8080: a swapped decoder would say 36895.
		{"ipv4 byte order", sockaddr4([4]byte{127, 0, 0, 1}, 8080), "127.0.0.1:8080", false},
		{"ipv6", sockaddr6(netip.MustParseAddr("2001:db8::2").As16(), 443), "[2001:db8::2]:443", false},
		{"ipv4-mapped ipv6 unmapped", sockaddr6(netip.MustParseAddr("::ffff:198.18.2.2").As16(), 80), "198.18.2.2:80", false},
		{"empty", nil, "", true},
		{"short v4", sockaddr4([4]byte{1, 2, 3, 4}, 1)[:6], "", true},
		{"short v6", sockaddr6([16]byte{}, 1)[:20], "", true},
		{"unknown family", []byte{0xff, 0xff, 0, 80, 1, 2, 3, 4}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeSockaddr(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err == nil && got.String() != tt.want {
				t.Fatalf("got %s, want %s", got, tt.want)
			}
		})
	}
}

func FuzzDecodeSockaddr(f *testing.F) {
	f.Add(sockaddr4([4]byte{198, 18, 2, 2}, 80))
	f.Add(sockaddr6(netip.MustParseAddr("2001:db8::2").As16(), 443))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		ap, err := DecodeSockaddr(b)
		if err == nil && !ap.IsValid() {
			t.Fatalf("no error but invalid address for %x", b)
		}
	})
}
