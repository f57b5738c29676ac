package sniff

import "errors"

var (
	// ErrIncomplete means the bytes end before the ClientHello does.
	ErrIncomplete = errors.New("sniff: incomplete TLS ClientHello")
	// ErrNotClientHello means the bytes are not a TLS handshake record
	// carrying a ClientHello.
	ErrNotClientHello = errors.New("sniff: not a TLS ClientHello")
	// ErrMalformed means a ClientHello whose fields do not add up.
	ErrMalformed = errors.New("sniff: malformed TLS ClientHello")
)

const (
	maxRecordLen = 1 << 14 // TLSPlaintext.length limit (RFC 8446 5.1)
	maxHelloLen  = 1 << 16 // generous; real hellos are a few KiB
	extSNI       = 0
	extALPN      = 16
)

// ParseClientHello reads the server name (SNI) and the offered ALPN
// protocols from b, which starts at a TLS record header. A ClientHello that
// spans several handshake records is reassembled. Bytes after the
// ClientHello are ignored. Every length is checked against what remains, so
// any input is safe; ErrIncomplete means more bytes are needed.
func ParseClientHello(b []byte) (sni string, alpn []string, err error) {
	msg, err := handshakeMessage(b)
	if err != nil {
		return "", nil, err
	}
	return parseHello(msg)
}

// handshakeMessage returns the body of the first handshake message, which
// must be a ClientHello, gathered from consecutive handshake records.
func handshakeMessage(b []byte) ([]byte, error) {
	var msg []byte
	need := -1 // the message's length with its 4-byte header, once known
	for {
		if len(b) >= 1 && b[0] != 0x16 || len(b) >= 2 && b[1] != 0x03 || len(b) >= 3 && b[2] > 0x04 {
			return nil, ErrNotClientHello
		}
		if len(b) < 5 {
			return nil, ErrIncomplete
		}
		n := int(b[3])<<8 | int(b[4])
		if n == 0 || n > maxRecordLen {
			return nil, ErrMalformed
		}
		if msg == nil && len(b) > 5 && b[5] != 0x01 {
			return nil, ErrNotClientHello
		}
		if len(b) < 5+n {
			return nil, ErrIncomplete
		}
		frag := b[5 : 5+n]
		b = b[5+n:]
		if msg == nil {
			msg = frag // usually the whole message: no copy
		} else {
			msg = append(msg[:len(msg):len(msg)], frag...)
		}
		if need < 0 && len(msg) >= 4 {
			if msg[0] != 0x01 {
				return nil, ErrNotClientHello
			}
			need = 4 + (int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3]))
			if need > maxHelloLen {
				return nil, ErrMalformed
			}
		}
		if need >= 0 && len(msg) >= need {
			return msg[4:need], nil
		}
	}
}

// parseHello walks a ClientHello body (RFC 8446 4.1.2).
func parseHello(msg []byte) (sni string, alpn []string, err error) {
	r := reader(msg)
	var sessionID, suites, compression, exts reader
	if !r.skip(2+32) || !r.vec8(&sessionID) || len(sessionID) > 32 ||
		!r.vec16(&suites) || len(suites) < 2 || len(suites)%2 != 0 ||
		!r.vec8(&compression) || len(compression) < 1 {
		return "", nil, ErrMalformed
	}
	if len(r) == 0 {
		return "", nil, nil // no extensions at all (SSL 3.0 style)
	}
	if !r.vec16(&exts) || len(r) != 0 {
		return "", nil, ErrMalformed
	}
	for len(exts) > 0 {
		var typ int
		var data reader
		if !exts.u16(&typ) || !exts.vec16(&data) {
			return "", nil, ErrMalformed
		}
		switch typ {
		case extSNI:
			if sni, err = parseSNI(data); err != nil {
				return "", nil, err
			}
		case extALPN:
			if alpn, err = parseALPN(data); err != nil {
				return "", nil, err
			}
		}
	}
	return sni, alpn, nil
}

// parseSNI returns the first host_name of a server_name extension
// (RFC 6066 3). Names must be printable ASCII: they end up in logs.
func parseSNI(data reader) (string, error) {
	var list reader
	if !data.vec16(&list) || len(data) != 0 || len(list) == 0 {
		return "", ErrMalformed
	}
	name := ""
	for len(list) > 0 {
		var typ int
		var n reader
		if !list.u8(&typ) || !list.vec16(&n) {
			return "", ErrMalformed
		}
		if typ != 0 || name != "" {
			continue
		}
		if len(n) == 0 || len(n) > 255 {
			return "", ErrMalformed
		}
		for _, c := range n {
			if c <= 0x20 || c >= 0x7f {
				return "", ErrMalformed
			}
		}
		name = string(n)
	}
	return name, nil
}

// parseALPN returns the protocol names of an ALPN extension (RFC 7301 3.1).
func parseALPN(data reader) ([]string, error) {
	var list reader
	if !data.vec16(&list) || len(data) != 0 || len(list) == 0 {
		return nil, ErrMalformed
	}
	var protos []string
	for len(list) > 0 {
		var p reader
		if !list.vec8(&p) || len(p) == 0 {
			return nil, ErrMalformed
		}
		protos = append(protos, string(p))
	}
	return protos, nil
}

// reader is a bounds-checked cursor over big-endian TLS fields; every
// method reports false instead of reading past the end.
type reader []byte

func (r *reader) skip(n int) bool {
	if len(*r) < n {
		return false
	}
	*r = (*r)[n:]
	return true
}

func (r *reader) u8(v *int) bool {
	if len(*r) < 1 {
		return false
	}
	*v = int((*r)[0])
	*r = (*r)[1:]
	return true
}

func (r *reader) u16(v *int) bool {
	if len(*r) < 2 {
		return false
	}
	*v = int((*r)[0])<<8 | int((*r)[1])
	*r = (*r)[2:]
	return true
}

// vec8 and vec16 read a vector with a one- or two-byte length prefix.
func (r *reader) vec8(out *reader) bool {
	var n int
	return r.u8(&n) && r.bytes(n, out)
}

func (r *reader) vec16(out *reader) bool {
	var n int
	return r.u16(&n) && r.bytes(n, out)
}

func (r *reader) bytes(n int, out *reader) bool {
	if len(*r) < n {
		return false
	}
	*out = (*r)[:n]
	*r = (*r)[n:]
	return true
}
