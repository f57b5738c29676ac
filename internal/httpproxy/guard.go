package httpproxy

import (
	"bytes"
	"errors"
	"io"
	"iter"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

// Request smuggling defence.
//
// net/http's server is strict, but it normalises some ambiguous framing
// instead of refusing it, before a handler can tell: with both
// Content-Length and Transfer-Encoding: chunked it drops the
// Content-Length; it merges repeated identical Content-Length fields; it
// silently ignores Transfer-Encoding in HTTP/1.0 requests (a 1.0
// keep-alive client can then frame a body one way for us and another way
// for a server behind); it accepts bare LF line ends and obs-fold in heads;
// and it answers 501, not 400, to transfer codings other than chunked. By
// the time ServeHTTP runs, those facts are gone from the Request.
//
// So every HTTP/1 client connection reads through a guard: a small, strict
// HTTP/1.1 framing parser (RFC 9112) between the socket and net/http. It
// holds each request head back until the head is complete, checks it, and
// only then lets net/http see it. Bodies pass straight through while the
// guard follows their framing (Content-Length counting, chunk-size lines,
// trailers) to know where the next head starts. A head it refuses never
// reaches net/http: net/http parses a fixed placeholder request in its
// place, and the guard queues a verdict that ServeHTTP takes (in order:
// net/http serves one HTTP/1 request at a time) and answers with the
// refusal's status and a closed connection. Nothing of a refused request
// is forwarded. Heads it accepts are parsed again by net/http, whose own
// checks still apply (a refusal there also closes the connection); a
// fingerprint of the request line ties each verdict to its request, so
// the two parsers can't silently disagree about which bytes are which
// request. The guard's rules accept a subset of what net/http accepts, and
// for accepted heads the body length is unambiguous, so both parsers always
// agree where a message ends.
//
// A malformed chunked body whose head is already with net/http (the bad
// bytes arrived in a later read) ends in a read error at the first bad
// byte: the upstream request is aborted before a complete body went out,
// and the client gets 400 with the connection closed. If the bad bytes
// arrive together with their head, the request is refused as a whole.
//
// The guard steps aside (passes bytes untouched) for prior-knowledge h2c,
// whose framing the HTTP/2 server checks, and after a 101 Switching
// Protocols, when the connection becomes a tunnel.

// Limits of the guard beyond the Options.
const (
	maxChunkLine   = 4096 // chunk-size line with extensions and CRLF (net/http: 4096)
	maxChunkDigits = 15   // hex digits of a chunk size: < 2^60 bytes
	maxCLDigits    = 18   // decimal digits of a Content-Length: < 10^18
	guardReadSize  = 4096
)

// placeholder is what net/http parses in place of a refused head.
const placeholder = "GET / HTTP/1.1\r\nHost: detour.invalid\r\nConnection: close\r\n\r\n"

var placeholderLine = fingerprint("GET", "/", "HTTP/1.1")

const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// errBadBody is the read error at a framing error in a request body whose
// head net/http already has.
var errBadBody = errors.New("httpproxy: invalid request body framing")

type guardState uint8

const (
	gHead     guardState = iota // reading a request head
	gData                       // Content-Length body or chunk data: left bytes
	gChunk                      // a chunk-size line
	gChunkEnd                   // the CRLF after chunk data
	gTrailer                    // trailer field lines, up to an empty line
	gDone                       // a head was refused: nothing more is read
	gFailed                     // a body framing error: err after the good bytes
	gPass                       // h2c or a 101 tunnel: bytes pass untouched
)

// verdict is the guard's word on one request head, queued for ServeHTTP.
type verdict struct {
	line   uint64 // fingerprint of the request line net/http will report
	at     int64  // offset of the head in the client's byte stream (accepted heads)
	status int    // 0: forward; else refuse with this status
	msg    string
	// Of a refused request, for the access log (may be empty).
	proto, method, target string
}

// guard is a downstream connection's framing checker. read is called by
// one goroutine at a time (net/http serialises reads on a connection, and
// after a hijack only the tunnel reads); next and bodyFailure are called by
// handlers and lock mu.
type guard struct {
	pool      *sync.Pool // of *[guardReadSize]byte; nil: allocate
	maxHead   int        // bytes of request line + field lines + final CRLF
	maxFields int        // field lines in a head (or a trailer section)
	steering  string     // canonical steering header, refused as a trailer

	buf []byte
	// buf[r:w] came from the socket and was not handed on yet; buf[r:rel]
	// may be handed on. elem is where the element being held starts (the
	// whole head, or one framing line of a body); line is where the
	// current line starts and scan how far it was searched for its LF.
	r, rel, w, elem, line, scan int
	base                        int64 // stream offset of buf[0]

	st    guardState
	after guardState // state once left reaches 0 in gData
	left  int64

	// The head (or trailer section) being parsed.
	fields, nCL, nTE, nHost  int
	first                    bool // the request line is next
	http10, chunked, connect bool
	clen                     int64
	reqLine                  uint64
	methodLen, targetLen     int
	// rl follows an incomplete request line (partialRequestLine): how
	// far it was checked and where its spaces are, from its start (0:
	// not seen yet).
	rl struct{ seen, sp1, sp2 int }
	// fl follows an incomplete field line (partialFieldLine): its stream
	// offset (the line it describes; a complete line costs nothing), how
	// far it was checked and where its first colon is, from its start (0:
	// not seen yet).
	fl struct {
		at          int64
		seen, colon int
	}
	heads int // heads accepted on this connection
	// midStream: the connection carried requests before the guard saw it
	// (the fast path's), so its next bytes cannot be the h2c preface.
	midStream bool
	// headStart is where the head of the request whose body is being
	// parsed starts in buf; below r once any byte of it was handed on.
	// cur describes that head's request line.
	headStart int
	cur       struct {
		methodLen, targetLen int
		http10               bool
	}

	// laterHead, if set, is called by read before it waits for the rest
	// of a head that is not the connection's first, once every request
	// before it was answered: then, as on the fast path, HeaderTimeout
	// bounds the head from here (downConn.laterHead). Once per head;
	// timed is heads when it was last called.
	laterHead func()
	timed     int
	// onHead, if set, is called by read before each wait for the rest of
	// a head it holds part of, every request before it answered: net/http,
	// which sees nothing of the head yet, takes the connection for idle.
	onHead func()

	synth string // placeholder still to hand on
	err   error  // returned once buf[r:rel] and synth are handed on

	pass atomic.Bool // step aside: set by ServeHTTP on a 101, or at an h2c preface
	h2c  atomic.Bool // the connection began with the h2c preface

	// Half-close: see waitEOF. holdEOF is set when net/http's server reads
	// through the guard (ServeConn), which answers every head handed on.
	holdEOF  bool
	inflight atomic.Int32  // HTTP/1 heads (or placeholders) handed on and not yet answered
	deadline atomic.Int64  // the connection's read deadline, Unix ns; 0: none
	closed   atomic.Bool   // the connection was closed
	wake     chan struct{} // (capacity 1) the deadline changed or the connection closed

	mu       sync.Mutex
	verdicts []verdict
	bodyErr  string // framing error in a body net/http was reading
	// cut: reading stopped at a refused request or a bad body, where the
	// client may still be sending.
	cut bool
}

func newGuard(pool *sync.Pool, maxHead, maxFields int, steering string) *guard {
	return &guard{pool: pool, maxHead: maxHead, maxFields: maxFields, steering: steering, first: true, headStart: -1,
		wake: make(chan struct{}, 1)}
}

// answered is called when ServeHTTP is done with an HTTP/1 request.
func (g *guard) answered() { g.inflight.Add(-1) }

// setDeadline notes the connection's new read deadline.
func (g *guard) setDeadline(t time.Time) {
	var ns int64
	if !t.IsZero() {
		ns = t.UnixNano()
	}
	g.deadline.Store(ns)
	g.signal()
}

// close notes that the connection was closed.
func (g *guard) close() {
	g.closed.Store(true)
	g.signal()
}

func (g *guard) signal() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// waitEOF handles the client's FIN at a request boundary while a request it
// sent is still being served. net/http's server reads in the background
// during a handler and takes EOF there for a client that has gone: it
// would cancel the request, and a client that only half-closed after its
// last request (as HTTP/1.0-era tools and "nc -N" do, and as L4 forwarding
// supports) would get no answer. Like HAProxy without abortonclose, the
// guard keeps that EOF back until net/http ends the background read (it
// sets a past deadline when the handler is done) and hands it on at the
// next read, when net/http then closes the connection after the answer. A
// client that has really gone is noticed when the answer is written.
func (g *guard) waitEOF() error {
	for {
		var timeout <-chan time.Time
		if d := g.deadline.Load(); d != 0 {
			wait := time.Until(time.Unix(0, d))
			if wait <= 0 {
				return os.ErrDeadlineExceeded // what net/http expects of a read it aborts
			}
			t := time.NewTimer(wait)
			timeout = t.C
			defer t.Stop()
		}
		if g.closed.Load() || g.inflight.Load() <= 0 {
			return io.EOF
		}
		select {
		case <-g.wake:
		case <-timeout:
		}
	}
}

// headTimeout reports whether err, a read error, is the connection's read
// deadline expiring while a request head is awaited — with part of it held,
// or before the connection's first head — rather than a keep-alive
// connection idle between requests or net/http aborting its background
// read (a deadline in the past). held is the head bytes received. Called
// by the reading goroutine.
func (g *guard) headTimeout(err error) (held int, ok bool) {
	if g.st != gHead || g.pass.Load() || !errors.Is(err, os.ErrDeadlineExceeded) {
		return 0, false
	}
	if d := g.deadline.Load(); d == 0 || d < time.Now().Add(-time.Hour).UnixNano() {
		return 0, false
	}
	held = g.w - g.r
	return held, held > 0 || g.heads == 0
}

// inBody reports whether the next bytes read belong to the body (or
// trailers) of the one request net/http is serving (or draining after its
// handler), not to a head or to a request pipelined behind it. Called by
// the reading goroutine.
func (g *guard) inBody() bool {
	switch g.st {
	case gData, gChunk, gChunkEnd, gTrailer:
		return !g.pass.Load() && g.inflight.Load() <= 1
	}
	return false
}

// passthrough makes the guard step aside: the connection is a tunnel now.
func (g *guard) passthrough() { g.pass.Store(true) }

// h2 reports whether the connection speaks prior-knowledge h2c.
func (g *guard) h2() bool { return g.h2c.Load() }

// next takes the verdict for the HTTP/1 request net/http just parsed, whose
// request line has fingerprint line. A missing or mismatched verdict (the
// parsers disagree: never expected) refuses the request.
func (g *guard) next(line uint64) verdict {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.verdicts) == 0 {
		return verdict{status: http.StatusBadRequest, msg: "invalid request framing"}
	}
	v := g.verdicts[0]
	// Shift rather than reslice, so the backing array is reused: the queue
	// is short (the heads of one read, at most).
	g.verdicts = g.verdicts[:copy(g.verdicts, g.verdicts[1:])]
	if v.line != line {
		return verdict{status: http.StatusBadRequest, msg: "invalid request framing"}
	}
	return v
}

