// Package accesslog writes one record per L4 connection and per HTTP
// request that detour forwarded (or refused), as logfmt text, JSON lines or
// an Envoy format string, to stdout or a file. A file is reopened by Reopen (SIGUSR1 in `detour
// run`), so logrotate can move it away.
//
//	l, err := accesslog.Open(accesslog.Options{Path: "/var/log/detour/access.log", Format: accesslog.FormatJSON})
//	srv := proxy.New(proxy.Options{Observer: observers{metrics, l}, ...}) // l.L4(rec) for each connection
//	httpproxy.New(httpproxy.Options{OnRequest: l.HTTP, ...})
//	defer l.Close()
//
// Records are formatted into pooled buffers and written through a buffer
// that is flushed every FlushInterval, on Reopen and on Close, so a busy
// proxy does not make a write(2) per request. A nil *Logger discards.
//
// Fields, in this order (text: key=value, values quoted when they need it;
// "-" for an empty value):
//
//	tcp:  time kind=tcp id client original_dst upstream_local protocol sni sent received duration_ms connect_ms end flags
//	http: time kind=http id request_id client original_dst dst upstream_local protocol method authority path status flags sent received duration_ms upstream_ms reused details
//
// An Envoy format string (FormatEnvoy, or any Format with a %OPERATOR%) is
// compiled by Open, and each record is its operators' values in place.
package accesslog

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/detour-proxy/detour/internal/accesslog/envoyfmt"
	"github.com/detour-proxy/detour/internal/httpproxy"
	"github.com/detour-proxy/detour/internal/proxy"
)

// Format is the record syntax.
type Format string

const (
	FormatText Format = "text" // logfmt: key=value pairs, one record a line
	FormatJSON Format = "json" // one JSON object a line
	// FormatEnvoy is Envoy's default format string (envoyfmt.Default).
	// Any other value with a %OPERATOR% in it is an Envoy format string.
	FormatEnvoy Format = "envoy"
	// FormatIstio is Istio's default text format (envoyfmt.Istio).
	FormatIstio Format = "istio"
)

// CheckFormat reports whether f is a format Open takes: text, json, envoy,
// istio or an Envoy format string that compiles.
func CheckFormat(f Format) error {
	_, err := compileFormat(f)
	return err
}

// compileFormat returns f's compiled Envoy format, nil for text and json.
func compileFormat(f Format) (envoyFormat, error) {
	switch f {
	case "", FormatText, FormatJSON:
		return nil, nil
	case FormatEnvoy:
		f = envoyfmt.Default
	case FormatIstio:
		f = envoyfmt.Istio
	}
	ef, err := envoyfmt.Parse(string(f))
	if errors.Is(err, envoyfmt.ErrNoOperator) {
		return nil, fmt.Errorf("%q is not a format: use text, json, envoy, istio or an Envoy format string (%%OPERATOR%%s and text)", string(f))
	}
	if err != nil {
		return nil, fmt.Errorf("Envoy format string: %w", err)
	}
	return compileEnvoy(ef), nil
}

// Special Path values.
const (
	PathOff    = "off"
	PathStdout = "stdout"
)

// DefaultFlushInterval bounds how long a record waits in the buffer.
const DefaultFlushInterval = time.Second

// Options configures Open.
type Options struct {
	// Path is a file (appended to, created 0640), PathStdout, or PathOff
	// ("" too) for no access log: Open then returns a nil *Logger.
	Path   string
	Format Format // default FormatText
	// Stdout is where PathStdout writes; nil means os.Stdout.
	Stdout io.Writer
	// FlushInterval: records are written at least this often; zero means
	// DefaultFlushInterval, negative writes each record at once.
	FlushInterval time.Duration
	// Logger is told about write and reopen failures; nil discards.
	Logger *slog.Logger
}

// Logger writes access log records. It is safe for concurrent use; its
// methods do nothing on a nil *Logger.
type Logger struct {
	o     Options
	json  bool
	envoy envoyFormat // non-nil for an Envoy format string
	pool  sync.Pool

	mu     sync.Mutex
	file   *os.File // nil for stdout
	bw     *bufio.Writer
	failed error // last write error, logged once until writes work again
	closed bool

	stop chan struct{}
	done chan struct{}
}

