package httpproxy

import (
	"bufio"
	"bytes"
	"math"
	"net/http"
	"strconv"
	"time"
)

// The fast path reads the common upstream response head in place, without
// http.ReadResponse, whose Response, Header map and string per value were
// the fast path's largest cost after syscalls. It takes a strict subset of
// heads (parseRespHead) and forwards their fields in upstream's order and
// case, as HAProxy and Envoy do. Anything else — 1xx, chunked or
// close-delimited bodies, odd framing, malformed heads, a head larger than
// the reader's buffer — is left unread in the reader for http.ReadResponse,
// so unusual responses are handled exactly as before.

// maxRespFields bounds the fields a fast response head keeps (forwarded,
// Server and Connection ones); a head with more goes to http.ReadResponse.
const maxRespFields = 64

// respHead is an upstream response head parsed in place. Spans are offsets
// into the head's bytes, which stay in the upstream reader's buffer until
// relay has copied them.
type respHead struct {
	status  int
	reason  span16 // empty: the status's standard text is sent
	clen    int64  // -1 when absent
	clenVal span16 // Content-Length as received, sent as is without a body
	size    int    // bytes of the head, final CRLF included
	close   bool   // the upstream connection is not reused (Response.Close)
	servers int    // Server fields
	nFields int
	fields  [maxRespFields]respField
}

// span16 is [start, end) in a head; heads the fast path reads are small.
type span16 struct{ start, end uint16 }

func (s span16) of(b []byte) []byte { return b[s.start:s.end] }

// respField is a field line of a response head that relay may send.
type respField struct {
	name, value span16
	kind        respKind
}

type respKind uint8

const (
	respForward    respKind = iota // sent as received
	respServer                     // sent or replaced as ServerHeaderMode says
	respConnection                 // not sent; its options name fields not sent either
	respNamed                      // named by a Connection option: not sent
)

// respVerdict is what parseRespHead makes of the bytes read so far.
type respVerdict uint8

const (
	respMore     respVerdict = iota // in the subset so far; the head has not ended
	respOK                          // a whole head in the subset, parsed
	respDeclined                    // not in the subset: http.ReadResponse reads it
)

// respState is what parseRespHead needs to know about a head until its end.
type respState struct {
	http10            bool
	connection        bool // a Connection field
	closeOpt, keepOpt bool // Connection options close, keep-alive
	pragma            bool // a Pragma field
	pragmaNoCache     bool // the first Pragma is exactly "no-cache"
	cacheControl      bool
}

// peekResponse waits until br holds a whole response head in the strict
// subset and parses it into rh, consuming nothing. It returns false as soon
// as the bytes read rule that out, the head outgrows br's buffer, or a read
// fails: br then still holds every byte read, for http.ReadResponse (the
// upstream's limitedReader repeats a read error to it). Only whole lines
// decide, so it waits exactly where http.ReadResponse would.
func peekResponse(br *bufio.Reader, method string, rh *respHead) bool {
	for {
		n := br.Buffered()
		if n > 0 {
			b, _ := br.Peek(n)
			switch parseRespHead(b, method, rh) {
			case respOK:
				return true
			case respDeclined:
				return false
			}
			if n == br.Size() {
				return false
			}
		}
		if _, err := br.Peek(n + 1); err != nil {
			return false
		}
	}
}

// parseRespHead parses the response head at the start of b, the bytes read
// so far of a response to a request of method, if it is in the fast path's
// strict subset: "HTTP/1.1" or "HTTP/1.0", a status of 200–599, CRLF line
// ends, token field names, values without control bytes but HTAB, no
// obs-fold, no Transfer-Encoding, and one valid Content-Length unless the
// response has no body (HEAD, 204, 304; then at most one). Everything it
// declines, http.ReadResponse reads as before.
func parseRespHead(b []byte, method string, rh *respHead) respVerdict {
	if len(b) > math.MaxUint16 {
		b = b[:math.MaxUint16] // spans are 16 bits; a longer head never ends here
	}
	*rh = respHead{clen: -1}
	var st respState
	line, rest, v := respLine(b)
	if v != respOK {
		return v
	}
	if !rh.statusLine(line, &st) {
		return respDeclined
	}
	for {
		start := len(b) - len(rest)
		line, rest, v = respLine(rest)
		switch {
		case v != respOK:
			return v
		case len(line) == 0:
			rh.size = len(b) - len(rest)
			return rh.finish(b, method, &st)
		case !rh.field(start, line, &st):
			return respDeclined
		}
	}
}

// respLine cuts the first line off b: respMore while its LF has not come,
// respDeclined at a bare LF. (A CR inside the line is left to the checks
// of its parts, which refuse control bytes.)
func respLine(b []byte) (line, rest []byte, v respVerdict) {
	i := bytes.IndexByte(b, '\n')
	switch {
	case i < 0:
		return nil, nil, respMore
	case i == 0 || b[i-1] != '\r':
		return nil, nil, respDeclined
	}
	return b[:i-1], b[i+1:], respOK
}

// statusLine parses "HTTP/1.x NNN reason" (the reason may be empty, with or
// without its space) with NNN in 200..599: informational responses and 101
// stay with http.ReadResponse, which relays or refuses them, and so do
// codes outside 100..599, which its caller refuses (validStatus).
func (rh *respHead) statusLine(line []byte, st *respState) bool {
	if len(line) < len("HTTP/1.1 200") || string(line[:7]) != "HTTP/1." || line[8] != ' ' {
		return false
	}
	switch line[7] {
	case '0':
		st.http10 = true
	case '1':
	default:
		return false
	}
	c := line[9:12]
	if c[0] < '2' || c[0] > '5' || !isDigit(c[1]) || !isDigit(c[2]) {
		return false
	}
	rh.status = int(c[0]-'0')*100 + int(c[1]-'0')*10 + int(c[2]-'0')
	if len(line) == 12 {
		return true
	}
	if line[12] != ' ' || !fieldValueBytes(line[13:]) {
		return false
	}
	rh.reason = span16{13, uint16(len(line))}
	return true
}