// bodyFailure is the framing error that cut the request body net/http was
// reading, or "".
func (g *guard) bodyFailure() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.bodyErr
}

// read is the downstream connection's Read.
//
// When nothing is buffered the guard reads into p itself and checks the
// bytes there, handing on in place whatever is complete (zero copy); only
// the tail of an element that straddles two reads (a head, a framing line)
// moves into a buffer of its own, borrowed from the pool and given back as
// soon as it is empty. An idle connection holds no guard buffer.
func (g *guard) read(src io.Reader, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if g.st != gPass && g.pass.Load() {
			g.enterPass()
		}
		switch {
		case g.r < g.rel:
			n := copy(p, g.buf[g.r:g.rel])
			g.r += n
			if g.r == g.w {
				g.reset()
			}
			return n, nil
		case g.synth != "":
			n := copy(p, g.synth)
			g.synth = g.synth[n:]
			return n, nil
		case g.err != nil:
			return 0, g.err
		case g.r == g.w && g.st == gPass:
			g.reset()
			return src.Read(p)
		case g.r == g.w && g.st == gData:
			// Body bytes go straight into p.
			g.reset()
			n, err := src.Read(p[:min(int64(len(p)), g.left)])
			g.base += int64(n)
			if g.left -= int64(n); g.left == 0 {
				g.st = g.after
			}
			return n, err
		case g.r == g.w:
			g.reset()
			n, err := src.Read(p)
			if n == 0 && err == io.EOF && g.st == gHead && g.holdEOF {
				return 0, g.waitEOF() // a FIN between requests
			}
			k := 0
			if n > 0 {
				k = g.parseIn(p[:n])
			}
			if err != nil {
				if k == 0 && g.synth == "" && g.r == g.rel {
					return 0, err
				}
				g.keep(err)
			}
			if k > 0 {
				return k, nil
			}
			continue
		}
		if !g.makeRoom() {
			// Unreachable: held elements are bounded well below the
			// buffer limit. Refuse rather than grow.
			g.refuse(http.StatusRequestHeaderFieldsTooLarge, "request header fields too large")
			continue
		}
		if g.st == gHead && g.w > g.elem && g.inflight.Load() == 0 {
			if g.laterHead != nil && g.heads > g.timed {
				g.timed = g.heads
				g.laterHead()
			}
			if g.onHead != nil {
				g.onHead()
			}
		}
		n, err := src.Read(g.buf[g.w:])
		g.w += n
		if g.st == gPass {
			g.rel = g.w
		} else if n > 0 {
			g.parse()
		}
		if err != nil {
			if g.r == g.rel && g.synth == "" {
				return 0, err
			}
			g.keep(err) // hand on what we have first
		}
	}
}