// Open starts an access log, or returns nil for PathOff.
func Open(o Options) (*Logger, error) {
	if o.Path == "" || o.Path == PathOff {
		return nil, nil
	}
	if o.Format == "" {
		o.Format = FormatText
	}
	envoy, err := compileFormat(o.Format)
	if err != nil {
		return nil, fmt.Errorf("access log format: %w", err)
	}
	if o.FlushInterval == 0 {
		o.FlushInterval = DefaultFlushInterval
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Stdout == nil {
		o.Stdout = os.Stdout
	}
	l := &Logger{o: o, json: o.Format == FormatJSON, envoy: envoy, stop: make(chan struct{}), done: make(chan struct{})}
	l.pool.New = func() any { b := make([]byte, 0, 512); return &b }
	w := o.Stdout
	if o.Path != PathStdout {
		f, err := openFile(o.Path)
		if err != nil {
			return nil, err
		}
		l.file, w = f, f
	}
	l.bw = bufio.NewWriterSize(w, 64<<10)
	if o.FlushInterval > 0 {
		go l.flusher()
	} else {
		close(l.done)
	}
	return l, nil
}

// openFile opens the log for appending. Its error is os's ("open PATH:
// permission denied"): Open's caller names the setting, Reopen the log.
func openFile(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
}

func (l *Logger) flusher() {
	defer close(l.done)
	t := time.NewTicker(l.o.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			l.mu.Lock()
			if l.bw.Buffered() > 0 {
				l.noteErr(l.bw.Flush())
			}
			l.mu.Unlock()
		}
	}
}

// noteErr logs the first of a run of write errors and the recovery;
// l.mu must be held. A failed bufio.Writer keeps failing, so it is reset
// onto its writer to try again next time, dropping what it held.
func (l *Logger) noteErr(err error) {
	switch {
	case err != nil && l.failed == nil:
		l.o.Logger.Error("access log write failed; records are being lost", "path", l.o.Path, "err", err)
	case err == nil && l.failed != nil:
		l.o.Logger.Info("access log writes work again", "path", l.o.Path)
	}
	l.failed = err
	if err != nil {
		if l.file != nil {
			l.bw.Reset(l.file)
		} else {
			l.bw.Reset(l.o.Stdout)
		}
	}
}

// write appends one formatted record.
func (l *Logger) write(b []byte) {
	l.mu.Lock()
	if !l.closed {
		_, err := l.bw.Write(b)
		if err == nil && l.o.FlushInterval < 0 {
			err = l.bw.Flush()
		}
		if err != nil || l.failed != nil {
			l.noteErr(err)
		}
	}
	l.mu.Unlock()
}

// Reopen flushes and reopens the file at Path, for log rotation. With
// stdout it only flushes. Its error says the file could not be opened,
// and the old one is still written to; records the flush could not write
// are reported as any failed write is (Options.Logger), since the file
// was reopened all the same.
func (l *Logger) Reopen() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("access log: closed")
	}
	ferr := l.bw.Flush()
	if l.file != nil {
		f, err := openFile(l.o.Path)
		if err != nil {
			if ferr != nil {
				l.noteErr(ferr)
			}
			return fmt.Errorf("access log: %w", err) // keep writing to the old file
		}
		l.file.Close()
		l.file = f
		l.bw.Reset(f)
	}
	if ferr != nil {
		l.noteErr(ferr)
	}
	return nil
}

// Close flushes and closes the log. Later records are dropped.
func (l *Logger) Close() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	err := l.bw.Flush()
	if l.file != nil {
		err = errors.Join(err, l.file.Close())
	}
	l.mu.Unlock()
	if l.o.FlushInterval > 0 {
		close(l.stop)
	}
	<-l.done
	return err
}

// Path is where the log goes ("stdout" or a file).
func (l *Logger) Path() string {
	if l == nil {
		return PathOff
	}
	return l.o.Path
}

// L4 logs one L4 connection, also one refused by the loop guard (flag
// LR) or as not intercepted (NR), or whose upstream connect failed (UF).
func (l *Logger) L4(r proxy.L4Record) {
	if l == nil {
		return
	}
	if l.envoy != nil {
		l.writeEnvoy(l4View(&r))
		return
	}
	e := l.record(r.Start)
	e.str("kind", "tcp")
	e.str("id", r.ID)
	e.addr("client", r.Client)
	e.addr("original_dst", r.OrigDst)
	e.addr("upstream_local", r.UpstreamLocal)
	e.str("protocol", r.Protocol)
	e.str("sni", r.SNI)
	e.int("sent", r.Sent)
	e.int("received", r.Received)
	e.ms("duration_ms", r.Duration)
	e.ms("connect_ms", r.ConnectDuration)
	e.str("end", r.End)
	e.str("flags", orDash(r.Flags))
	l.finish(e)
}

