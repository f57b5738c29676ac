package accesslog

import (
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/detour-proxy/detour/internal/accesslog/envoyfmt"
	"github.com/detour-proxy/detour/internal/httpproxy"
	"github.com/detour-proxy/detour/internal/proxy"
)

// envoyFormat is a compiled Envoy format string whose REQ and RESP
// headers are resolved, at Open, to the record fields detour has.
type envoyFormat []envoyPart

type envoyPart struct {
	envoyfmt.Part
	hdr, alt field // OpReq, OpResp: the fields Header and Alt name
}

// field is a request or response header an HTTP record carries.
type field uint8

const (
	fieldNone        field = iota // a header detour does not record: "-"
	fieldMethod                   // :method
	fieldPath                     // :path
	fieldAuthority                // :authority, host
	fieldRequestID                // x-request-id
	fieldServiceTime              // the upstream time, as detour's response header
)

// reqFields and respFields are the headers %REQ(...)% and %RESP(...)%
// have values for (README, "Access log and response flags").
var (
	reqFields = map[string]field{
		":method": fieldMethod, ":path": fieldPath, ":authority": fieldAuthority, "host": fieldAuthority,
		"x-request-id": fieldRequestID,
	}
	respFields = map[string]field{
		"x-envoy-upstream-service-time": fieldServiceTime, "x-detour-upstream-service-time": fieldServiceTime,
	}
)

func compileEnvoy(f envoyfmt.Format) envoyFormat {
	out := make(envoyFormat, len(f))
	for i, p := range f {
		out[i].Part = p
		fields := reqFields
		if p.Op == envoyfmt.OpResp {
			fields = respFields
		}
		if p.Op == envoyfmt.OpReq || p.Op == envoyfmt.OpResp {
			out[i].hdr, out[i].alt = fields[p.Header], fields[p.Alt]
		}
	}
	return out
}

// view is one record of either kind as the operators see it; a field a
// kind lacks stays zero and prints "-".
type view struct {
	http     bool
	start    time.Time
	duration time.Duration
	status   int             // HTTP
	flags    httpproxy.Flags // HTTP
	l4Flags  string          // L4
	details  string          // HTTP: why detour answered itself
	end      string          // L4: how it ended
	// received and sent are Envoy's: bytes from and to the client (HTTP:
	// the request's and the response's body bytes).
	received, sent int64
	proto          string // HTTP
	method, path   string
	authority, rid string
	upstreamTime   time.Duration
	hasUpstream    bool // HTTP: the response came from the upstream
	upstream       netip.AddrPort
	upstreamLocal  netip.AddrPort // the upstream connection's local address
	client, local  netip.AddrPort
	sni, connID    string // L4
	connN          uint64 // HTTP: the connection's number, 0 for none
	// failure is why the upstream connect failed (flag UF), Envoy's
	// %UPSTREAM_TRANSPORT_FAILURE_REASON%.
	failure string
}

// clusterName is %UPSTREAM_CLUSTER%'s value: detour has one cluster, the
// original-destination one (Envoy's cluster type ORIGINAL_DST).
const clusterName = "original_dst"

func l4View(r *proxy.L4Record) view {
	v := view{
		start: r.Start, duration: r.Duration, l4Flags: r.Flags, end: r.End,
		received: r.Sent, sent: r.Received,
		client: r.Client, local: r.OrigDst, sni: r.SNI, upstreamLocal: r.UpstreamLocal,
		connID: strings.TrimPrefix(r.ID, "C"),
	}
	if !hasFlag(r.Flags, "LR") && !hasFlag(r.Flags, "NR") { // else no upstream was chosen
		v.upstream = r.OrigDst
	}
	if hasFlag(r.Flags, "UF") {
		v.failure = r.End
	}
	return v
}

func httpView(i *httpproxy.RequestInfo) view {
	v := view{
		http: true, start: i.Start, duration: i.Duration, status: i.Status, flags: i.Flags, details: i.Details,
		received: i.RequestBytes, sent: i.BodyBytes, proto: i.Proto, method: i.Method, path: i.Path, authority: i.Host, rid: i.RequestID,
		upstreamTime: i.UpstreamTime, hasUpstream: i.Details == "" && i.Status > 0,
		client: i.Client, local: i.OrigDst, connN: i.ConnID, upstreamLocal: i.UpstreamLocal,
	}
	if i.Flags&(httpproxy.LoopRefused|httpproxy.DownstreamProtocolError|httpproxy.RequestHeaderTimeout) == 0 {
		v.upstream = i.Dst
	}
	if i.Flags&httpproxy.UpstreamConnectFailure != 0 {
		v.failure = i.Details
	}
	return v
}

// hasFlag reports whether the comma-separated flags hold f.
func hasFlag(flags, f string) bool {
	for flags != "" {
		var one string
		one, flags, _ = strings.Cut(flags, ",")
		if one == f {
			return true
		}
	}
	return false
}

// writeEnvoy formats v in l's Envoy format and writes it; a record always
// ends with a newline, so that records stay lines whatever the format.
func (l *Logger) writeEnvoy(v view) {
	bp := l.pool.Get().(*[]byte)
	b := l.envoy.append((*bp)[:0], &v)
	if len(b) == 0 || b[len(b)-1] != '\n' {
		b = append(b, '\n')
	}
	l.write(b)
	*bp = b
	l.pool.Put(bp)
}