// keep remembers a read error to return once the bytes before it are
// handed on. A timeout is not kept: the caller may clear the deadline and
// read again.
func (g *guard) keep(err error) {
	var ne net.Error
	if g.err == nil && !(errors.As(err, &ne) && ne.Timeout()) {
		g.err = err
	}
}

// parseIn parses b, fresh from the socket with nothing buffered before it,
// in place. It returns how many leading bytes of b may be handed on as they
// are; the rest (an incomplete or refused element) moves to the guard's own
// buffer.
func (g *guard) parseIn(b []byte) int {
	g.buf, g.w = b, len(b) // indices are 0 (reset)
	if g.st == gPass {
		g.rel = g.w
	} else {
		g.parse()
	}
	k := g.rel
	rest := b[k:]
	g.buf = nil // b is the caller's
	g.r, g.rel, g.w = 0, 0, 0
	g.elem, g.line, g.scan = g.elem-k, g.line-k, g.scan-k
	g.headStart -= k
	g.base += int64(k)
	if len(rest) > 0 {
		g.grow(len(rest))
		g.w = copy(g.buf, rest)
	}
	return k
}

// reset empties the buffer (everything in it was handed on) and gives it
// back.
func (g *guard) reset() {
	g.base += int64(g.w)
	g.r, g.rel, g.w, g.elem, g.line, g.scan = 0, 0, 0, 0, 0, 0
	g.headStart = -1
	g.putBuf()
}