// field takes one field line, at offset start of the head.
func (rh *respHead) field(start int, line []byte, st *respState) bool {
	colon, vs, ve, ok := cutField(line)
	if !ok || !fieldValueBytes(line[vs:ve]) {
		return false
	}
	name, value := line[:colon], line[vs:ve]
	valSpan := span16{uint16(start + vs), uint16(start + ve)}
	kind := respForward
	switch {
	case equalFold(name, "content-length"):
		n, ok := parseContentLength(value)
		if !ok || rh.clen >= 0 {
			return false // net/http merges equal repeats; leave those to it
		}
		rh.clen, rh.clenVal = n, valSpan
		return true
	case equalFold(name, "transfer-encoding"):
		return false
	case equalFold(name, "connection"):
		kind = respConnection
		st.connectionOptions(value)
	case equalFold(name, "server"):
		kind = respServer
		rh.servers++
	case isHopByHop(name):
		return true // not sent
	case equalFold(name, "pragma"):
		if !st.pragma {
			st.pragma, st.pragmaNoCache = true, string(value) == "no-cache"
		}
	case equalFold(name, "cache-control"):
		st.cacheControl = true
	}
	if rh.nFields == maxRespFields {
		return false
	}
	rh.fields[rh.nFields] = respField{span16{uint16(start), uint16(start + colon)}, valSpan, kind}
	rh.nFields++
	return true
}

// connectionOptions notes the close and keep-alive options of a Connection
// value, matched as net/http matches them (comma-separated, OWS, any case).
func (st *respState) connectionOptions(v []byte) {
	st.connection = true
	for opt := range listItems(v) {
		switch {
		case equalFold(opt, "close"):
			st.closeOpt = true
		case equalFold(opt, "keep-alive"):
			st.keepOpt = true
		}
	}
}

// finish checks a whole head's framing and settles what http.ReadResponse
// would have: whether the connection may be reused, and which fields the
// Connection options name.
func (rh *respHead) finish(b []byte, method string, st *respState) respVerdict {
	if rh.clen < 0 && !bodiless(method, rh.status) {
		return respDeclined // close-delimited: relayChunked re-chunks it
	}
	if st.pragmaNoCache && !st.cacheControl {
		return respDeclined // http.ReadResponse adds Cache-Control: no-cache
	}
	rh.close = st.closeOpt || st.http10 && !st.keepOpt
	// http.ReadResponse deletes an HTTP/1.1 Connection field that says
	// close, so today's relay (and ReverseProxy) never see its other
	// options; they name nothing then, here too.
	if st.connection && (st.http10 || !st.closeOpt) {
		rh.dropNamed(b)
	}
	return respOK
}

// dropNamed marks the forwarded fields that a Connection option names.
func (rh *respHead) dropNamed(b []byte) {
	for _, c := range rh.fields[:rh.nFields] {
		if c.kind != respConnection {
			continue
		}
		for opt := range listItems(c.value.of(b)) {
			rh.markNamed(b, opt)
		}
	}
}

// markNamed marks the forwarded fields called opt (in any case).
func (rh *respHead) markNamed(b, opt []byte) {
	for i := range rh.fields[:rh.nFields] {
		if f := &rh.fields[i]; f.kind == respForward && equalFold(f.name.of(b), opt) {
			f.kind = respNamed
		}
	}
}

// fieldValueBytes accepts what net/http accepts in a field value: anything
// but control bytes, except HTAB.
func fieldValueBytes(v []byte) bool {
	for _, c := range v {
		if c < 0x20 && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// bodiless reports whether a response has no body whatever its framing
// fields say.
func bodiless(method string, status int) bool {
	return method == "HEAD" || status == 204 || status == 304
}

// fastResponseHead is the client's head for a response parsed in place
// (head is its bytes): upstream's fields in upstream's order and case, less
// hop-by-hop ones and those Connection names; Server as ServerHeaderMode
// says; the service time; the framing.
func (fc *fastConn) fastResponseHead(out, head []byte, rh *respHead, h *fastHead, upTime time.Duration) []byte {
	out = appendStatusLine(out, rh.status, rh.reason.of(head))
	keepServer := fc.p.keepsServer(rh.servers > 0)
	for _, f := range rh.fields[:rh.nFields] {
		if f.kind == respForward || f.kind == respServer && keepServer {
			out = append(append(append(append(out, f.name.of(head)...), ": "...), f.value.of(head)...), "\r\n"...)
		}
	}
	if !keepServer {
		out = fc.p.appendOwnServer(out)
	}
	out = appendServiceTime(out, upTime)
	switch {
	case !bodiless(h.method, rh.status):
		out = strconv.AppendInt(append(out, "Content-Length: "...), rh.clen, 10)
		out = append(out, "\r\n"...)
	case rh.clen >= 0 && rh.status != http.StatusNoContent: // RFC 9110, 8.6: none in a 204
		out = append(append(append(out, "Content-Length: "...), rh.clenVal.of(head)...), "\r\n"...)
	}
	return fc.endHead(out, h)
}
