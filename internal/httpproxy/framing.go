package httpproxy

import "errors"

// errFramingConflict refuses an upstream response head with both
// Content-Length and Transfer-Encoding. RFC 9112, 6.3: such a message
// "ought to be handled as an error" (it may be an attempt at response
// splitting), and its connection must not carry another message. Envoy
// (without allow_chunked_length, its default) and nginx refuse it as a
// protocol error; so does detour, on both paths: 502 UPE ("protocol
// error"), as for any malformed response head, and the upstream
// connection is closed. http.ReadResponse alone would take the chunked
// framing, drop the Content-Length without a trace, and the connection
// would be reused.
var errFramingConflict = errors.New("upstream response has both Content-Length and Transfer-Encoding")

// errStatusOutOfRange refuses a response whose status is under 100
// ("HTTP/1.1 099") or over 599 ("HTTP/1.1 600"), which http.ReadResponse
// takes (any three digits): RFC 9110, 15 makes 100–599 the valid range,
// and Envoy's codec refuses the others. Taken for a 1xx, a status under
// 100 went out as a status line of two digits no client reads, and the
// net/http server panics on it; one over 599 was relayed as it came, a
// class no client knows how to handle. Both paths refuse either as a
// protocol error (502 UPE) and close the connection.
var errStatusOutOfRange = errors.New("upstream response status is outside 100-599")

// validStatus reports whether code is in RFC 9110's range, 100–599.
func validStatus(code int) bool { return code >= 100 && code <= 599 }

// headScan follows the response heads an upstream sends for one request
// (1xx ones, then the final one), a byte at a time and across reads, to
// see what http.ReadResponse hides: a final head with both Content-Length
// and Transfer-Encoding; and, for upConn, where the response ends
// (bodyLen). Field names are matched as net/textproto reads them
// (case-insensitive, the colon right after the name), the status code as
// http.ReadResponse reads it (after any number of spaces): a 1xx head
// taken for a final one would hide the real final head.
type headScan struct {
	line     [32]byte // the current line's first bytes, lower-cased
	n        int      // bytes of the current line so far
	inHead   bool     // past the status line
	info     bool     // the head is a 1xx one
	status   int      // the head's status code (0 if none could be read)
	cl, te   bool     // the head has a Content-Length, a Transfer-Encoding field
	clen     int64    // its (first) Content-Length; -1 if none could be read
	done     bool     // the final head has ended
	conflict bool     // ... with both fields
}

// bodyLen is the length of the body after the final head, to a request
// of method HEAD when head is set, when the head tells it (RFC 9112,
// 6.3): 0 for a 204, a 304 or a response to HEAD, the Content-Length
// without Transfer-Encoding; else -1 (chunked, close-delimited, a 101's
// tunnel). Bytes after that length are not part of the response.
func (s *headScan) bodyLen(head bool) int64 {
	switch {
	case !s.done || s.status < 200:
		return -1
	case head || s.status == 204 || s.status == 304:
		return 0
	case s.te:
		return -1
	}
	return s.clen
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
		if c == ' ' && s.n == len("HTTP/1.1 ") && !s.inHead {
			continue // http.ReadResponse trims the spaces before the status code
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
	case !s.inHead: // the status line: "HTTP/1.1 1xx ...", less any spaces before the code (feed)
		s.inHead = true
		s.clen = -1
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
		if !s.cl && n <= len(s.line) {
			v := l[len("content-length:"):]
			if len(v) > 0 && v[len(v)-1] == '\r' {
				v = v[:len(v)-1]
			}
			if v, ok := parseContentLength(trimOWS(v)); ok {
				s.clen = v
			}
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