// putBuf gives the guard's buffer back to the pool (if it came from there).
func (g *guard) putBuf() {
	if g.pool != nil && len(g.buf) == guardReadSize {
		g.pool.Put((*[guardReadSize]byte)(g.buf))
	}
	g.buf = nil
}

// grow makes g.buf (holding buf[:w]) at least n bytes long, borrowing a
// pooled buffer for the usual size.
func (g *guard) grow(n int) {
	if len(g.buf) >= n {
		return
	}
	var nb []byte
	if n <= guardReadSize && g.pool != nil {
		if a, ok := g.pool.Get().(*[guardReadSize]byte); ok {
			nb = a[:]
		}
	}
	if nb == nil {
		nb = make([]byte, max(n, guardReadSize, 2*len(g.buf)))
	}
	copy(nb, g.buf[:g.w])
	g.putBuf()
	g.buf = nb
}

// makeRoom makes space to read into, keeping buf[r:w]; false if the held
// bytes fill the largest buffer allowed.
func (g *guard) makeRoom() bool {
	if g.r > 0 && len(g.buf)-g.w < guardReadSize/2 {
		d := g.r
		copy(g.buf, g.buf[d:g.w])
		g.r, g.rel, g.w, g.elem, g.line, g.scan = 0, g.rel-d, g.w-d, g.elem-d, g.line-d, g.scan-d
		g.headStart -= d
		g.base += int64(d)
	}
	if len(g.buf)-g.w >= guardReadSize/2 {
		return true
	}
	limit := g.maxHead + 4*guardReadSize
	if len(g.buf) >= limit {
		return g.w < len(g.buf)
	}
	g.grow(min(max(guardReadSize, 2*len(g.buf)), limit))
	return true
}

// enterPass hands on everything held, as it came, and stops parsing. A
// placeholder not yet handed on is dropped: the client's own bytes go to
// the tunnel instead.
func (g *guard) enterPass() {
	if g.st == gDone {
		g.synth, g.err = "", nil
	}
	g.st = gPass
	g.rel = g.w
}

// parse advances over buf[scan:w] and moves rel to the start of whatever
// is still incomplete.
func (g *guard) parse() {
	for g.scan < g.w && g.step() {
	}
	switch g.st {
	case gHead, gData, gChunk, gChunkEnd, gTrailer:
		g.rel = g.elem
	}
}

// step parses one element (or as much of it as is there); false when it
// needs more bytes or parsing has stopped.
func (g *guard) step() bool {
	switch g.st {
	case gHead:
		return g.headLine()
	case gData:
		k := int(min(int64(g.w-g.scan), g.left))
		g.scan += k
		g.elem, g.line = g.scan, g.scan
		if g.left -= int64(k); g.left == 0 {
			g.st = g.after
		}
		return true
	case gChunkEnd:
		if g.buf[g.scan] != '\r' || g.w-g.scan >= 2 && g.buf[g.scan+1] != '\n' {
			g.bodyError("missing CRLF after chunk data")
			return false
		}
		if g.w-g.scan < 2 {
			return false
		}
		g.scan += 2
		g.elem, g.line = g.scan, g.scan
		g.st = gChunk
		return true
	case gChunk:
		return g.chunkLine()
	case gTrailer:
		return g.trailerLine()
	}
	return false
}

// nextLine finds the end of the line starting at g.line. ok is false if
// its LF has not arrived; bad is set when the line does not end in CRLF.
// The line returned excludes the CRLF; g.line moves to the next line.
func (g *guard) nextLine() (line []byte, ok, bad bool) {
	i := bytes.IndexByte(g.buf[g.scan:g.w], '\n')
	if i < 0 {
		g.scan = g.w
		return nil, false, false
	}
	end := g.scan + i
	start := g.line
	g.scan, g.line = end+1, end+1
	if end == start || g.buf[end-1] != '\r' {
		return nil, true, true
	}
	return g.buf[start : end-1], true, false
}

