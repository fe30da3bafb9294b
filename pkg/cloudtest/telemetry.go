package cloudtest

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Get GETs url and returns the status code and body; a request error is returned as
// status 0 with the error as the body, so a poll can wait for a server to come up.
func Get(tb testing.TB, url string) (int, string) {
	tb.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	res, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return 0, err.Error()
	}
	return res.StatusCode, string(body)
}

// Metrics is a scrape of a Prometheus endpoint, by family name.
type Metrics map[string]*dto.MetricFamily

// Scrape reads baseURL/metrics in Prometheus text format.
func Scrape(tb testing.TB, baseURL string) (Metrics, error) {
	tb.Helper()
	code, body := Get(tb, baseURL+"/metrics")
	if code != http.StatusOK {
		return nil, fmt.Errorf("GET %s/metrics: %d %s", baseURL, code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("parsing %s/metrics: %w", baseURL, err)
	}
	return fams, nil
}

// Value sums the samples of the named family whose labels include every pair of labels
// ("name", "value", ...): counters and gauges by value, histograms by sample count. A
// family that is absent, or no sample that matches, gives 0.
func (m Metrics) Value(name string, labels ...string) float64 {
	f := m[name]
	if f == nil {
		return 0
	}
	var sum float64
	for _, s := range f.GetMetric() {
		if !hasLabels(s, labels) {
			continue
		}
		switch {
		case s.GetCounter() != nil:
			sum += s.GetCounter().GetValue()
		case s.GetGauge() != nil:
			sum += s.GetGauge().GetValue()
		case s.GetHistogram() != nil:
			sum += float64(s.GetHistogram().GetSampleCount())
		case s.GetUntyped() != nil:
			sum += s.GetUntyped().GetValue()
		}
	}
	return sum
}

func hasLabels(s *dto.Metric, pairs []string) bool {
	have := map[string]string{}
	for _, l := range s.GetLabel() {
		have[l.GetName()] = l.GetValue()
	}
	for i := 0; i+1 < len(pairs); i += 2 {
		if have[pairs[i]] != pairs[i+1] {
			return false
		}
	}
	return true
}
