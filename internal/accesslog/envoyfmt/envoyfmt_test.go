package envoyfmt

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Format
	}{
		{"%DURATION%", Format{{Op: OpDuration}}},
		{"[%START_TIME%] %RESPONSE_CODE%\n", Format{{Op: OpText, Text: "["}, {Op: OpStartTime}, {Op: OpText, Text: "] "}, {Op: OpResponseCode}, {Op: OpText, Text: "\n"}}},
		{`%BYTES_SENT%\n`, Format{{Op: OpBytesSent}, {Op: OpText, Text: "\n"}}}, // the two characters \n
		{`%BYTES_SENT%\t\x`, Format{{Op: OpBytesSent}, {Op: OpText, Text: "\t\\x"}}},
		{"100%% %BYTES_RECEIVED%%%", Format{{Op: OpText, Text: "100% "}, {Op: OpBytesReceived}, {Op: OpText, Text: "%"}}},
		{"%REQ(X-Request-ID)%", Format{{Op: OpReq, Header: "x-request-id"}}},
		{"%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", Format{{Op: OpReq, Header: "x-envoy-original-path", Alt: ":path"}}},
		{"%REQ(:PATH):10%", Format{{Op: OpReq, Header: ":path", MaxLen: 10}}},
		{"%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%", Format{{Op: OpResp, Header: "x-envoy-upstream-service-time"}}},
		{"%UPSTREAM_HOST%%CONNECTION_ID%", Format{{Op: OpUpstreamHost}, {Op: OpConnectionID}}},
		{"%START_TIME(%s)%", Format{{Op: OpStartTime, Time: Layout{{kind: tUnix}}}}},
		{"%UPSTREAM_CLUSTER%%UPSTREAM_CLUSTER_RAW%", Format{{Op: OpUpstreamCluster}, {Op: OpUpstreamCluster}}},
		{"%UPSTREAM_LOCAL_ADDRESS%%UPSTREAM_TRANSPORT_FAILURE_REASON%%ROUTE_NAME%",
			Format{{Op: OpUpstreamLocalAddress}, {Op: OpUpstreamTransportFailureReason}, {Op: OpRouteName}}},
	} {
		got, err := Parse(c.in)
		if err != nil {
			t.Errorf("Parse(%q): %v", c.in, err)
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("Parse(%q) =\n%+v\nwant\n%+v", c.in, got, c.want)
		}
	}
	for name, f := range map[string]string{"Envoy": Default, "Istio": Istio} {
		if _, err := Parse(f); err != nil {
			t.Errorf("%s's default format: %v", name, err)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", "no %OPERATOR%"},
		{"text", "no %OPERATOR%"},
		{"%%", "no %OPERATOR%"},
		{"%DURATION", "no closing %"},
		{"%DURATION% %", "offset 11: a \"%\" that starts no operator"},
		{"50% off %DURATION%", "offset 2: a \"%\" that starts no operator (write %% for a literal percent sign)"},
		{"%FOO%", "unknown operator %FOO% (detour knows START_TIME, DURATION,"},
		{"%UPSTREAM_PEER_SUBJECT%", "unknown operator %UPSTREAM_PEER_SUBJECT%"},
		{"%duration%", "unknown operator %duration%"},
		{"%REQ%", "%REQ% needs a header name"},
		{"%REQ()%", "%REQ()%: not a header name"},
		{"%REQ(A?)%", "not a header name"},
		{"%REQ(A?B?C)%", "not a header name"},
		{"%REQ(:PATH%", "unterminated argument"},
		{"%REQ(:PATH):%", "the length after ':' must be a positive number"},
		{"%REQ(:PATH):0%", "positive number"},
		{"%REQ(:PATH):5x%", "no closing %"},
		{"%DURATION(ms)%", "%DURATION% takes no argument"},
		{"%DURATION:5%", "takes no :MAX_LEN"},
		{"%START_TIME(%Q)%", "unknown time specifier %Q"},
		{"%START_TIME(%)%", "at the end"},
	} {
		_, err := Parse(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Parse(%q): err %v, want one containing %q", c.in, err, c.want)
		}
	}
	if _, err := Parse("plain"); !errors.Is(err, ErrNoOperator) {
		t.Errorf("Parse(plain): %v, want ErrNoOperator", err)
	}
}

func TestLayout(t *testing.T) {
	ts := time.Date(2026, 11, 22, 0, 51, 50, 123456789, time.FixedZone("X", 3600))
	for _, c := range []struct{ layout, want string }{
		{"", "2026-11-21T23:51:50.123Z"}, // nil: Envoy's default, UTC
		{"%Y/%m/%dT%H:%M:%S%z", "2026/11/21T23:51:50+0000"},
		{"%s", "1795305110"},
		{"%s.%3f", "1795305110.123"},
		{"%s.%6f|%f|%1f", "1795305110.123456|123456789|1"},
		{"%Y-%m-%dT%H:%M:%E3SZ", "2026-11-21T23:51:50.123Z"},
		{"%E6S %E*S", "50.123456 50.123456789"},
		{"%F %T %Z %%Y %a %b %e %j", "2026-11-21 23:51:50 UTC %Y Sat Nov 21 325"},
		{"2006 Jan", "2006 Jan"}, // literal text is not a Go layout
	} {
		var l Layout
		if c.layout != "" {
			var err error
			if l, err = ParseLayout(c.layout); err != nil {
				t.Errorf("%q: %v", c.layout, err)
				continue
			}
		}
		if got := string(l.AppendTime(nil, ts)); got != c.want {
			t.Errorf("%q: %q, want %q", c.layout, got, c.want)
		}
	}
}