// headLine handles the next line of a request head; false when more bytes
// are needed or the head was refused.
func (g *guard) headLine() bool {
	if g.first && g.heads == 0 && !g.midStream && g.line == g.elem {
		// Prior-knowledge h2c: net/http looks for the 24-byte preface
		// before any HTTP/1 parsing; so does the guard.
		n := min(g.w-g.elem, len(h2Preface))
		if string(g.buf[g.elem:g.elem+n]) == h2Preface[:n] {
			if n < len(h2Preface) {
				// Nothing is scanned: a head that turns out not to
				// be the preface is parsed from its start, its
				// first line ending at its first LF.
				return false
			}
			g.h2c.Store(true)
			g.pass.Store(true)
			g.st, g.rel = gPass, g.w
			return false
		}
	}
	start := g.line
	line, ok, bad := g.nextLine()
	switch {
	case (ok && g.line-g.elem > g.maxHead) || (!ok && g.w-g.elem > g.maxHead):
		g.refuseLine(start, g.elem+g.maxHead, http.StatusRequestHeaderFieldsTooLarge, "request header fields too large")
		return false
	case !ok:
		if status, msg := g.partialLine(start, g.w); status != 0 {
			g.refuse(status, msg)
		}
		return false
	case bad:
		g.refuseLine(start, g.line-1, http.StatusBadRequest, "line not terminated by CRLF")
		return false
	case g.first:
		return g.requestLine(line)
	case len(line) == 0:
		return g.endHead()
	}
	if status, msg := g.field(line, false); status != 0 {
		g.refuse(status, msg)
		return false
	}
	return true
}

// partialLine checks the bytes of the unfinished head line at
// buf[start:end] that it has not looked at yet: the request line's or a
// field line's. It returns a refusal status and reason, or 0.
func (g *guard) partialLine(start, end int) (int, string) {
	if !g.first {
		return g.partialFieldLine(start, end)
	}
	msg := g.partialRequestLine(start, end)
	if msg == "" {
		return 0, ""
	}
	// The method and target as far as they were whole and valid, for
	// the access log: what requestLine notes of the complete line.
	g.methodLen = g.rl.sp1
	if g.rl.sp2 > 0 {
		g.targetLen = g.rl.sp2 - g.rl.sp1 - 1
	}
	return http.StatusBadRequest, msg
}

// refuseLine refuses the head at the line at start, which gets status and
// msg as a whole (it runs past the head limit, or a bare LF ends it) —
// unless one of its bytes before end (the limit, or the LF) already made
// it invalid: then that byte decides, as it does when the line comes in
// pieces (the first bad byte is refused as it comes; no byte past the
// limit is looked at). So the verdict does not depend on how the client's
// bytes were split across reads, and a head gets 431 only if all it sent
// within the limit could still have been valid.
func (g *guard) refuseLine(start, end, status int, msg string) {
	if s, m := g.partialLine(start, end); s != 0 {
		status, msg = s, m
	}
	g.refuse(status, msg)
}

// partialRequestLine checks the bytes of an incomplete request line at
// buf[start:end] that came since it last looked, so that a line no later
// byte can make valid (TLS or binary bytes, a control byte in the target,
// a bad version) is refused at once, as Envoy and nginx do, rather than
// held until its LF, the size limit or HeaderTimeout. Each byte is looked
// at once. The reason is the one requestLine gives the complete line: the
// first bad byte decides. A CR is left for the next byte to decide: CRLF
// ends the line.
func (g *guard) partialRequestLine(start, end int) (msg string) {
	line := g.buf[start:end]
	for i := g.rl.seen; i < len(line); i++ {
		c := line[i]
		switch {
		case c == '\r' && i+1 == len(line):
			g.rl.seen = i
			return ""
		case g.rl.sp1 == 0: // the method
			if c == ' ' && i > 0 {
				g.rl.sp1 = i
			} else if !tchar[c] {
				return "invalid request line"
			}
		case g.rl.sp2 == 0: // the target
			switch {
			case c == ' ' && i == g.rl.sp1+1:
				return "invalid request line" // no target
			case c == ' ':
				g.rl.sp2 = i
			case c < ' ' || c >= 0x7f || c == '#':
				return "invalid request target"
			}
		default: // the version: HTTP/d.d
			if j := i - g.rl.sp2 - 1; j >= len("HTTP/1.1") || !versionByte(j, c) {
				return "invalid request line"
			}
		}
	}
	g.rl.seen = len(line)
	return ""
}

// partialFieldLine checks the bytes of an incomplete line after the
// request line (or of the trailer section) at buf[start:end] that came
// since it last looked, so that a field line no later byte can make valid
// (obs-fold, a byte not allowed in a field name, a control byte in the
// value, a CR not followed by LF) is refused at once, as Envoy and nginx
// do, rather than held until its LF, the size limit or HeaderTimeout.
// Each byte is looked at once, in the order field checks the complete
// line, whose status and reason it gives. A CR is left for the next byte
// to decide: CRLF ends the line (or, first, the head); no LF has come, so
// a CR with a byte after it is a bare CR.
func (g *guard) partialFieldLine(start, end int) (status int, msg string) {
	if at := g.base + int64(start); g.fl.at != at {
		g.fl.at, g.fl.seen, g.fl.colon = at, 0, 0 // a new line
	}
	line := g.buf[start:end]
	for i := g.fl.seen; i < len(line); i++ {
		c := line[i]
		switch {
		case c == '\r' && i+1 == len(line):
			g.fl.seen = i
			return 0, ""
		case i == 0 && (c == ' ' || c == '\t'):
			return http.StatusBadRequest, "obsolete line folding"
		case i == 0 && g.fields >= g.maxFields:
			return http.StatusRequestHeaderFieldsTooLarge, "too many header fields"
		case g.fl.colon == 0: // the name
			if c == ':' && i > 0 {
				g.fl.colon = i
			} else if !tchar[c] {
				return http.StatusBadRequest, "invalid header field name"
			}
		case c < ' ' && c != '\t' || c == 0x7f:
			return http.StatusBadRequest, "invalid header field value"
		}
	}
	g.fl.seen = len(line)
	return 0, ""
}

