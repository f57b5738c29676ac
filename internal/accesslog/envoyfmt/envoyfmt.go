// Package envoyfmt parses Envoy access-log format strings
// ("[%START_TIME%] \"%REQ(:METHOD)% %REQ(:PATH)%\" %RESPONSE_CODE%\n")
// into a compiled form, once at configuration time, so that writing a
// record walks a slice of parts and parses nothing. It knows the syntax and
// the operators detour has data for; what each operator's value is for a
// record is the access log's business.
package envoyfmt

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Default is Envoy's default format string (its docs, "Default format
// string"), the value access_log_format: envoy stands for.
const Default = `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" ` +
	`%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% ` +
	`%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" ` +
	`"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"` + "\n"

// Istio is Istio's default text format (its "Default access log format",
// pilot's EnvoyTextLogFormat), the value access_log_format: istio stands
// for. Older Istio releases wrote %UPSTREAM_CLUSTER% where this has
// %UPSTREAM_CLUSTER_RAW%; both are accepted.
const Istio = `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" ` +
	`%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% ` +
	`"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% ` +
	`%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" ` +
	`"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% ` +
	`%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% ` +
	`%REQUESTED_SERVER_NAME% %ROUTE_NAME%` + "\n"

// Op is a command operator, or OpText for literal text.
type Op uint8

const (
	OpText Op = iota
	OpStartTime
	OpDuration
	OpResponseCode
	OpResponseFlags
	OpResponseCodeDetails
	OpConnectionTerminationDetails
	OpBytesReceived
	OpBytesSent
	OpProtocol
	OpReq
	OpResp
	OpUpstreamHost
	OpUpstreamRemoteAddress
	OpDownstreamRemoteAddress
	OpDownstreamRemoteAddressWithoutPort
	OpDownstreamRemotePort
	OpDownstreamLocalAddress
	OpDownstreamLocalAddressWithoutPort
	OpDownstreamLocalPort
	OpRequestedServerName
	OpConnectionID
	OpUpstreamCluster
	OpUpstreamLocalAddress
	OpUpstreamTransportFailureReason
	OpRouteName
)

// argKind says whether an operator takes "(ARG)" and ":MAX_LEN".
type argKind uint8

const (
	argNone   argKind = iota
	argTime           // optional strftime-style layout
	argHeader         // required header name, "A?B" for an alternative; MAX_LEN allowed
)

type opSpec struct {
	op  Op
	arg argKind
}

// operators are the names detour knows, in the order errors list them.
var operators = []struct {
	name string
	opSpec
}{
	{"START_TIME", opSpec{OpStartTime, argTime}},
	{"DURATION", opSpec{OpDuration, argNone}},
	{"RESPONSE_CODE", opSpec{OpResponseCode, argNone}},
	{"RESPONSE_FLAGS", opSpec{OpResponseFlags, argNone}},
	{"RESPONSE_CODE_DETAILS", opSpec{OpResponseCodeDetails, argNone}},
	{"CONNECTION_TERMINATION_DETAILS", opSpec{OpConnectionTerminationDetails, argNone}},
	{"BYTES_RECEIVED", opSpec{OpBytesReceived, argNone}},
	{"BYTES_SENT", opSpec{OpBytesSent, argNone}},
	{"PROTOCOL", opSpec{OpProtocol, argNone}},
	{"REQ", opSpec{OpReq, argHeader}},
	{"RESP", opSpec{OpResp, argHeader}},
	{"UPSTREAM_HOST", opSpec{OpUpstreamHost, argNone}},
	{"UPSTREAM_REMOTE_ADDRESS", opSpec{OpUpstreamRemoteAddress, argNone}},
	{"DOWNSTREAM_REMOTE_ADDRESS", opSpec{OpDownstreamRemoteAddress, argNone}},
	{"DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", opSpec{OpDownstreamRemoteAddressWithoutPort, argNone}},
	{"DOWNSTREAM_REMOTE_PORT", opSpec{OpDownstreamRemotePort, argNone}},
	{"DOWNSTREAM_LOCAL_ADDRESS", opSpec{OpDownstreamLocalAddress, argNone}},
	{"DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT", opSpec{OpDownstreamLocalAddressWithoutPort, argNone}},
	{"DOWNSTREAM_LOCAL_PORT", opSpec{OpDownstreamLocalPort, argNone}},
	{"REQUESTED_SERVER_NAME", opSpec{OpRequestedServerName, argNone}},
	{"CONNECTION_ID", opSpec{OpConnectionID, argNone}},
	{"UPSTREAM_CLUSTER", opSpec{OpUpstreamCluster, argNone}},
	{"UPSTREAM_CLUSTER_RAW", opSpec{OpUpstreamCluster, argNone}},
	{"UPSTREAM_LOCAL_ADDRESS", opSpec{OpUpstreamLocalAddress, argNone}},
	{"UPSTREAM_TRANSPORT_FAILURE_REASON", opSpec{OpUpstreamTransportFailureReason, argNone}},
	{"ROUTE_NAME", opSpec{OpRouteName, argNone}},
}

