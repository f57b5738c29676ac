package httpproxy

import (
	"bytes"
	"strings"
)

// fastHead is a request head the fast path (fastpath.go) forwards itself.
// The slices point into the connection's read buffer.
type fastHead struct {
	method    string // one of fastMethods
	target    []byte // origin-form
	host      []byte
	clen      int64 // 0 when absent
	closeConn bool  // Connection: close
	reqID     []byte
	idemKey   bool     // Idempotency-Key or X-Idempotency-Key: the client says a replay is safe
	xff       [][]byte // X-Forwarded-For values, in order
	size      int      // bytes of the head, final CRLF included
	fields    int
	// drops are the field lines (offsets into the head, CRLF included)
	// that do not go upstream as received; the X-Forwarded-For ones are
	// marked, since the proxy may leave them.
	drops  [maxDrops]span
	nDrops int
}

// span is one field line of a head: [start, end) and whether it is an
// X-Forwarded-For line.
type span struct {
	start, end int32
	xff        bool
}

// maxDrops bounds the field lines the fast path removes or replaces in one
// head; a head with more goes to net/http.
const maxDrops = 16

// fastMethods are the methods the fast path takes; others go to net/http.
var fastMethods = [...]string{"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"}

// fieldAction says what the fast path does with a request field.
type fieldAction uint8

const (
	fieldCopy     fieldAction = iota // forward as received
	fieldParse                       // forward as received, and parse (Host, Content-Length)
	fieldDrop                        // hop-by-hop, or replaced by detour (parsed when needed)
	fieldFallback                    // leave the request to net/http
)

// parseFastHead parses into h the head at the start of b (which holds the whole
// head, final CRLF included, at b[:end]) if it is in the fast path's
// strict subset: an HTTP/1.1 origin-form request of a common method,
// CRLF line ends, token field names, printable ASCII values, one valid
// Host, at most one plain Content-Length, and none of the fields that
// change framing or the connection (Transfer-Encoding, Upgrade, Expect,
// TE, Trailer, or a Connection option other than close and keep-alive).
// Anything else — malformed requests included — returns false and
// goes to the net/http path, whose guard answers or forwards it. So the
// fast path never refuses; it only declines.
func parseFastHead(h *fastHead, b []byte, end, maxHead, maxFields int, steering string, useSteering bool) bool {
	*h = fastHead{}
	if end > maxHead {
		return false
	}
	h.size = end
	line, rest, ok := cutLine(b[:end])
	if !ok || !h.requestLine(line) {
		return false
	}
	hosts, clens := 0, 0
	for len(rest) > 2 { // the final CRLF remains
		start := end - len(rest)
		line, rest, ok = cutLine(rest)
		if !ok {
			return false
		}
		h.fields++
		name, value, ok := splitField(line)
		if !ok || h.fields > maxFields {
			return false
		}
		switch fastFieldAction(name, steering, useSteering) {
		case fieldFallback:
			return false
		case fieldCopy:
			continue
		case fieldDrop:
			if h.nDrops == maxDrops {
				return false
			}
			h.drops[h.nDrops] = span{int32(start), int32(end - len(rest)), equalFold(name, "x-forwarded-for")}
			h.nDrops++
		}
		// fieldParse and fieldDrop: the fields the fast path reads.
		switch {
		case equalFold(name, "host"):
			hosts++
			if !validFastHost(value) {
				return false
			}
			h.host = value
		case equalFold(name, "content-length"):
			clens++
			n, ok := parseContentLength(value)
			if !ok {
				return false
			}
			h.clen = n
		case equalFold(name, "connection"):
			if !h.connectionOptions(value) {
				return false
			}
		case equalFold(name, "x-request-id"):
			if h.reqID == nil {
				h.reqID = value
			}
		case equalFold(name, "x-forwarded-for"):
			h.xff = append(h.xff, value)
		case equalFold(name, "idempotency-key"), equalFold(name, "x-idempotency-key"):
			h.idemKey = true
		}
	}
	return hosts == 1 && clens <= 1
}

// partialHead follows a request head whose end has not arrived, so that
// the fast path hands it to net/http as soon as the bytes read so far show
// that parseFastHead will decline it — then net/http's guard refuses an
// invalid head at once, with the same 400 and record as on its own path —
// rather than when the head ends or HeaderTimeout passes. Each byte is
// looked at once; offsets count from the head's start, where compact
// moves it.
type partialHead struct {
	seen     int  // bytes checked
	line     int  // where the line being received starts
	sp1, sp2 int  // the request line's spaces (0: not seen yet)
	colon    bool // the field line being received has its colon
	// Of the complete field lines: as parseFastHead counts them.
	fields, hosts, clens, drops int
}