// versionByte reports whether c may be byte j of "HTTP/" DIGIT "." DIGIT.
func versionByte(j int, c byte) bool {
	switch j {
	case 5, 7:
		return isDigit(c)
	case 6:
		return c == '.'
	}
	return c == "HTTP/"[j]
}

// requestLine checks "method SP request-target SP HTTP/1.x".
func (g *guard) requestLine(line []byte) bool {
	g.first = false
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 || !isToken(line[:sp1]) {
		g.refuse(http.StatusBadRequest, "invalid request line")
		return false
	}
	g.methodLen = sp1
	rest := line[sp1+1:]
	sp2, targetOK := targetEnd(rest)
	switch {
	case !targetOK:
		g.refuse(http.StatusBadRequest, "invalid request target")
		return false
	case sp2 <= 0:
		g.refuse(http.StatusBadRequest, "invalid request line")
		return false
	}
	g.targetLen = sp2
	v := rest[sp2+1:]
	if len(v) != len("HTTP/1.1") || string(v[:5]) != "HTTP/" || !isDigit(v[5]) || v[6] != '.' || !isDigit(v[7]) {
		g.refuse(http.StatusBadRequest, "invalid request line")
		return false
	}
	if v[5] != '1' {
		g.refuse(http.StatusHTTPVersionNotSupported, "HTTP version not supported")
		return false
	}
	g.http10 = v[7] == '0'
	g.connect = string(line[:sp1]) == "CONNECT"
	if !g.connect && !validTargetForm(rest[:sp2]) {
		g.refuse(http.StatusBadRequest, "invalid request target")
		return false
	}
	g.reqLine = fingerprintBytes(line)
	return true
}

// targetEnd finds the space that ends the request target at the start of
// rest (-1: none). ok is false if a byte before it is not allowed in a
// target: the first bad byte decides, as partialRequestLine decides before
// the line's end is known, so a line without a second space gets the same
// reason whether it comes whole or in pieces. Visible ASCII only (RFC 9112
// and RFC 3986: other octets are percent-encoded): an upstream may parse
// raw 8-bit bytes differently, or refuse them after the request was
// forwarded. No fragment either (RFC 9112, 3.2): net/http would forward
// "/a#b" as "/a%23b", another resource.
func targetEnd(rest []byte) (sp int, ok bool) {
	for i, c := range rest {
		switch {
		case c == ' ':
			return i, true
		case c < ' ' || c >= 0x7f || c == '#':
			return -1, false
		}
	}
	return -1, true
}

// validTargetForm accepts RFC 9112's origin-form ("/path"), absolute-form
// with an http or https scheme, and asterisk-form; CONNECT's
// authority-form is checked by the caller. Anything else (say "a:b") has
// no path an upstream could be sent, and FuzzServeConn showed such a
// request forwarded as a target the upstream refuses.
func validTargetForm(t []byte) bool {
	switch {
	case t[0] == '/', len(t) == 1 && t[0] == '*':
		return true
	}
	for _, scheme := range [...]string{"http://", "https://"} {
		if len(t) > len(scheme) && strings.EqualFold(string(t[:len(scheme)]), scheme) {
			return true
		}
	}
	return false
}

// field checks one field line of a head (or, if trailer, of a trailer
// section) and notes the framing fields. It returns a refusal status and
// message, or 0.
func (g *guard) field(line []byte, trailer bool) (int, string) {
	if line[0] == ' ' || line[0] == '\t' {
		return http.StatusBadRequest, "obsolete line folding"
	}
	if g.fields++; g.fields > g.maxFields {
		return http.StatusRequestHeaderFieldsTooLarge, "too many header fields"
	}
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 || !isToken(line[:colon]) {
		return http.StatusBadRequest, "invalid header field name"
	}
	name, value := line[:colon], trimOWS(line[colon+1:])
	for _, c := range value {
		if c < ' ' && c != '\t' || c == 0x7f {
			return http.StatusBadRequest, "invalid header field value"
		}
	}
	switch {
	case equalFold(name, "Content-Length"):
		if trailer {
			return http.StatusBadRequest, "content-length in trailers"
		}
		if g.nCL++; g.nCL > 1 {
			return http.StatusBadRequest, "multiple content-length fields"
		}
		n, ok := parseContentLength(value)
		if !ok {
			return http.StatusBadRequest, "invalid content-length"
		}
		g.clen = n
	case equalFold(name, "Transfer-Encoding"):
		if trailer {
			return http.StatusBadRequest, "transfer-encoding in trailers"
		}
		if g.nTE++; g.nTE > 1 {
			return http.StatusBadRequest, "multiple transfer-encoding fields"
		}
		if !equalFold(value, "chunked") {
			return http.StatusBadRequest, "unsupported transfer-encoding"
		}
		g.chunked = true
	case equalFold(name, "Host"):
		if trailer {
			return http.StatusBadRequest, "host in trailers"
		}
		if g.nHost++; g.nHost > 1 {
			return http.StatusBadRequest, "multiple host fields"
		}
		// net/http would refuse it itself, with a bare 400 that no
		// access-log record or metric would count.
		if !httpguts.ValidHostHeader(string(value)) {
			return http.StatusBadRequest, "invalid host field"
		}
	case trailer && (equalFold(name, "Trailer") || equalFold(name, g.steering)):
		return http.StatusBadRequest, "forbidden trailer field"
	}
	return 0, ""
}

