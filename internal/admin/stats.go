package admin

import (
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
)

// stat is one line of /stats: one series of a counter or gauge, or a
// histogram's (summary's) _count or _sum.
type stat struct {
	name  string
	value float64
	used  bool // non-zero; for _count and _sum: the histogram has samples
}

// statName folds a series into one Envoy-style stat name: the Prometheus
// name, then ".label.value" for each label in label-name order (the order
// the gatherer sorts them in), so one series always has the same name and
// a filter can match a label. Whitespace in a value becomes "_", so a
// name never holds a space and "name: value" splits at the first ": ".
// Empty values are left out, as Prometheus treats them as absent.
func statName(name string, labels []*dto.LabelPair) string {
	var b strings.Builder
	b.WriteString(name)
	for _, l := range labels {
		if l.GetValue() == "" {
			continue
		}
		b.WriteString(".")
		b.WriteString(l.GetName())
		b.WriteString(".")
		b.WriteString(strings.Map(func(r rune) rune {
			if unicode.IsSpace(r) {
				return '_'
			}
			return r
		}, l.GetValue()))
	}
	return b.String()
}

// flatten turns what a gatherer gathered into stats sorted by name.
func flatten(fams []*dto.MetricFamily) []stat {
	var out []stat
	for _, f := range fams {
		for _, m := range f.Metric {
			out = append(out, series(f, m)...)
		}
	}
	slices.SortFunc(out, func(a, b stat) int { return strings.Compare(a.name, b.name) })
	return out
}

// series is the stats of one series of f. Histograms and summaries
// become their _count and _sum, as in the Prometheus text; their buckets
// and quantiles stay on /metrics.
func series(f *dto.MetricFamily, m *dto.Metric) []stat {
	one := func(suffix string, v float64, used bool) stat {
		return stat{name: statName(f.GetName()+suffix, m.Label), value: v, used: used}
	}
	switch f.GetType() {
	case dto.MetricType_COUNTER:
		return []stat{one("", m.GetCounter().GetValue(), m.GetCounter().GetValue() != 0)}
	case dto.MetricType_GAUGE:
		return []stat{one("", m.GetGauge().GetValue(), m.GetGauge().GetValue() != 0)}
	case dto.MetricType_UNTYPED:
		return []stat{one("", m.GetUntyped().GetValue(), m.GetUntyped().GetValue() != 0)}
	case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
		h := m.GetHistogram()
		return []stat{one("_count", float64(h.GetSampleCount()), h.GetSampleCount() != 0),
			one("_sum", h.GetSampleSum(), h.GetSampleCount() != 0)}
	case dto.MetricType_SUMMARY:
		sm := m.GetSummary()
		return []stat{one("_count", float64(sm.GetSampleCount()), sm.GetSampleCount() != 0),
			one("_sum", sm.GetSampleSum(), sm.GetSampleCount() != 0)}
	}
	return nil
}

// statsQuery is what /stats and /stats/prometheus select: the names
// filter matches (nil: all), the used ones only.
type statsQuery struct {
	filter   *regexp.Regexp
	usedOnly bool
}

func (q statsQuery) keeps(st stat) bool {
	return (!q.usedOnly || st.used) && (q.filter == nil || q.filter.MatchString(st.name))
}

// parseStatsQuery reads ?filter= and ?usedonly, answering 400 for a bad
// one (ok false).
func parseStatsQuery(w http.ResponseWriter, r *http.Request) (sq statsQuery, ok bool) {
	q := r.URL.Query()
	if q.Has("filter") {
		var err error
		if sq.filter, err = regexp.Compile(q.Get("filter")); err != nil {
			http.Error(w, fmt.Sprintf("filter %q: not a regular expression (Go syntax, as RE2's): %v", q.Get("filter"), err), http.StatusBadRequest)
			return sq, false
		}
	}
	if q.Has("usedonly") {
		switch q.Get("usedonly") {
		case "", "true":
			sq.usedOnly = true
		default:
			http.Error(w, fmt.Sprintf("usedonly=%q: usedonly takes no value, as in /stats?usedonly", q.Get("usedonly")), http.StatusBadRequest)
			return sq, false
		}
	}
	return sq, true
}

// prometheus is /stats/prometheus and /stats?format=prometheus, Envoy's
// two ways to the Prometheus text (scrape configs written for Envoy use
// either: metrics_path /stats with params format=prometheus is common),
// with Envoy's filter and usedonly: a series is kept when one of its
// /stats lines is.
func (s *Server) prometheus(w http.ResponseWriter, r *http.Request) {
	sq, ok := parseStatsQuery(w, r)
	if !ok {
		return
	}
	g := s.o.Gatherer
	if sq != (statsQuery{}) {
		g = prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
			fams, err := s.o.Gatherer.Gather()
			var out []*dto.MetricFamily
			for _, f := range fams {
				kept := slices.DeleteFunc(slices.Clone(f.Metric), func(m *dto.Metric) bool {
					return !slices.ContainsFunc(series(f, m), sq.keeps)
				})
				if len(kept) > 0 {
					out = append(out, &dto.MetricFamily{Name: f.Name, Help: f.Help, Type: f.Type, Unit: f.Unit, Metric: kept})
				}
			}
			return out, err
		})
	}
	promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(s.o.Logger.Handler(), slog.LevelWarn),
	}).ServeHTTP(w, r)
}

// statValue prints v as Envoy prints its integers, and a fraction as
// short as it reads back the same.
func statValue(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

// stats is GET /stats: Envoy's plain-text stats, for the scripts and
// habits that read them (`curl -s :9901/stats | grep ...`), with Envoy's
// filter, usedonly and format=json.
func (s *Server) stats(w http.ResponseWriter, r *http.Request) {
	format := r.URL.Query().Get("format")
	switch format {
	case "", "text", "json":
	case "prometheus":
		s.prometheus(w, r)
		return
	default:
		http.Error(w, fmt.Sprintf("format %q: use text, json or prometheus", format), http.StatusBadRequest)
		return
	}
	sq, ok := parseStatsQuery(w, r)
	if !ok {
		return
	}
	fams, err := s.o.Gatherer.Gather()
	if err != nil {
		http.Error(w, "gathering the metrics: "+err.Error(), http.StatusInternalServerError)
		return
	}
	var sel []stat
	for _, st := range flatten(fams) {
		if sq.keeps(st) {
			sel = append(sel, st)
		}
	}
	w.Header().Set("Cache-Control", "no-store")
	if format == "json" {
		type jsonStat struct {
			Name  string `json:"name"`
			Value any    `json:"value"` // null for NaN and infinities, which JSON has no numbers for
		}
		out := struct {
			Stats []jsonStat `json:"stats"`
		}{Stats: []jsonStat{}}
		for _, st := range sel {
			js := jsonStat{Name: st.name}
			if !math.IsNaN(st.value) && !math.IsInf(st.value, 0) {
				js.Value = st.value
			}
			out.Stats = append(out.Stats, js)
		}
		writeJSON(w, out)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	for _, st := range sel {
		io.WriteString(w, st.name+": "+statValue(st.value)+"\n")
	}
}
