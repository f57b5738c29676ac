package admin

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"

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
// Histograms and summaries become their _count and _sum, as in the
// Prometheus text; their buckets and quantiles stay on /metrics.
func flatten(fams []*dto.MetricFamily) []stat {
	var out []stat
	for _, f := range fams {
		for _, m := range f.Metric {
			one := func(suffix string, v float64, used bool) {
				out = append(out, stat{name: statName(f.GetName()+suffix, m.Label), value: v, used: used})
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				one("", m.GetCounter().GetValue(), m.GetCounter().GetValue() != 0)
			case dto.MetricType_GAUGE:
				one("", m.GetGauge().GetValue(), m.GetGauge().GetValue() != 0)
			case dto.MetricType_UNTYPED:
				one("", m.GetUntyped().GetValue(), m.GetUntyped().GetValue() != 0)
			case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
				h := m.GetHistogram()
				one("_count", float64(h.GetSampleCount()), h.GetSampleCount() != 0)
				one("_sum", h.GetSampleSum(), h.GetSampleCount() != 0)
			case dto.MetricType_SUMMARY:
				s := m.GetSummary()
				one("_count", float64(s.GetSampleCount()), s.GetSampleCount() != 0)
				one("_sum", s.GetSampleSum(), s.GetSampleCount() != 0)
			}
		}
	}
	slices.SortFunc(out, func(a, b stat) int { return strings.Compare(a.name, b.name) })
	return out
}

// statValue prints v as Envoy prints its integers, and a fraction as
// short as it reads back the same.
func statValue(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

// stats is GET /stats: Envoy's plain-text stats, for the scripts and
// habits that read them (`curl -s :9901/stats | grep ...`), with Envoy's
// filter, usedonly and format=json.
func (s *Server) stats(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var filter *regexp.Regexp
	if q.Has("filter") {
		var err error
		if filter, err = regexp.Compile(q.Get("filter")); err != nil {
			http.Error(w, fmt.Sprintf("filter %q: not a regular expression (Go syntax, as RE2's): %v", q.Get("filter"), err), http.StatusBadRequest)
			return
		}
	}
	usedOnly := false
	if q.Has("usedonly") {
		switch q.Get("usedonly") {
		case "", "true":
			usedOnly = true
		default:
			http.Error(w, fmt.Sprintf("usedonly=%q: usedonly takes no value, as in /stats?usedonly", q.Get("usedonly")), http.StatusBadRequest)
			return
		}
	}
	format := q.Get("format")
	switch format {
	case "", "text", "json":
	default:
		http.Error(w, fmt.Sprintf("format %q: use text or json (the Prometheus text format is /stats/prometheus)", format), http.StatusBadRequest)
		return
	}
	fams, err := s.o.Gatherer.Gather()
	if err != nil {
		http.Error(w, "gathering the metrics: "+err.Error(), http.StatusInternalServerError)
		return
	}
	var sel []stat
	for _, st := range flatten(fams) {
		if (!usedOnly || st.used) && (filter == nil || filter.MatchString(st.name)) {
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
