package learn

import (
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// TestConverges: on a seeded noisy series around a true rate, the estimate's mean ends
// within the tolerance of the true rate and its spread near the true noise. The tolerances
// follow from alpha: the EW mean of independent samples has a standard deviation of
// σ·√(alpha/(2−alpha)), so a mean within 4 of those is a failure of the math, not bad luck.
func TestConverges(t *testing.T) {
	tests := []struct {
		name         string
		rate, noise  float64
		alpha        float64
		n            int
		spreadWithin float64 // relative tolerance of the spread against the true noise
	}{
		{"slow type, alpha 0.1", 9, 0.9, 0.1, 400, 0.35},
		{"fast type, alpha 0.05", 23, 2.3, 0.05, 800, 0.25},
		{"default alpha 0.3", 10, 1, 0.3, 300, 0.6},
		{"no noise", 12, 0, 0.3, 50, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for seed := uint64(1); seed <= 5; seed++ {
				r := rand.New(rand.NewPCG(seed, 42))
				var e Estimate
				for i := range tt.n {
					e = e.Update(tt.rate+tt.noise*r.NormFloat64(), tt.alpha, t0.Add(time.Duration(i)*time.Minute))
				}
				meanTol := 4*tt.noise*math.Sqrt(tt.alpha/(2-tt.alpha)) + 1e-9
				if math.Abs(e.Mean-tt.rate) > meanTol {
					t.Errorf("seed %d: mean %.3f, want %.3f ± %.3f", seed, e.Mean, tt.rate, meanTol)
				}
				if math.Abs(e.Spread()-tt.noise) > tt.spreadWithin*tt.noise+1e-9 {
					t.Errorf("seed %d: spread %.3f, want %.3f ± %.0f %%", seed, e.Spread(), tt.noise, 100*tt.spreadWithin)
				}
				if e.Samples != tt.n || !e.Updated.Equal(t0.Add(time.Duration(tt.n-1)*time.Minute)) {
					t.Errorf("seed %d: samples %d updated %s, want %d and the last sample's time", seed, e.Samples, e.Updated, tt.n)
				}
			}
		})
	}
}

// TestConvergesAfterAShift: a profile that was right and becomes wrong (the workload got
// slower) is followed: after a shift from 20 to 12/min the mean is near 12 within 20
// samples at alpha 0.3.
func TestConvergesAfterAShift(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	var e Estimate
	for range 50 {
		e = e.Update(20+r.NormFloat64(), 0.3, t0)
	}
	for range 20 {
		e = e.Update(12+r.NormFloat64(), 0.3, t0)
	}
	if math.Abs(e.Mean-12) > 1.5 {
		t.Fatalf("mean %.2f 20 samples after the shift to 12, want within 1.5", e.Mean)
	}
}

func TestUpdate(t *testing.T) {
	tests := []struct {
		name    string
		start   Estimate
		x       float64
		alpha   float64
		want    Estimate
		spreads float64
	}{
		{"first sample sets the mean, no spread", Estimate{}, 8, 0.3, Estimate{Mean: 8, Samples: 1, Updated: t0}, 0},
		{"first sample ignores alpha", Estimate{}, 8, 1, Estimate{Mean: 8, Samples: 1, Updated: t0}, 0},
		// d = 2: mean 10 + 0.5·2 = 11, variance 0.5·(0 + 0.5·4) = 1
		{"second sample, alpha 0.5", Estimate{Mean: 10, Samples: 1}, 12, 0.5, Estimate{Mean: 11, Variance: 1, Samples: 2, Updated: t0}, 1},
		// alpha 1 forgets everything: the newest sample is the mean and the spread is 0
		{"alpha 1 keeps only the newest", Estimate{Mean: 10, Variance: 4, Samples: 9}, 6, 1, Estimate{Mean: 6, Variance: 0, Samples: 10, Updated: t0}, 0},
		// d = -2: mean 10 − 0.2 = 9.8, variance 0.9·(1 + 0.1·4) = 1.26
		{"alpha 0.1", Estimate{Mean: 10, Variance: 1, Samples: 3}, 8, 0.1, Estimate{Mean: 9.8, Variance: 1.26, Samples: 4, Updated: t0}, math.Sqrt(1.26)},
		{"a sample at the mean shrinks the spread", Estimate{Mean: 10, Variance: 1, Samples: 3}, 10, 0.5, Estimate{Mean: 10, Variance: 0.5, Samples: 4, Updated: t0}, math.Sqrt(0.5)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.start.Update(tt.x, tt.alpha, t0)
			if math.Abs(got.Mean-tt.want.Mean) > 1e-12 || math.Abs(got.Variance-tt.want.Variance) > 1e-12 ||
				got.Samples != tt.want.Samples || !got.Updated.Equal(tt.want.Updated) {
				t.Fatalf("Update = %+v, want %+v", got, tt.want)
			}
			if math.Abs(got.Spread()-tt.spreads) > 1e-12 {
				t.Fatalf("Spread = %v, want %v", got.Spread(), tt.spreads)
			}
		})
	}
}

