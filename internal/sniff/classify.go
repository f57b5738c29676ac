// Package sniff tells which protocol a client speaks from the first bytes it
// sends, without consuming them.
//
// Peek copies the socket's queued bytes with MSG_PEEK, so whatever handles
// the connection next (a splice for L4, an http.Server for L7) still reads
// them from the kernel. Classify is a pure function on such a prefix and
// says whether more bytes could change its answer; Sniff peeks until the
// answer is final or a bound is reached.
//
//	res, err := sniff.Sniff(ctx, conn, 300*time.Millisecond)
//	switch {
//	case err != nil: // client reset, closed without sending, or ctx ended
//	case res.Protocol == sniff.HTTP1, res.Protocol == sniff.HTTP2: // L7
//	default: // TLS (res.SNI for logs), unknown, or a silent client: L4
//	}
package sniff

import "strings"

// Protocol is what a client's first bytes look like.
type Protocol string

const (
	HTTP1   Protocol = "http/1"
	HTTP2   Protocol = "h2c"     // prior-knowledge HTTP/2 over cleartext
	TLS     Protocol = "tls"     // a TLS ClientHello
	Unknown Protocol = "unknown" // anything else, or too few bytes to tell
)

// Result is what Classify (or Sniff) learned.
type Result struct {
	Protocol Protocol
	SNI      string   // TLS server_name, when present
	ALPN     []string // TLS application protocols offered, when present
	N        int      // bytes examined (set by Sniff; Classify leaves it 0)
}

// H2Preface is what an HTTP/2 client with prior knowledge sends first.
const H2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// maxMethodLen bounds the method token; registered methods are at most 17
// bytes ("UPDATEREDIRECTREF"), so anything far longer is not HTTP.
const maxMethodLen = 24

// Classify looks at a prefix of a client's byte stream. When final is true
// no further bytes can change r.Protocol (or r.SNI). When final is false,
// r.Protocol is the best guess so far: HTTP1 once a known method and a
// space arrived, TLS once a ClientHello record header arrived, Unknown
// otherwise.
//
// HTTP/1.x is recognised strictly by its request line, "method SP target
// SP HTTP/1.d": a known method (methods), a request-target of visible
// characters, and the version. HTTP/0.9, leading empty lines and
// lowercase "http/1.1" are Unknown; net/http would reject them too.
func Classify(b []byte) (r Result, final bool) {
	switch {
	case len(b) == 0:
		return Result{Protocol: Unknown}, false
	case b[0] == 0x16:
		return classifyTLS(b)
	case hasPrefixEither(b, H2Preface) && len(b) >= len("PRI * HTTP/2"):
		// Shorter prefixes are also the start of an HTTP/1 "PRI" request.
		return Result{Protocol: HTTP2}, len(b) >= len(H2Preface)
	}
	return classifyHTTP1(b)
}

// hasPrefixEither reports whether b and p agree on their common length.
func hasPrefixEither(b []byte, p string) bool {
	n := min(len(b), len(p))
	return string(b[:n]) == p[:n]
}

func classifyTLS(b []byte) (Result, bool) {
	// Record header: type 0x16 (handshake), version 0x03 0x00..0x04, length;
	// then the handshake type, 0x01 for ClientHello.
	if len(b) >= 2 && b[1] != 0x03 || len(b) >= 3 && b[2] > 0x04 || len(b) >= 6 && b[5] != 0x01 {
		return Result{Protocol: Unknown}, true
	}
	if len(b) < 6 {
		return Result{Protocol: Unknown}, false
	}
	sni, alpn, err := ParseClientHello(b)
	if err == ErrIncomplete {
		return Result{Protocol: TLS}, false
	}
	// A malformed hello is still TLS: the server will refuse it, not us.
	return Result{Protocol: TLS, SNI: sni, ALPN: alpn}, true
}

var knownMethods = []string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}

// methods are the methods a request line may start with: IANA's HTTP
// method registry, and the unregistered ones in wide use (PURGE; UPnP's
// M-SEARCH, NOTIFY, SUBSCRIBE, UNSUBSCRIBE; SOURCE), as Envoy's HTTP
// inspector knows them. A client whose first bytes begin none of them is
// not HTTP at once: a protocol that sends a short word and waits ("ping")
// would otherwise wait for the sniffing timeout.
var methods = []string{
	"ACL", "BASELINE-CONTROL", "BIND", "CHECKIN", "CHECKOUT", "CONNECT", "COPY", "DELETE", "GET", "HEAD",
	"LABEL", "LINK", "LOCK", "M-SEARCH", "MERGE", "MKACTIVITY", "MKCALENDAR", "MKCOL", "MKREDIRECTREF",
	"MKWORKSPACE", "MOVE", "NOTIFY", "OPTIONS", "ORDERPATCH", "PATCH", "POST", "PRI", "PROPFIND",
	"PROPPATCH", "PURGE", "PUT", "QUERY", "REBIND", "REPORT", "SEARCH", "SOURCE", "SUBSCRIBE", "TRACE",
	"UNBIND", "UNCHECKOUT", "UNLINK", "UNLOCK", "UNSUBSCRIBE", "UPDATE", "UPDATEREDIRECTREF",
	"VERSION-CONTROL",
}

// methodPrefix reports whether b is a method of methods, or (whole false)
// the beginning of one.
func methodPrefix(b []byte, whole bool) bool {
	for _, m := range methods {
		if whole && string(b) == m || !whole && len(b) <= len(m) && string(b) == m[:len(b)] {
			return true
		}
	}
	return false
}

func classifyHTTP1(b []byte) (Result, bool) {
	unknown := Result{Protocol: Unknown}
	// Method token.
	i := 0
	for i < len(b) && isTchar(b[i]) {
		i++
	}
	if i == 0 || i > maxMethodLen {
		return unknown, true
	}
	if i == len(b) {
		return unknown, !methodPrefix(b, false)
	}
	if b[i] != ' ' || !methodPrefix(b[:i], true) {
		return unknown, true
	}
	guess := unknown
	for _, m := range knownMethods {
		if string(b[:i]) == m {
			guess = Result{Protocol: HTTP1}
		}
	}
	// Request-target: visible US-ASCII, and obs-text some clients send.
	j := i + 1
	for j < len(b) && (b[j] > 0x20 && b[j] != 0x7f) {
		j++
	}
	if j == i+1 && j < len(b) || j < len(b) && b[j] != ' ' {
		return unknown, true
	}
	if j == len(b) {
		return guess, false
	}
	// Version: "HTTP/1." and a digit.
	const version = "HTTP/1."
	v := b[j+1:]
	if !hasPrefixEither(v, version) {
		return unknown, true
	}
	if len(v) <= len(version) {
		return guess, false
	}
	if c := v[len(version)]; c < '0' || c > '9' {
		return unknown, true
	}
	return Result{Protocol: HTTP1}, true
}

// isTchar reports whether c may appear in an RFC 9110 token.
func isTchar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}