func (f envoyFormat) append(b []byte, v *view) []byte {
	for i := range f {
		p := &f[i]
		switch p.Op {
		case envoyfmt.OpText:
			b = append(b, p.Text...)
		case envoyfmt.OpStartTime:
			t := v.start
			if t.IsZero() {
				t = time.Now()
			}
			b = p.Time.AppendTime(b, t)
		case envoyfmt.OpDuration:
			b = strconv.AppendInt(b, v.duration.Milliseconds(), 10)
		case envoyfmt.OpResponseCode:
			b = appendInt(b, int64(v.status), v.http)
		case envoyfmt.OpResponseFlags:
			switch {
			case !v.http:
				b = appendValue(b, v.l4Flags, 0)
			case v.flags == 0:
				b = append(b, '-')
			default:
				b = append(b, v.flags.String()...)
			}
		case envoyfmt.OpResponseCodeDetails:
			if v.hasUpstream {
				b = append(b, "via_upstream"...)
			} else {
				b = appendValue(b, v.details, 0)
			}
		case envoyfmt.OpConnectionTerminationDetails:
			b = appendValue(b, v.end, 0)
		case envoyfmt.OpBytesReceived:
			b = strconv.AppendInt(b, v.received, 10)
		case envoyfmt.OpBytesSent:
			b = strconv.AppendInt(b, v.sent, 10)
		case envoyfmt.OpProtocol:
			b = appendValue(b, v.proto, 0)
		case envoyfmt.OpReq, envoyfmt.OpResp:
			b = p.appendHeader(b, v)
		case envoyfmt.OpUpstreamHost, envoyfmt.OpUpstreamRemoteAddress:
			b = appendAddr(b, v.upstream)
		case envoyfmt.OpDownstreamRemoteAddress:
			b = appendAddr(b, v.client)
		case envoyfmt.OpDownstreamRemoteAddressWithoutPort:
			b = appendIP(b, v.client)
		case envoyfmt.OpDownstreamRemotePort:
			b = appendInt(b, int64(v.client.Port()), v.client.IsValid())
		case envoyfmt.OpDownstreamLocalAddress:
			b = appendAddr(b, v.local)
		case envoyfmt.OpDownstreamLocalAddressWithoutPort:
			b = appendIP(b, v.local)
		case envoyfmt.OpDownstreamLocalPort:
			b = appendInt(b, int64(v.local.Port()), v.local.IsValid())
		case envoyfmt.OpRequestedServerName:
			b = appendValue(b, v.sni, 0)
		case envoyfmt.OpConnectionID:
			if v.connN != 0 {
				b = strconv.AppendUint(b, v.connN, 10)
			} else {
				b = appendValue(b, v.connID, 0)
			}
		case envoyfmt.OpUpstreamCluster:
			if v.upstream.IsValid() {
				b = append(b, clusterName...)
			} else {
				b = append(b, '-')
			}
		case envoyfmt.OpUpstreamTransportFailureReason:
			b = appendValue(b, v.failure, 0)
		case envoyfmt.OpUpstreamLocalAddress:
			b = appendAddr(b, v.upstreamLocal)
		case envoyfmt.OpRouteName:
			b = append(b, '-') // not a thing detour has
		}
	}
	return b
}

// appendHeader appends the header's value, or its alternative's when it
// has none.
func (p *envoyPart) appendHeader(b []byte, v *view) []byte {
	if !v.http {
		return append(b, '-')
	}
	for _, f := range [2]field{p.hdr, p.alt} {
		switch {
		case f == fieldServiceTime && v.hasUpstream:
			return strconv.AppendInt(b, v.upstreamTime.Milliseconds(), 10)
		case v.header(f) != "":
			return appendValue(b, v.header(f), p.MaxLen)
		}
	}
	return append(b, '-')
}

func (v *view) header(f field) string {
	switch f {
	case fieldMethod:
		return v.method
	case fieldPath:
		return v.path
	case fieldAuthority:
		return v.authority
	case fieldRequestID:
		return v.rid
	}
	return ""
}

// appendValue appends s cut to max bytes (0: whole), "-" when empty, with
// control bytes escaped as \xNN so that a record stays one line.
func appendValue(b []byte, s string, max int) []byte {
	if s == "" {
		return append(b, '-')
	}
	if max > 0 && len(s) > max {
		s = s[:cutPoint(s, max)]
	}
	const hex = "0123456789abcdef"
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			b = append(b, '\\', 'x', hex[c>>4], hex[c&0xf])
		} else {
			b = append(b, c)
		}
	}
	return b
}

// cutPoint is where to cut s, longer than max bytes: at max, as Envoy's
// :MAX_LEN cuts, or before the character that straddles max, so that a
// UTF-8 value stays valid UTF-8 (half a character is a byte that log
// pipelines replace with U+FFFD, or refuse the line for).
func cutPoint(s string, max int) int {
	i := max
	for i > 0 && i > max-utf8.UTFMax && !utf8.RuneStart(s[i]) {
		i--
	}
	if r, n := utf8.DecodeRuneInString(s[i:]); r != utf8.RuneError && i+n > max {
		return i
	}
	return max
}

func appendInt(b []byte, n int64, ok bool) []byte {
	if !ok {
		return append(b, '-')
	}
	return strconv.AppendInt(b, n, 10)
}

func appendAddr(b []byte, ap netip.AddrPort) []byte {
	if !ap.IsValid() {
		return append(b, '-')
	}
	return ap.AppendTo(b)
}

func appendIP(b []byte, ap netip.AddrPort) []byte {
	if !ap.IsValid() {
		return append(b, '-')
	}
	return ap.Addr().AppendTo(b)
}