func TestChecks(t *testing.T) {
	for _, x := range []float64{0, -1, math.NaN(), math.Inf(1)} {
		if CheckSample(x) == nil {
			t.Errorf("CheckSample(%v) = nil, want an error", x)
		}
	}
	if err := CheckSample(0.5); err != nil {
		t.Errorf("CheckSample(0.5) = %v", err)
	}
	for _, a := range []float64{0, -0.1, 1.01, math.NaN()} {
		if CheckAlpha(a) == nil {
			t.Errorf("CheckAlpha(%v) = nil, want an error", a)
		}
	}
	for _, a := range []float64{0.01, 0.3, 1} {
		if err := CheckAlpha(a); err != nil {
			t.Errorf("CheckAlpha(%v) = %v", a, err)
		}
	}
}

func TestChoose(t *testing.T) {
	p := Policy{MinSamples: 5, SpreadFactor: 2}
	tests := []struct {
		name       string
		est        Estimate
		p          Policy
		rate       float64
		learned    bool
		sourceHas  []string
		sourceLack string
	}{
		{"no samples: configured", Estimate{}, p, 10, false, []string{"configured; 0 of 5 samples learned"}, "learned:"},
		{"too few samples: configured", Estimate{Mean: 8, Variance: 0.25, Samples: 4}, p, 10, false, []string{"configured; 4 of 5 samples learned (8 ± 0.5/min)"}, "learned:"},
		{"enough samples: mean − 2σ", Estimate{Mean: 8, Variance: 0.25, Samples: 5}, p, 7, true, []string{"learned: 8 ± 0.5/min over 5 samples, planned at mean − 2σ"}, "configured"},
		{"spread factor 0: the mean", Estimate{Mean: 8, Variance: 0.25, Samples: 9}, Policy{MinSamples: 5}, 8, true, []string{"planned at the mean"}, ""},
		{"a huge spread is floored at half the mean", Estimate{Mean: 8, Variance: 9, Samples: 9}, p, 4, true, []string{"half the mean"}, ""},
		{"min samples 0 counts as 1", Estimate{Mean: 8, Samples: 1}, Policy{}, 8, true, []string{"over 1 samples"}, ""},
		{"learning off: configured", Estimate{Mean: 8, Variance: 0.25, Samples: 9}, Policy{MinSamples: 5, Off: true}, 10, false, []string{"configured; learning off (9 samples learned: 8 ± 0.5/min)"}, "planned at"},
		{"a learned rate faster than configured is used too", Estimate{Mean: 30, Variance: 1, Samples: 6}, p, 28, true, []string{"learned: 30 ± 1/min"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Choose(10, tt.est, tt.p)
			if math.Abs(c.Rate-tt.rate) > 1e-12 || c.Learned != tt.learned {
				t.Fatalf("Choose = rate %v learned %v, want %v %v", c.Rate, c.Learned, tt.rate, tt.learned)
			}
			src := c.Source()
			for _, s := range tt.sourceHas {
				if !strings.Contains(src, s) {
					t.Errorf("Source() = %q, want it to say %q", src, s)
				}
			}
			if tt.sourceLack != "" && strings.Contains(src, tt.sourceLack) {
				t.Errorf("Source() = %q, must not say %q", src, tt.sourceLack)
			}
		})
	}
	u := Unreadable(10, p, errors.New("reading: throttled"))
	if u.Rate != 10 || u.Learned || !strings.Contains(u.Source(), "configured; learned rates unreadable: reading: throttled") {
		t.Fatalf("Unreadable = %+v, source %q", u, u.Source())
	}
}

