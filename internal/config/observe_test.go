package config

import (
	"strings"
	"testing"
)

// istioFormat is Istio's default access log format as its docs show it
// (the older, %UPSTREAM_CLUSTER% one), pasted into a mesh config.
const istioFormat = `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% %RESPONSE_FLAGS% ` +
	`%RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% ` +
	`%DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" ` +
	`"%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% ` +
	`%DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n`

// TestAdminAndAccessLogKeys: the admin endpoint stays on loopback unless
// allowed, and the access log keys have their defaults and checks.
func TestAdminAndAccessLogKeys(t *testing.T) {
	for _, c := range []struct {
		yaml, wantErr, wantAdmin, wantLog, wantFormat string
	}{
		{yaml: "", wantAdmin: "127.0.0.1:9901", wantLog: "off", wantFormat: "text"},
		{yaml: "admin: '[::1]:9000'", wantAdmin: "[::1]:9000", wantLog: "off", wantFormat: "text"},
		{yaml: "admin: off", wantAdmin: "invalid AddrPort", wantLog: "off", wantFormat: "text"},
		{yaml: "admin: 0.0.0.0:9901", wantErr: "--admin-allow-remote"},
		{yaml: "admin: 198.18.1.1:9901", wantErr: "not a loopback address"},
		{yaml: "admin: 198.18.1.1:9901\nadmin_allow_remote: true", wantAdmin: "198.18.1.1:9901", wantLog: "off", wantFormat: "text"},
		{yaml: "access_log: stdout\naccess_log_format: json", wantAdmin: "127.0.0.1:9901", wantLog: "stdout", wantFormat: "json"},
		{yaml: "access_log: /var/log/detour/access.log", wantAdmin: "127.0.0.1:9901", wantLog: "/var/log/detour/access.log", wantFormat: "text"},
		{yaml: "access_log_format: xml", wantErr: `access_log_format: "xml" is not a format: use text, json, envoy, istio or an Envoy format string`},
		{yaml: "access_log_format: envoy", wantAdmin: "127.0.0.1:9901", wantLog: "off", wantFormat: "envoy"},
		{yaml: `access_log_format: "%START_TIME(%s)% %REQ(:PATH)% %RESPONSE_CODE%\n"`, wantAdmin: "127.0.0.1:9901", wantLog: "off",
			wantFormat: "%START_TIME(%s)% %REQ(:PATH)% %RESPONSE_CODE%\n"},
		{yaml: `access_log_format: "%RESPONSE_CODE% %UPSTREAM_PEER_SUBJECT%"`, wantErr: "access_log_format: Envoy format string: at offset 16: unknown operator %UPSTREAM_PEER_SUBJECT% (detour knows START_TIME,"},
		{yaml: "access_log_format: istio", wantAdmin: "127.0.0.1:9901", wantLog: "off", wantFormat: "istio"},
		{yaml: "access_log_format: '" + istioFormat + "'", wantAdmin: "127.0.0.1:9901", wantLog: "off", wantFormat: istioFormat},
		{yaml: `access_log_format: "%REQ(:PATH"`, wantErr: "unterminated argument"},
	} {
		cfg, err := Parse([]byte(c.yaml))
		if err == nil {
			err = cfg.Finish()
		}
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("%q: err = %v, want one containing %q", c.yaml, err, c.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", c.yaml, err)
			continue
		}
		if cfg.AdminAddr.String() != c.wantAdmin || cfg.AccessLog != c.wantLog || cfg.AccessLogFormat != c.wantFormat {
			t.Errorf("%q: admin %s, access log %q %q; want %s %q %q", c.yaml, cfg.AdminAddr, cfg.AccessLog, cfg.AccessLogFormat,
				c.wantAdmin, c.wantLog, c.wantFormat)
		}
	}
}