// Operators lists the operator names detour knows.
func Operators() []string {
	names := make([]string, len(operators))
	for i, o := range operators {
		names[i] = o.name
	}
	return names
}

func lookup(name string) (opSpec, bool) {
	for _, o := range operators {
		if o.name == name {
			return o.opSpec, true
		}
	}
	return opSpec{}, false
}

// Part is one piece of a compiled format.
type Part struct {
	Op   Op
	Text string // OpText: the literal text
	// Header is OpReq's and OpResp's header name, lower case; Alt is the
	// one after "?", used when Header has no value, or "".
	Header, Alt string
	MaxLen      int    // >0: the value is cut to this many bytes
	Time        Layout // OpStartTime: nil for Envoy's default layout
}

// Format is a compiled format string.
type Format []Part

// ErrNoOperator: the string has no %OPERATOR% at all, so it is more likely
// a misspelt format name than a format.
var ErrNoOperator = errors.New("no %OPERATOR% in it")

// Parse compiles an Envoy format string. "\n" and "\t" written as two
// characters stand for a newline and a tab, so a format works the same
// on the command line as in a YAML double-quoted string.
func Parse(s string) (Format, error) {
	var f Format
	var lit strings.Builder
	flush := func() {
		if lit.Len() > 0 {
			f = append(f, Part{Op: OpText, Text: lit.String()})
			lit.Reset()
		}
	}
	ops := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c == '\\' && i+1 < len(s) && (s[i+1] == 'n' || s[i+1] == 't') {
			if s[i+1] == 'n' {
				lit.WriteByte('\n')
			} else {
				lit.WriteByte('\t')
			}
			i += 2
			continue
		}
		if c != '%' {
			lit.WriteByte(c)
			i++
			continue
		}
		if i+1 < len(s) && s[i+1] == '%' {
			lit.WriteByte('%')
			i += 2
			continue
		}
		p, n, err := parseOp(s[i:])
		if err != nil {
			return nil, fmt.Errorf("at offset %d: %w", i, err)
		}
		flush()
		f = append(f, p)
		ops++
		i += n
	}
	flush()
	if ops == 0 {
		return nil, ErrNoOperator
	}
	return f, nil
}

// parseOp parses the operator s starts with: %NAME(ARG):MAX_LEN%, with
// (ARG) and :MAX_LEN optional. It returns its length.
func parseOp(s string) (Part, int, error) {
	j := 1
	for j < len(s) && (s[j] >= 'A' && s[j] <= 'Z' || s[j] >= 'a' && s[j] <= 'z' || s[j] >= '0' && s[j] <= '9' || s[j] == '_') {
		j++
	}
	name := s[1:j]
	if name == "" {
		return Part{}, 0, errors.New(`a "%" that starts no operator (write %% for a literal percent sign)`)
	}
	spec, ok := lookup(name)
	if !ok {
		return Part{}, 0, fmt.Errorf("unknown operator %%%s%% (detour knows %s)", name, strings.Join(Operators(), ", "))
	}
	var arg string
	hasArg := false
	if j < len(s) && s[j] == '(' {
		end := strings.IndexByte(s[j:], ')')
		if end < 0 {
			return Part{}, 0, fmt.Errorf("%%%s: unterminated argument: no ')'", name)
		}
		arg, hasArg = s[j+1:j+end], true
		j += end + 1
	}
	maxLen := 0
	if j < len(s) && s[j] == ':' {
		k := j + 1
		for k < len(s) && s[k] >= '0' && s[k] <= '9' {
			k++
		}
		n, err := strconv.Atoi(s[j+1 : k])
		if err != nil || n <= 0 {
			return Part{}, 0, fmt.Errorf("%%%s: the length after ':' must be a positive number", name)
		}
		maxLen, j = n, k
	}
	if j >= len(s) || s[j] != '%' {
		return Part{}, 0, fmt.Errorf("%%%s: no closing %%", name)
	}
	p := Part{Op: spec.op, MaxLen: maxLen}
	switch spec.arg {
	case argNone:
		if hasArg {
			return Part{}, 0, fmt.Errorf("%%%s%% takes no argument", name)
		}
	case argTime:
		if hasArg {
			l, err := ParseLayout(arg)
			if err != nil {
				return Part{}, 0, fmt.Errorf("%%%s(%s)%%: %w", name, arg, err)
			}
			p.Time = l
		}
	case argHeader:
		if !hasArg {
			return Part{}, 0, fmt.Errorf("%%%s%% needs a header name: %%%s(X-REQUEST-ID)%%", name, name)
		}
		h, alt, two := strings.Cut(arg, "?")
		if h == "" || two && alt == "" || strings.ContainsAny(h+alt, "? \t") {
			return Part{}, 0, fmt.Errorf("%%%s(%s)%%: not a header name, or two joined by '?'", name, arg)
		}
		p.Header, p.Alt = strings.ToLower(h), strings.ToLower(alt)
	}
	if maxLen > 0 && spec.arg != argHeader {
		return Part{}, 0, fmt.Errorf("%%%s%% takes no :MAX_LEN (only REQ and RESP do)", name)
	}
	return p, j + 1, nil
}
