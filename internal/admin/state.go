package admin

import (
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Phase is where the daemon is in its life.
type Phase string

const (
	Starting Phase = "starting" // listeners opening, rules being installed
	Ready    Phase = "ready"    // every listener serving, rules installed
	Draining Phase = "draining" // SIGTERM: finishing open connections
)

// Rules describes the interception rules detour manages.
type Rules struct {
	// Managed is false when no ports are configured: detour installs no
	// rules and serves whatever reaches its listeners.
	Managed   bool `json:"managed"`
	Installed bool `json:"installed"`
	// Drained: SIGTERM (or a reload that dropped every port) took away
	// what diverts new connections; what the open ones need stays.
	Drained bool `json:"drained,omitempty"`
	// Reinstalled counts the times the run found part of its rules gone
	// (a firewall's flush) and put them back.
	Reinstalled uint64   `json:"reinstalled,omitempty"`
	Table       string   `json:"table,omitempty"` // "inet detour"
	Ports       []string `json:"ports,omitempty"` // "80", "8000-8100"
}

// State is what the daemon tells the admin endpoint about itself. It is
// safe for concurrent use, and a prometheus.Collector (detour_ready,
// detour_rules_installed, detour_listeners).
type State struct {
	mu        sync.Mutex
	phase     Phase
	since     time.Time
	listeners []string
	rules     Rules
	protocol  string // in force since a reload changed it; "" until then (Info.Protocol)
}

// NewState returns a State in phase Starting.
func NewState() *State { return &State{phase: Starting, since: time.Now()} }

// SetPhase moves to p.
func (s *State) SetPhase(p Phase) {
	s.mu.Lock()
	s.phase = p
	s.mu.Unlock()
}

// Phase returns the current phase.
func (s *State) Phase() Phase {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.phase
}

// SetListeners records the addresses the listeners serve on.
func (s *State) SetListeners(addrs []string) {
	s.mu.Lock()
	s.listeners = slices.Clone(addrs)
	s.mu.Unlock()
}

// SetProtocol records the protocol in force: a reload may change it.
func (s *State) SetProtocol(p string) {
	s.mu.Lock()
	s.protocol = p
	s.mu.Unlock()
}

func (s *State) protocolOr(start string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.protocol != "" {
		return s.protocol
	}
	return start
}

// SetRules records the rules' state; the reinstall count stays.
func (s *State) SetRules(r Rules) {
	r.Ports = slices.Clone(r.Ports)
	s.mu.Lock()
	r.Reinstalled = s.rules.Reinstalled
	s.rules = r
	s.mu.Unlock()
}

// RulesReinstalled counts one reinstall of rules that had vanished.
func (s *State) RulesReinstalled() {
	s.mu.Lock()
	s.rules.Reinstalled++
	s.mu.Unlock()
}

func (s *State) snapshot() (Phase, time.Time, []string, Rules) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.phase, s.since, s.listeners, s.rules
}

var (
	descReady = prometheus.NewDesc("detour_ready",
		"1 when every listener is serving and the rules are installed; 0 while starting or draining.", nil, nil)
	descRules = prometheus.NewDesc("detour_rules_installed",
		"1 while detour's interception rules are installed and divert new connections; 0 when they are not, are found missing, are drained (SIGTERM), or none are configured.", nil, nil)
	descReinstalled = prometheus.NewDesc("detour_rules_reinstalled_total",
		"Times detour found part of its interception rules gone (a firewall's flush) and put them back.", nil, nil)
	descListeners = prometheus.NewDesc("detour_listeners",
		"Listeners serving intercepted connections.", nil, nil)
)

// Describe implements prometheus.Collector.
func (s *State) Describe(ch chan<- *prometheus.Desc) {
	ch <- descReady
	ch <- descRules
	ch <- descReinstalled
	ch <- descListeners
}

// Collect implements prometheus.Collector.
func (s *State) Collect(ch chan<- prometheus.Metric) {
	phase, _, lns, rules := s.snapshot()
	ch <- prometheus.MustNewConstMetric(descReady, prometheus.GaugeValue, b2f(phase == Ready))
	ch <- prometheus.MustNewConstMetric(descRules, prometheus.GaugeValue, b2f(rules.Installed))
	ch <- prometheus.MustNewConstMetric(descReinstalled, prometheus.CounterValue, float64(rules.Reinstalled))
	ch <- prometheus.MustNewConstMetric(descListeners, prometheus.GaugeValue, float64(len(lns)))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