// endHead decides on a complete, well-formed head.
func (g *guard) endHead() bool {
	switch {
	case g.nTE > 0 && g.http10:
		g.refuse(http.StatusBadRequest, "transfer-encoding in an HTTP/1.0 request")
		return false
	case g.nTE > 0 && g.nCL > 0:
		g.refuse(http.StatusBadRequest, "both content-length and transfer-encoding")
		return false
	case g.nHost == 0 && !g.http10 && !g.connect:
		g.refuse(http.StatusBadRequest, "missing host field") // as net/http, which would say so in its status line
		return false
	}
	g.mu.Lock()
	g.verdicts = append(g.verdicts, verdict{line: g.reqLine, at: g.base + int64(g.elem)})
	g.mu.Unlock()
	g.inflight.Add(1)
	g.heads++
	g.headStart = g.elem
	g.cur.methodLen, g.cur.targetLen, g.cur.http10 = g.methodLen, g.targetLen, g.http10
	switch {
	case g.chunked:
		g.st = gChunk
	case g.nCL > 0 && g.clen > 0:
		g.st, g.after, g.left = gData, gHead, g.clen
	default:
		g.st = gHead
	}
	g.elem = g.line
	g.resetHead()
	return true
}

func (g *guard) resetHead() {
	g.fields, g.nCL, g.nTE, g.nHost = 0, 0, 0, 0
	g.first, g.http10, g.chunked, g.connect, g.clen = true, false, false, false, 0
	g.methodLen, g.targetLen, g.reqLine = 0, 0, 0
	g.rl.seen, g.rl.sp1, g.rl.sp2 = 0, 0, 0
}

// chunkLine checks "1*HEXDIG [ ; chunk-ext ] CRLF".
func (g *guard) chunkLine() bool {
	line, ok, bad := g.nextLine()
	if (ok && g.line-g.elem > maxChunkLine) || (!ok && g.w-g.elem > maxChunkLine) {
		g.bodyError("chunk-size line too long")
		return false
	}
	switch {
	case !ok:
		return false
	case bad:
		g.bodyError("chunk-size line not terminated by CRLF")
		return false
	}
	var size int64
	i := 0
	for ; i < len(line) && isHex(line[i]); i++ {
		size = size<<4 | int64(unhex(line[i]))
	}
	if i == 0 || i > maxChunkDigits {
		g.bodyError("invalid chunk size")
		return false
	}
	if i < len(line) {
		if line[i] != ';' {
			g.bodyError("invalid chunk size")
			return false
		}
		for _, c := range line[i+1:] {
			if c < ' ' && c != '\t' || c == 0x7f {
				g.bodyError("invalid chunk extension")
				return false
			}
		}
	}
	g.elem = g.line
	if size == 0 {
		g.st, g.fields = gTrailer, 0
		return true
	}
	g.st, g.after, g.left = gData, gChunkEnd, size
	return true
}

// trailerLine handles a line of the trailer section after the last chunk.
// An unfinished one is checked as a head's field line is, each byte once,
// and refused at the first byte no later byte can make valid: the request
// is answered at once, not when the client's body stalls for
// StreamIdleTimeout.
func (g *guard) trailerLine() bool {
	start := g.line
	line, ok, bad := g.nextLine()
	switch {
	case (ok && g.line-g.elem > g.maxHead) || (!ok && g.w-g.elem > g.maxHead):
		g.bodyError(g.firstBadTrailerByte(start, g.elem+g.maxHead, "trailer section too large"))
		return false
	case !ok:
		if _, msg := g.partialFieldLine(start, g.w); msg != "" {
			g.bodyError(msg)
		}
		return false
	case bad:
		g.bodyError(g.firstBadTrailerByte(start, g.line-1, "trailer line not terminated by CRLF"))
		return false
	case len(line) == 0:
		g.st = gHead
		g.elem = g.line
		g.resetHead()
		return true
	}
	if status, msg := g.field(line, true); status != 0 {
		g.bodyError(msg)
		return false
	}
	// Trailer lines are held together until the section ends, so a bad
	// one can still refuse a request whose head is held too.
	return true
}

