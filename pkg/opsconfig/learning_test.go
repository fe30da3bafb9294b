package opsconfig

import (
	"errors"
	"strings"
	"testing"

	"github.com/sortie-fleet/sortie/pkg/learn"
)

func TestLearning(t *testing.T) {
	tests := []struct {
		name    string
		section string // appended to the default config
		want    learn.Policy
		alpha   float64
		err     string
	}{
		{name: "unset: defaults", want: learn.Policy{MinSamples: 5, SpreadFactor: 2.5}, alpha: 0.2},
		{name: "set", section: "learning: {min_samples: 3, alpha: 0.5, spread_factor: 1.5}", want: learn.Policy{MinSamples: 3, SpreadFactor: 1.5}, alpha: 0.5},
		{name: "spread factor 0 plans on the mean", section: "learning: {spread_factor: 0}", want: learn.Policy{MinSamples: 5}, alpha: 0.2},
		{name: "off", section: "learning: {off: true}", want: learn.Policy{MinSamples: 5, SpreadFactor: 2.5, Off: true}, alpha: 0.2},
		{name: "alpha 1", section: "learning: {alpha: 1}", want: learn.Policy{MinSamples: 5, SpreadFactor: 2.5}, alpha: 1},
		{name: "alpha over 1", section: "learning: {alpha: 1.5}", err: "learning.alpha: must be within (0, 1]"},
		{name: "alpha negative", section: "learning: {alpha: -0.1}", err: "learning.alpha: must be within (0, 1]"},
		{name: "min samples negative", section: "learning: {min_samples: -1}", err: "learning.min_samples: must be within [1, 1000000]"},
		{name: "spread factor negative", section: "learning: {spread_factor: -1}", err: "learning.spread_factor: must be within [0, 10]"},
		{name: "every problem at once", section: "learning: {alpha: 2, min_samples: -1, spread_factor: 11}", err: "learning.min_samples"},
		{name: "unknown field", section: "learning: {window: 5}", err: "field window not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse(append(DefaultYAML(), []byte("\n"+tt.section+"\n")...))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("Parse = %v, want an error saying %q", err, tt.err)
				}
				if strings.HasPrefix(tt.name, "every") && (!errors.Is(err, ErrInvalid) || strings.Count(err.Error(), "learning.") != 3) {
					t.Fatalf("Parse = %v, want the three problems at once", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Learning.Policy(); got != tt.want {
				t.Fatalf("Policy = %+v, want %+v", got, tt.want)
			}
			if got := c.Learning.WithDefaults().Alpha; got != tt.alpha {
				t.Fatalf("alpha = %v, want %v", got, tt.alpha)
			}
		})
	}
}
