package admin

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

// ServerInfo is /server_info, after Envoy's admin.v3.ServerInfo: the
// field names and values that tooling written for Envoy reads.
type ServerInfo struct {
	Version string `json:"version"`
	// State is Envoy's name for the phase: PRE_INITIALIZING (starting),
	// LIVE (ready), DRAINING.
	State              string  `json:"state"`
	UptimeCurrentEpoch Seconds `json:"uptime_current_epoch"`
	// UptimeAllEpochs equals UptimeCurrentEpoch: detour has no hot
	// restart, so one run is one epoch (a SIGHUP reload is no restart).
	UptimeAllEpochs Seconds `json:"uptime_all_epochs"`
	// HotRestartVersion is "disabled", what Envoy says when it runs
	// without hot restart.
	HotRestartVersion  string      `json:"hot_restart_version"`
	CommandLineOptions CommandLine `json:"command_line_options"`
}

// CommandLine is /server_info's command_line_options: the essentials of
// the configuration in force, under Envoy's names where Envoy has the
// same thing (concurrency, log_level, drain_time).
type CommandLine struct {
	// Mode is detour's: tproxy or redirect (Envoy's mode, Serve or
	// Validate, has no counterpart).
	Mode      string   `json:"mode"`
	Protocol  string   `json:"protocol"`
	Listeners []string `json:"listeners"`
	// AdminAddress is where this endpoint listens; New fills it in.
	AdminAddress string `json:"admin_address"`
	// Concurrency is tcp.loops, the epoll loops: Envoy's worker threads.
	Concurrency int     `json:"concurrency"`
	LogLevel    string  `json:"log_level,omitempty"`
	DrainTime   Seconds `json:"drain_time"` // drain_timeout
}

// Seconds is a duration as Envoy's admin prints one (protobuf's JSON
// form): "12s", "3900s", "1.5s"; never Go's "1h5m0s".
type Seconds time.Duration

// MarshalJSON implements json.Marshaler.
func (s Seconds) MarshalJSON() ([]byte, error) {
	d := time.Duration(s)
	if d%time.Second == 0 {
		return json.Marshal(strconv.FormatInt(int64(d/time.Second), 10) + "s")
	}
	return json.Marshal(strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "s")
}

// envoyState names p as Envoy's ServerInfo.State does.
func envoyState(p Phase) string {
	switch p {
	case Ready:
		return "LIVE"
	case Draining:
		return "DRAINING"
	default:
		return "PRE_INITIALIZING"
	}
}

func (s *Server) serverInfoData() ServerInfo {
	phase, since, lns, _ := s.o.State.snapshot()
	cl := CommandLine{Mode: s.o.Info.Mode, Protocol: s.o.State.protocolOr(s.o.Info.Protocol), Listeners: lns}
	if s.o.CommandLine != nil {
		cl = s.o.CommandLine()
	}
	if cl.Listeners == nil {
		cl.Listeners = []string{}
	}
	cl.AdminAddress = s.Addr().String()
	up := Seconds(max(s.o.Now().Sub(since), 0).Truncate(time.Second)) // whole seconds, as Envoy's
	return ServerInfo{Version: s.o.Info.Version, State: envoyState(phase), UptimeCurrentEpoch: up, UptimeAllEpochs: up,
		HotRestartVersion: "disabled", CommandLineOptions: cl}
}

// serverInfo is GET /server_info, which Istio's tooling and scripts
// written for Envoy read for the version, the state and the uptime.
func (s *Server) serverInfo(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, s.serverInfoData())
}