// firstBadTrailerByte is msg, why the trailer line at start is refused as
// a whole, unless a byte of it before end was already bad: then, as for a
// head's line (refuseLine), that byte's reason.
func (g *guard) firstBadTrailerByte(start, end int, msg string) string {
	if _, m := g.partialFieldLine(start, end); m != "" {
		return m
	}
	return msg
}

// refuse replaces the head being parsed (from elem) with the placeholder
// and queues the refusal; nothing after it is read.
func (g *guard) refuse(status int, msg string) {
	v := verdict{line: placeholderLine, status: status, msg: msg}
	if !g.first || g.methodLen > 0 {
		g.describe(&v, g.elem, g.methodLen, g.targetLen, g.reqLine != 0, g.http10)
	}
	g.mu.Lock()
	g.verdicts = append(g.verdicts, v)
	g.cut = true
	g.mu.Unlock()
	g.inflight.Add(1)
	g.stop()
}

// stoppedShort reports whether the guard stopped reading at a refused
// request or a bad body: the rest of what the client sends will not be
// read, though it may not have arrived yet.
func (g *guard) stoppedShort() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.cut
}

// describe fills in a refused request's proto, method and target from its
// request line at buf[start:] (as far as it was valid), for the access log.
func (g *guard) describe(v *verdict, start, methodLen, targetLen int, lineOK, http10 bool) {
	if methodLen > 0 {
		v.method = string(g.buf[start : start+methodLen])
		v.target = string(g.buf[start+methodLen+1 : start+methodLen+1+min(targetLen, 256)])
	}
	if lineOK {
		v.proto = "HTTP/1.1"
		if http10 {
			v.proto = "HTTP/1.0"
		}
	}
}

// stop hands on what precedes elem, then the placeholder, then EOF.
func (g *guard) stop() {
	g.st = gDone
	g.rel, g.scan = g.elem, g.elem
	g.synth, g.err = placeholder, io.EOF
}

// bodyError handles a framing error in a request body. If no byte of the
// request's head was handed on yet, the request is refused as a whole;
// else the body is cut: the good bytes are handed on, then errBadBody.
func (g *guard) bodyError(msg string) {
	if g.headStart >= g.r {
		g.mu.Lock()
		v := &g.verdicts[len(g.verdicts)-1] // the request's own: net/http has not seen its head
		*v = verdict{line: placeholderLine, status: http.StatusBadRequest, msg: msg}
		g.describe(v, g.headStart, g.cur.methodLen, g.cur.targetLen, true, g.cur.http10)
		g.cut = true
		g.mu.Unlock()
		g.elem = g.headStart
		g.stop()
		return
	}
	g.mu.Lock()
	g.bodyErr, g.cut = msg, true
	g.mu.Unlock()
	g.st = gFailed
	g.rel = g.elem
	g.err = errBadBody
}

// tchar marks the bytes of an RFC 9110 token.
var tchar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

func isToken(b []byte) bool {
	for _, c := range b {
		if !tchar[c] {
			return false
		}
	}
	return len(b) > 0
}

// parseContentLength accepts 1 to maxCLDigits decimal digits, nothing
// else (no sign, no spaces, no list).
func parseContentLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > maxCLDigits {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if !isDigit(c) {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func isHex(c byte) bool { return isDigit(c) || 'a' <= c|0x20 && c|0x20 <= 'f' }

func unhex(c byte) byte {
	if isDigit(c) {
		return c - '0'
	}
	return c | 0x20 - 'a' + 10
}

// trimOWS removes leading and trailing spaces and tabs.
func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// listItems yields the items of a comma-separated field value, trimmed
// of spaces and tabs; empty items too.
func listItems(v []byte) iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		for len(v) > 0 {
			var item []byte
			item, v, _ = bytes.Cut(v, []byte{','})
			if !yield(trimOWS(item)) {
				return
			}
		}
	}
}

// equalFold reports whether b equals s, ignoring ASCII case.
func equalFold[S string | []byte](b []byte, s S) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		x, y := b[i], s[i]
		if x != y && (x|0x20 != y|0x20 || x|0x20 < 'a' || x|0x20 > 'z') {
			return false
		}
	}
	return true
}

// FNV-1a, 64 bits: the fingerprint of a request line.
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func fingerprintBytes(line []byte) uint64 {
	h := uint64(fnvOffset)
	for _, c := range line {
		h = (h ^ uint64(c)) * fnvPrime
	}
	return h
}

// fingerprint is fingerprintBytes of "method SP target SP proto", as
// net/http reports a request's line.
func fingerprint(method, target, proto string) uint64 {
	h := uint64(fnvOffset)
	for _, s := range [...]string{method, " ", target, " ", proto} {
		for i := 0; i < len(s); i++ {
			h = (h ^ uint64(s[i])) * fnvPrime
		}
	}
	return h
}
