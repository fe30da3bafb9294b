// Package learn keeps the learned throughput of a capacity profile on an instance type: an
// exponentially weighted mean and spread of the rates observed after each job, and the rule
// that says when the planner sizes with it instead of the configured rate.
package learn

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"
)

// Estimate is the learned rate of one (profile, instance type), in items per
// instance-minute. The zero Estimate has no samples.
type Estimate struct {
	Mean     float64   // exponentially weighted mean
	Variance float64   // exponentially weighted variance around Mean
	Samples  int       // observations folded in
	Updated  time.Time // when the last one was
}

// Spread is the exponentially weighted standard deviation.
func (e Estimate) Spread() float64 { return math.Sqrt(max(e.Variance, 0)) }

// Update folds one observed rate x into e with weight alpha (0 < alpha ≤ 1: the weight of
// the newest sample; older ones decay by 1 − alpha each). The first sample sets the mean
// and a zero spread. This is the incremental form of the exponentially weighted mean and
// variance (Finch, "Incremental calculation of weighted mean and variance", 2009):
//
//	d = x − mean;  mean += alpha·d;  variance = (1 − alpha)·(variance + alpha·d²)
func (e Estimate) Update(x, alpha float64, at time.Time) Estimate {
	if e.Samples == 0 {
		return Estimate{Mean: x, Samples: 1, Updated: at}
	}
	d := x - e.Mean
	return Estimate{
		Mean:     e.Mean + alpha*d,
		Variance: (1 - alpha) * (e.Variance + alpha*d*d),
		Samples:  e.Samples + 1,
		Updated:  at,
	}
}

// CheckSample says why x cannot be a rate sample (not a finite positive number), or nil.
func CheckSample(x float64) error {
	if !(x > 0) || math.IsInf(x, 0) {
		return fmt.Errorf("rate %v items per instance-minute: want a finite number > 0", x)
	}
	return nil
}

// CheckAlpha says why alpha cannot weigh samples, or nil.
func CheckAlpha(alpha float64) error {
	if !(alpha > 0 && alpha <= 1) {
		return fmt.Errorf("alpha %v: want 0 < alpha ≤ 1", alpha)
	}
	return nil
}

// Policy is when and how the planner uses a learned rate (the ops config's `learning`).
type Policy struct {
	// MinSamples is how many samples an estimate needs before the planner uses it.
	MinSamples int
	// SpreadFactor k: the planner sizes with mean − k·spread, a rate most jobs reach (about
	// 98 % of them for k = 2 under normal noise), because a deadline missed costs more than
	// an instance more; 0 sizes with the mean.
	SpreadFactor float64
	// Off keeps the configured rates whatever was learned.
	Off bool
}

// Choice is the rate the planner sizes with for one (profile, instance type) and why.
type Choice struct {
	Rate    float64 // items per instance-minute
	Learned bool    // the learned rate, not the configured one
	// Floored says mean − k·spread fell below half the mean and half the mean was used:
	// samples that far apart say the rate varies, not that it is near zero.
	Floored bool
	// Estimate is the learned estimate as read (zero Samples when none).
	Estimate Estimate
	Policy   Policy
	// Unreadable says why the estimate could not be read (the configured rate is used).
	Unreadable error
}

// Choose returns the rate to size with: the configured one until the estimate has
// p.MinSamples samples, then the conservative learned rate.
func Choose(configured float64, e Estimate, p Policy) Choice {
	c := Choice{Rate: configured, Estimate: e, Policy: p}
	if p.Off || e.Samples < max(p.MinSamples, 1) || !(e.Mean > 0) {
		return c
	}
	c.Learned = true
	c.Rate = e.Mean - p.SpreadFactor*e.Spread()
	if c.Rate < e.Mean/2 {
		c.Rate, c.Floored = e.Mean/2, true
	}
	return c
}

// Unreadable is the choice when the learned estimate cannot be read: the configured rate.
func Unreadable(configured float64, p Policy, err error) Choice {
	if err == nil {
		err = errors.New("unknown error")
	}
	return Choice{Rate: configured, Policy: p, Unreadable: err}
}

// Source says in words where Rate comes from, for the plan's rationale, e.g.
// "learned: 8.9 ± 0.4/min over 12 samples, planned at mean − 2σ" or
// "configured; 3 of 5 samples learned (8.9 ± 0.4/min)".
func (c Choice) Source() string {
	e := c.Estimate
	switch {
	case c.Unreadable != nil:
		return "configured; learned rates unreadable: " + c.Unreadable.Error()
	case c.Policy.Off:
		if e.Samples > 0 {
			return fmt.Sprintf("configured; learning off (%d samples learned: %s ± %s/min)", e.Samples, num(e.Mean), num(e.Spread()))
		}
		return "configured; learning off"
	case c.Learned:
		s := fmt.Sprintf("learned: %s ± %s/min over %d samples, planned at ", num(e.Mean), num(e.Spread()), e.Samples)
		switch {
		case c.Floored:
			s += "half the mean (mean − " + num(c.Policy.SpreadFactor) + "σ is below it)"
		case c.Policy.SpreadFactor == 0:
			s += "the mean"
		default:
			s += "mean − " + num(c.Policy.SpreadFactor) + "σ"
		}
		return s
	case e.Samples > 0:
		return fmt.Sprintf("configured; %d of %d samples learned (%s ± %s/min)", e.Samples, max(c.Policy.MinSamples, 1), num(e.Mean), num(e.Spread()))
	}
	return fmt.Sprintf("configured; 0 of %d samples learned", max(c.Policy.MinSamples, 1))
}

// num renders f with at most 2 decimals and no trailing zeros.
func num(f float64) string { return strconv.FormatFloat(math.Round(f*100)/100, 'f', -1, 64) }