// HTTP logs one request; it has httpproxy.Options.OnRequest's signature.
func (l *Logger) HTTP(i *httpproxy.RequestInfo) {
	if l == nil {
		return
	}
	if l.envoy != nil {
		l.writeEnvoy(httpView(i))
		return
	}
	e := l.record(i.Start)
	e.str("kind", "http")
	e.connID("id", i.ConnID)
	e.str("request_id", i.RequestID)
	e.addr("client", i.Client)
	e.addr("original_dst", i.OrigDst)
	e.addr("dst", i.Dst)
	e.addr("upstream_local", i.UpstreamLocal)
	e.str("protocol", i.Proto)
	e.str("method", i.Method)
	e.str("authority", i.Host)
	e.str("path", i.Path)
	e.int("status", int64(i.Status))
	e.str("flags", i.Flags.String())
	e.int("sent", i.RequestBytes)
	e.int("received", i.BodyBytes)
	e.ms("duration_ms", i.Duration)
	e.ms("upstream_ms", i.UpstreamTime)
	e.bool("reused", i.Reused)
	e.str("details", i.Details)
	l.finish(e)
}

// record starts a record at start in a pooled buffer; finish writes it and
// returns the buffer.
func (l *Logger) record(start time.Time) enc {
	bp := l.pool.Get().(*[]byte)
	e := enc{b: (*bp)[:0], json: l.json, bp: bp}
	e.begin(start)
	return e
}

func (l *Logger) finish(e enc) {
	e.end()
	l.write(e.b)
	*e.bp = e.b
	l.pool.Put(e.bp)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// enc appends one record's fields in text or JSON syntax.
type enc struct {
	b    []byte
	json bool
	bp   *[]byte // the pooled buffer b came from
}

const timeLayout = "2006-01-02T15:04:05.000Z07:00"

func (e *enc) begin(t time.Time) {
	if t.IsZero() {
		t = time.Now()
	}
	if e.json {
		e.b = append(e.b, `{"time":"`...)
		e.b = t.UTC().AppendFormat(e.b, timeLayout)
		e.b = append(e.b, '"')
	} else {
		e.b = append(e.b, "time="...)
		e.b = t.UTC().AppendFormat(e.b, timeLayout)
	}
}

func (e *enc) end() {
	if e.json {
		e.b = append(e.b, '}')
	}
	e.b = append(e.b, '\n')
}

func (e *enc) key(k string) {
	if e.json {
		e.b = append(e.b, ',', '"')
		e.b = append(e.b, k...)
		e.b = append(e.b, '"', ':')
	} else {
		e.b = append(e.b, ' ')
		e.b = append(e.b, k...)
		e.b = append(e.b, '=')
	}
}

// str writes a string field: JSON-escaped, or in text bare when it is
// safe and quoted (Go syntax, like slog's text handler) when it is not.
func (e *enc) str(k, v string) {
	e.key(k)
	if e.json {
		e.b = appendJSONString(e.b, v)
		return
	}
	if v == "" {
		e.b = append(e.b, '-')
	} else if needsQuote(v) {
		e.b = strconv.AppendQuote(e.b, v)
	} else {
		e.b = append(e.b, v...)
	}
}

// addr writes an address, appended in place; an invalid one as empty.
func (e *enc) addr(k string, ap netip.AddrPort) {
	if !ap.IsValid() || ap.Addr().Zone() != "" {
		e.str(k, strings.TrimPrefix(ap.String(), "invalid AddrPort"))
		return
	}
	e.key(k)
	if e.json {
		e.b = append(e.b, '"')
	}
	e.b = ap.AppendTo(e.b)
	if e.json {
		e.b = append(e.b, '"')
	}
}

// connID writes a connection's id as L4 records and the debug log have
// it (C7), appended in place; 0, none, as empty.
func (e *enc) connID(k string, n uint64) {
	if n == 0 {
		e.str(k, "")
		return
	}
	e.key(k)
	if e.json {
		e.b = append(e.b, '"')
	}
	e.b = strconv.AppendUint(append(e.b, 'C'), n, 10)
	if e.json {
		e.b = append(e.b, '"')
	}
}

func (e *enc) int(k string, v int64) {
	e.key(k)
	e.b = strconv.AppendInt(e.b, v, 10)
}

func (e *enc) bool(k string, v bool) {
	e.key(k)
	e.b = strconv.AppendBool(e.b, v)
}

// ms writes a duration in milliseconds with microsecond precision.
func (e *enc) ms(k string, d time.Duration) {
	e.key(k)
	e.b = strconv.AppendFloat(e.b, math.Round(float64(d)/1e3)/1e3, 'f', -1, 64)
}

// needsQuote reports whether a text value must be quoted to stay one
// unambiguous token: empty handled by the caller; spaces, quotes, '=',
// control bytes and anything not printable ASCII.
func needsQuote(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c == '"' || c == '=' || c == '\\' || c >= 0x7f {
			return true
		}
	}
	return false
}

// appendJSONString appends s as a JSON string. Invalid UTF-8 becomes
// U+FFFD, so every line is valid JSON whatever a client sent.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c == '\t':
				b = append(b, '\\', 't')
			case c < 0x20 || c == 0x7f:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
