package httpproxy

import "errors"

// errFramingConflict refuses an upstream response head with both
// Content-Length and Transfer-Encoding. RFC 9112, 6.3: such a message
// "ought to be handled as an error" (it may be an attempt at response
// splitting), and its connection must not carry another message. Envoy
// (without allow_chunked_length, its default) and nginx refuse it as a
// protocol error; so does detour, on both paths: 503 UC ("protocol
// error"), as for any malformed response head, and the upstream
// connection is closed. http.ReadResponse alone would take the chunked
// framing, drop the Content-Length without a trace, and the connection
// would be reused.
var errFramingConflict = errors.New("upstream response has both Content-Length and Transfer-Encoding")

// headScan follows the response heads an upstream sends for one request
// (1xx ones, then the final one), a byte at a time and across reads, to
// see what http.ReadResponse hides: a final head with both Content-Length
// and Transfer-Encoding. Field names are matched as net/textproto reads
// them (case-insensitive, the colon right after the name).
type headScan struct {
	line     [32]byte // the current line's first bytes, lower-cased
	n        int      // bytes of the current line so far
	inHead   bool     // past the status line
	info     bool     // the head is a 1xx one
	status   int      // the head's status code (0 if none could be read)
	cl, te   bool     // the head has a Content-Length, a Transfer-Encoding field
	zeroLen  bool     // its (first) Content-Length is 0
	done     bool     // the final head has ended
	conflict bool     // ... with both fields
}

// bodiless reports whether the final head, to a request of method HEAD
// when head is set, ends its response: a 204, a 304, a response to HEAD,
// or a Content-Length of 0 without Transfer-Encoding (RFC 9112, 6.3).
// Bytes after it are not part of the response. (Not after a 101: they
// are the tunnel's.)
func (s *headScan) bodiless(head bool) bool {
	return s.done && s.status >= 200 && (head || s.status == 204 || s.status == 304 || s.zeroLen && !s.te)
}

// feed scans b, the next bytes from the upstream. It returns the offset
// in b of the final head's last byte once that head ends there (then
// done and conflict tell), or -1.
func (s *headScan) feed(b []byte) int {
	if s.done {
		return -1
	}
	for i, c := range b {
		if c == '\n' {
			if s.endLine() {
				return i
			}
			continue
		}
		if s.n < len(s.line) {
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			s.line[s.n] = c
		}
		s.n++
	}
	return -1
}

// endLine takes the line that just ended at an LF; it reports the end of
// the final head.
func (s *headScan) endLine() bool {
	n := s.n
	s.n = 0
	if n == 1 && s.line[0] == '\r' {
		n = 0
	}
	l := s.line[:min(n, len(s.line))]
	switch {
	case !s.inHead: // the status line: "HTTP/1.1 1xx ..."
		s.inHead = true
		if len(l) >= 12 && isDigit(l[9]) && isDigit(l[10]) && isDigit(l[11]) {
			s.status = int(l[9]-'0')*100 + int(l[10]-'0')*10 + int(l[11]-'0')
		}
		s.info = s.status/100 == 1 && s.status != 101 // a 101 is the last head: a tunnel follows
	case n == 0: // the empty line
		if s.info {
			*s = headScan{}
			return false
		}
		s.done, s.conflict = true, s.cl && s.te
		return true
	case hasPrefix(l, "content-length:"):
		if !s.cl {
			s.zeroLen = n <= len(s.line) && isZero(l[len("content-length:"):])
		}
		s.cl = true
	case hasPrefix(l, "transfer-encoding:"):
		s.te = true
	}
	return false
}

func hasPrefix(l []byte, prefix string) bool {
	return len(l) >= len(prefix) && string(l[:len(prefix)]) == prefix
}

// isZero reports whether a field value (with its OWS and CR) is "0".
func isZero(v []byte) bool {
	zero := false
	for _, c := range v {
		switch {
		case c == '0' && !zero:
			zero = true
		case c == ' ' || c == '\t' || c == '\r':
		default:
			return false
		}
	}
	return zero
}