// plausible reports whether b, the start of a head without its end, may
// still become a head parseFastHead takes: only printable ASCII, tabs and
// CRLF line ends, a request line that may still become one requestLine
// takes, a field line that may still become one splitField takes, each
// complete line one parseFastHead takes, and at most maxHead bytes.
func (ph *partialHead) plausible(b []byte, maxHead, maxFields int, steering string, useSteering bool) bool {
	if len(b) > maxHead {
		return false
	}
	for i := ph.seen; i < len(b); i++ {
		switch c := b[i]; {
		case c == '\n':
			if i == 0 || b[i-1] != '\r' || !ph.takes(b[ph.line:i-1], maxFields, steering, useSteering) {
				return false
			}
			ph.line, ph.colon = i+1, false
		case c == '\r':
			if i+1 == len(b) {
				ph.seen = i // the next byte decides
				return true
			}
			if b[i+1] != '\n' {
				return false
			}
		case c < 0x20 && c != '\t', c > 0x7e:
			return false
		case ph.line == 0 && !ph.requestByte(b, i):
			return false
		case ph.line > 0 && !ph.fieldByte(c, i-ph.line, maxFields):
			return false
		}
	}
	ph.seen = len(b)
	return true
}

// requestByte reports whether b[i], a byte of a request line whose end
// has not arrived, may be where it is in "METHOD SP origin-form SP
// HTTP/1.1" with one of fastMethods.
func (ph *partialHead) requestByte(b []byte, i int) bool {
	c := b[i]
	switch {
	case ph.sp1 == 0:
		if c == ' ' {
			ph.sp1 = i
		}
		for _, m := range fastMethods {
			if c == ' ' && string(b[:i]) == m || c != ' ' && i < len(m) && string(b[:i+1]) == m[:i+1] {
				return true
			}
		}
		return false
	case ph.sp2 == 0 && c == ' ':
		ph.sp2 = i
		return i > ph.sp1+1
	case ph.sp2 == 0:
		return (i > ph.sp1+1 || c == '/') && (isAlnum(c) || c == '%' || strings.IndexByte(originChars, c) >= 0)
	}
	j := i - ph.sp2 - 1
	return j < len("HTTP/1.1") && c == "HTTP/1.1"[j]
}

