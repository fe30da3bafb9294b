package opsconfig

import (
	"github.com/sortie-fleet/sortie/pkg/learn"
)

// Learning is how Sortie learns capacity profiles from finished jobs (the `learning`
// section): after each job that gives a rate sample (see learn.Observe) the reaper folds
// it into the (profile, instance type) estimate with weight Alpha, and the planner sizes
// with the learned rate once it has MinSamples samples, at mean − SpreadFactor × spread.
type Learning struct {
	// MinSamples is how many samples a learned rate needs before the planner uses it;
	// 0 (unset) is DefaultMinSamples.
	MinSamples int `yaml:"min_samples"`
	// Alpha is the weight of the newest sample, 0 < alpha ≤ 1; 0 (unset) is DefaultAlpha.
	Alpha float64 `yaml:"alpha"`
	// SpreadFactor k sizes with mean − k·spread (floored at half the mean); unset is
	// DefaultSpreadFactor, an explicit 0 sizes with the mean.
	SpreadFactor *float64 `yaml:"spread_factor"`
	// Off, when true, makes the planner size with the configured rates only (samples are
	// still recorded, and `sortie profiles` shows them).
	Off bool `yaml:"off"`
}

// Defaults of the learning section. Alpha 0.2 follows a changed workload within about
// twenty jobs (0.8²⁰ ≈ 1 % weight left on the old rate) while keeping the spread's
// estimate steady; five samples keep one odd job from moving the plan; k = 2.5 plans for a
// rate about 99 % of jobs reach under normal noise, since a missed deadline costs more
// than an instance more. `sortie simulate` chose them: on its generated traces (8–10 %
// noise) they meet ≥ 99 % of deadlines for about 1 % more instance-minutes than an
// oracle, where alpha 0.3 with k = 2 met only 98.4–99 %.
const (
	DefaultMinSamples   = 5
	DefaultAlpha        = 0.2
	DefaultSpreadFactor = 2.5
	MaxMinSamples       = 1000000
	MaxSpreadFactor     = 10.0
)

// WithDefaults fills the unset fields.
func (l Learning) WithDefaults() Learning {
	if l.MinSamples == 0 {
		l.MinSamples = DefaultMinSamples
	}
	if l.Alpha == 0 {
		l.Alpha = DefaultAlpha
	}
	if l.SpreadFactor == nil {
		k := DefaultSpreadFactor
		l.SpreadFactor = &k
	}
	return l
}

// Policy is the planner's rule for using a learned rate.
func (l Learning) Policy() learn.Policy {
	l = l.WithDefaults()
	return learn.Policy{MinSamples: l.MinSamples, SpreadFactor: *l.SpreadFactor, Off: l.Off}
}

func (l Learning) validate(p *problems) {
	if l.MinSamples < 0 || l.MinSamples > MaxMinSamples {
		p.add("learning.min_samples", "must be within [1, %d] (0: the default %d), got %d", MaxMinSamples, DefaultMinSamples, l.MinSamples)
	}
	if l.Alpha != 0 {
		if err := learn.CheckAlpha(l.Alpha); err != nil {
			p.add("learning.alpha", "must be within (0, 1] (0: the default %v), got %v", DefaultAlpha, l.Alpha)
		}
	}
	if k := l.SpreadFactor; k != nil && !(*k >= 0 && *k <= MaxSpreadFactor) {
		p.add("learning.spread_factor", "must be within [0, %v], got %v", MaxSpreadFactor, *k)
	}
}