func TestObserve(t *testing.T) {
	start := t0
	ok := Job{Outcome: "succeeded", Profile: "batch", Items: 200, TasksSucceeded: 200,
		Types: []string{"m3.medium", "m3.medium"}, Launched: []time.Time{start.Add(-time.Minute), start.Add(-time.Minute)},
		Start: start, End: start.Add(10 * time.Minute)}
	with := func(f func(*Job)) Job { j := ok; j.Types = append([]string(nil), ok.Types...); f(&j); return j }
	s, err := Observe(ok)
	// 200 items / (2 instances × 10 min) = 10 items per instance-minute
	if err != nil || s.Rate != 10 || s.InstanceType != "m3.medium" || s.Profile != "batch" || s.Instances != 2 || s.Window != 10*time.Minute {
		t.Fatalf("Observe = %+v, %v; want 10/min on m3.medium over 2 instances, 10 min", s, err)
	}
	if s, err := Observe(with(func(j *Job) {
		j.Revisions = 1
		j.Launched = nil
		j.TasksSucceeded = 1
		// terminated by the reaper after the end (EC2's whole second), or still running
		j.Stopped = []time.Time{start.Add(10 * time.Minute), {}}
	})); err != nil || s.Rate != 10 {
		t.Fatalf("Observe with one task report and no launch times = %+v, %v; want the same rate (items count, not tasks)", s, err)
	}
	bad := []struct {
		name, why string
		job       Job
	}{
		{"failed", "the job failed", with(func(j *Job) { j.Outcome = "failed" })},
		{"timed out", "the job timed-out", with(func(j *Job) { j.Outcome = "timed-out" })},
		{"no outcome", "has no outcome", with(func(j *Job) { j.Outcome = "" })},
		{"no profile", "no profile", with(func(j *Job) { j.Profile = "" })},
		{"no items", "no work items", with(func(j *Job) { j.Items = 0 })},
		{"no task", "no task reported", with(func(j *Job) { j.TasksSucceeded = 0 })},
		{"a failed task", "1 tasks failed", with(func(j *Job) { j.TasksFailed = 1 })},
		{"no instance", "no instance", with(func(j *Job) { j.Types = nil })},
		{"mixed types", "mixes instance types ([c5.large m3.medium])", with(func(j *Job) { j.Types[1] = "c5.large" })},
		{"untyped", "has no type", with(func(j *Job) { j.Types = []string{"", ""} })},
		{"replanned", "replanned (revision 2)", with(func(j *Job) { j.Revisions = 2 })},
		{"bootstrap failed", "1 instances were not bootstrapped", with(func(j *Job) { j.BootstrapFailed = 1 })},
		{"replacement", "launched after", with(func(j *Job) { j.Launched = []time.Time{start, start.Add(time.Second)} })},
		{"lost", "stopped before the job finished", with(func(j *Job) { j.Stopped = []time.Time{{}, start.Add(5 * time.Minute)} })},
		{"no start", "unknown", with(func(j *Job) { j.Start = time.Time{} })},
		{"end before start", "before its fleet was bootstrapped", with(func(j *Job) { j.End = start })},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Observe(tt.job)
			if !errors.Is(err, ErrNoSample) || !strings.Contains(err.Error(), tt.why) {
				t.Fatalf("Observe = %+v, %v; want ErrNoSample saying %q", s, err, tt.why)
			}
		})
	}
}