// fieldByte reports whether c, byte j of a field line whose end has not
// arrived, may be where it is in a line takes accepts: not a fold, a
// token name, a colon after it; the value's bytes are plausible's.
func (ph *partialHead) fieldByte(c byte, j, maxFields int) bool {
	switch {
	case ph.colon:
		return true
	case c == ':':
		ph.colon = true
		return j > 0
	case j == 0 && ph.fields >= maxFields:
		return false
	}
	return tchar[c]
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// takes reports whether parseFastHead would take line (without its CRLF),
// the next complete line of a head, as far as the lines so far tell: the
// same checks, keeping counts instead of the values.
func (ph *partialHead) takes(line []byte, maxFields int, steering string, useSteering bool) bool {
	if ph.line == 0 {
		var h fastHead
		return h.requestLine(line)
	}
	ph.fields++
	name, value, ok := splitField(line)
	if !ok || ph.fields > maxFields {
		return false
	}
	switch fastFieldAction(name, steering, useSteering) {
	case fieldFallback:
		return false
	case fieldCopy:
		return true
	case fieldDrop:
		if ph.drops++; ph.drops > maxDrops {
			return false
		}
	}
	switch {
	case equalFold(name, "host"):
		ph.hosts++
		return ph.hosts == 1 && validFastHost(value)
	case equalFold(name, "content-length"):
		ph.clens++
		_, ok := parseContentLength(value)
		return ph.clens == 1 && ok
	case equalFold(name, "connection"):
		var h fastHead
		return h.connectionOptions(value)
	}
	return true
}

// fastFieldAction classifies a field name. Connection, X-Request-Id and
// X-Forwarded-For are parsed and written anew (X-Forwarded-For is copied
// instead when the proxy leaves it); Idempotency-Key and
// X-Idempotency-Key are parsed (their presence makes a request
// replayable, as for Go's Transport) and forwarded. The length picks the
// candidates, so most fields cost one comparison or none.
func fastFieldAction(name []byte, steering string, useSteering bool) fieldAction {
	if len(name) == len(steering) && equalFold(name, steering) {
		if useSteering {
			return fieldFallback
		}
		return fieldDrop
	}
	var parse, drop, fallback string
	var drop2 string
	switch len(name) {
	case 2:
		fallback = "te"
	case 4:
		parse = "host"
	case 6:
		fallback = "expect"
	case 7:
		fallback, drop2 = "upgrade", "trailer" // both decline
	case 10:
		drop, drop2 = "connection", "keep-alive"
	case 12:
		drop = "x-request-id"
	case 14:
		parse, fallback = "content-length", "http2-settings"
	case 15:
		drop, parse = "x-forwarded-for", "idempotency-key"
	case 16:
		drop = "proxy-connection"
	case 17:
		drop, fallback, parse = "x-forwarded-proto", "transfer-encoding", "x-idempotency-key"
	case 18:
		drop = "proxy-authenticate"
	case 19:
		drop = "proxy-authorization"
	default:
		return fieldCopy
	}
	switch {
	case parse != "" && equalFold(name, parse):
		return fieldParse
	case drop != "" && equalFold(name, drop):
		return fieldDrop
	case fallback != "" && equalFold(name, fallback):
		return fieldFallback
	case drop2 == "trailer" && equalFold(name, drop2):
		return fieldFallback
	case drop2 != "" && equalFold(name, drop2):
		return fieldDrop
	}
	return fieldCopy
}

// cutLine splits off the first CRLF-terminated line. A bare LF or CR
// makes it fail.
func cutLine(b []byte) (line, rest []byte, ok bool) {
	i := bytes.IndexByte(b, '\n')
	if i < 1 || b[i-1] != '\r' {
		return nil, nil, false
	}
	line = b[:i-1]
	if bytes.IndexByte(line, '\r') >= 0 {
		return nil, nil, false
	}
	return line, b[i+1:], true
}

// requestLine parses "METHOD SP origin-form SP HTTP/1.1".
func (h *fastHead) requestLine(line []byte) bool {
	sp := bytes.IndexByte(line, ' ')
	if sp < 0 {
		return false
	}
	method := line[:sp]
	for _, m := range fastMethods {
		if string(method) == m {
			h.method = m
			break
		}
	}
	rest := line[sp+1:]
	sp = bytes.IndexByte(rest, ' ')
	if h.method == "" || sp < 1 || string(rest[sp+1:]) != "HTTP/1.1" {
		return false
	}
	h.target = rest[:sp]
	return validOriginForm(h.target)
}

// originChars are the bytes of an origin-form target besides letters,
// digits and percent escapes.
const originChars = "-._~!$&'()*+,;=:@/?"

// validOriginForm accepts "/" followed by RFC 3986 path and query
// characters, with well-formed percent escapes.
func validOriginForm(t []byte) bool {
	if len(t) == 0 || t[0] != '/' {
		return false
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '%':
			if i+2 >= len(t) || !isHex(t[i+1]) || !isHex(t[i+2]) {
				return false
			}
			i += 2
		case bytes.IndexByte([]byte(originChars), c) >= 0:
		default:
			return false
		}
	}
	return true
}

// splitField splits "name: value" with a token name and a value of
// printable ASCII, spaces and tabs, trimmed of surrounding whitespace.
func splitField(line []byte) (name, value []byte, ok bool) {
	colon, vs, ve, ok := cutField(line)
	if !ok {
		return nil, nil, false
	}
	value = line[vs:ve]
	for _, c := range value {
		if (c < 0x20 && c != '\t') || c > 0x7e {
			return nil, nil, false
		}
	}
	return line[:colon], value, true
}

// cutField finds the parts of a field line "name: value" whose name is a
// token: the colon, and the value's bounds without surrounding spaces and
// tabs. Offsets, not slices, so that response heads can keep them small.
func cutField(line []byte) (colon, vStart, vEnd int, ok bool) {
	colon = bytes.IndexByte(line, ':')
	if colon < 1 || !isToken(line[:colon]) {
		return 0, 0, 0, false
	}
	rest := line[colon+1:]
	v := trimOWS(rest)
	vStart = colon + 1 + cap(rest) - cap(v) // trimming the front lowers cap
	return colon, vStart, vStart + len(v), true
}

// validFastHost accepts a reg-name or IPv4 address with an optional port,
// or a bracketed IPv6 literal: letters, digits and "-._:[]".
func validFastHost(v []byte) bool {
	if len(v) == 0 {
		return false
	}
	for _, c := range v {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == ':' || c == '[' || c == ']') {
			return false
		}
	}
	return true
}

// connectionOptions accepts Connection: close and keep-alive (any case,
// comma-separated); other options name hop-by-hop fields and decline.
func (h *fastHead) connectionOptions(v []byte) bool {
	for opt := range listItems(v) {
		switch {
		case len(opt) == 0:
		case equalFold(opt, "close"):
			h.closeConn = true
		case equalFold(opt, "keep-alive"):
		default:
			return false
		}
	}
	return true
}
