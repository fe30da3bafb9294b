// Package simulate replays a synthetic trace of jobs against Sortie's sizing (pkg/sizing)
// and against baseline autoscaling policies, and scores each against an oracle that knows
// the true throughputs.
package simulate

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
)

// Trace is a synthetic workload: the instance types a template offers and the jobs that
// arrive. Every random draw is in the trace, so a replay is a pure function of it.
type Trace struct {
	Seed uint64 `json:"seed"`
	// Types are the template's instance types, in the template's order.
	Types []Type `json:"types"`
	// MinInstances and MaxInstances are the template's bounds on a fleet.
	MinInstances int `json:"min_instances"`
	MaxInstances int `json:"max_instances"`
	// SpotInterruptionsPerHour is each instance's interruption rate (per instance-hour).
	SpotInterruptionsPerHour float64 `json:"spot_interruptions_per_hour"`
	Jobs                     []Job   `json:"jobs"`
}

// Type is one instance type: what the profile's YAML says and what is true.
type Type struct {
	InstanceType string `json:"instance_type"`
	// ConfiguredItemsPerMinute is the capacity profile's value (a benchmark, possibly off).
	ConfiguredItemsPerMinute float64 `json:"configured_items_per_minute"`
	// TrueItemsPerMinute is the median real throughput of one instance.
	TrueItemsPerMinute float64 `json:"true_items_per_minute"`
	// Noise is the standard deviation of the log of a job's throughput around the median.
	Noise       float64 `json:"noise"`
	BootSeconds float64 `json:"boot_seconds"`
	HourlyPrice float64 `json:"hourly_price"`
}

// Job is one submitted job.
type Job struct {
	ID             string  `json:"id"`
	ArrivalSeconds float64 `json:"arrival_seconds"`
	// WaitSeconds is how long the job sat in the planner's queue before it was planned.
	WaitSeconds     float64 `json:"wait_seconds"`
	Items           int     `json:"items"`
	DeadlineSeconds float64 `json:"deadline_seconds"`
	// Speed is this job's throughput factor per instance type (same order as Trace.Types):
	// an instance of type i does TrueItemsPerMinute × Speed[i] items a minute on this job.
	Speed []float64 `json:"speed"`
	// InterruptDraw is a uniform (0, 1] draw: a fleet of n spot instances loses its first
	// instance after -ln(draw) / (rate × n) hours of work.
	InterruptDraw float64 `json:"interrupt_draw"`
}

// Generate returns a trace of n jobs drawn from seed: two instance types whose profile
// values are off by 10–20 %, throughput noise of 8–10 % per job, 5 spot interruptions per
// 100 instance-hours, jobs of 50–5,000 items arriving about once a minute with 10–60
// minute deadlines, after up to a few minutes in the queue.
func Generate(n int, seed uint64) Trace {
	r := rand.New(rand.NewPCG(seed, seed^0x5eed))
	t := Trace{
		Seed: seed,
		Types: []Type{
			{InstanceType: "m3.medium", ConfiguredItemsPerMinute: 10, TrueItemsPerMinute: 9, Noise: 0.08, BootSeconds: 60, HourlyPrice: 0.067},
			{InstanceType: "c5.large", ConfiguredItemsPerMinute: 20, TrueItemsPerMinute: 23, Noise: 0.10, BootSeconds: 45, HourlyPrice: 0.085},
		},
		MinInstances:             1,
		MaxInstances:             100,
		SpotInterruptionsPerHour: 0.05,
	}
	deadlines := []float64{10, 15, 20, 30, 45, 60}
	at := 0.0
	for i := range n {
		at += r.ExpFloat64() * 60
		d := deadlines[r.IntN(len(deadlines))] * 60
		wait := math.Min(r.ExpFloat64()*60, 0.3*d)
		items := int(math.Round(50 * math.Pow(100, r.Float64()))) // log-uniform 50..5000
		speed := make([]float64, len(t.Types))
		for k, ty := range t.Types {
			speed[k] = math.Exp(ty.Noise * r.NormFloat64())
		}
		t.Jobs = append(t.Jobs, Job{
			ID:              fmt.Sprintf("job-%04d", i+1),
			ArrivalSeconds:  round3(at),
			WaitSeconds:     round3(wait),
			Items:           items,
			DeadlineSeconds: d,
			Speed:           speed,
			InterruptDraw:   1 - r.Float64(), // (0, 1]
		})
	}
	return t
}

func round3(f float64) float64 { return math.Round(f*1000) / 1000 }

// Write encodes t as indented JSON.
func (t Trace) Write(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", " ")
	return enc.Encode(t)
}

// Read decodes and validates a trace; unknown fields are errors.
func Read(r io.Reader) (Trace, error) {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	var t Trace
	if err := dec.Decode(&t); err != nil {
		return Trace{}, fmt.Errorf("decoding trace: %w", err)
	}
	if err := t.Validate(); err != nil {
		return Trace{}, err
	}
	return t, nil
}

// Validate reports every problem of the trace at once.
func (t Trace) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if len(t.Types) == 0 {
		bad("types: none")
	}
	for i, ty := range t.Types {
		if ty.InstanceType == "" {
			bad("types[%d]: no instance_type", i)
		}
		if !(ty.ConfiguredItemsPerMinute > 0) || !(ty.TrueItemsPerMinute > 0) {
			bad("types[%d]: items per minute must be > 0", i)
		}
		if !(ty.Noise >= 0) || !(ty.BootSeconds >= 0) || !(ty.HourlyPrice >= 0) {
			bad("types[%d]: noise, boot_seconds and hourly_price must be ≥ 0", i)
		}
	}
	if t.MinInstances < 0 || t.MaxInstances < 1 || t.MinInstances > t.MaxInstances {
		bad("instances: need 0 ≤ min ≤ max, max ≥ 1, got %d..%d", t.MinInstances, t.MaxInstances)
	}
	if !(t.SpotInterruptionsPerHour >= 0) {
		bad("spot_interruptions_per_hour must be ≥ 0")
	}
	if len(t.Jobs) == 0 {
		bad("jobs: none")
	}
	for i, j := range t.Jobs {
		if j.Items < 1 || !(j.DeadlineSeconds > 0) || !(j.WaitSeconds >= 0) {
			bad("jobs[%d] (%s): need items ≥ 1, deadline_seconds > 0, wait_seconds ≥ 0", i, j.ID)
		}
		if len(j.Speed) != len(t.Types) {
			bad("jobs[%d] (%s): %d speeds for %d types", i, j.ID, len(j.Speed), len(t.Types))
		}
		for _, s := range j.Speed {
			if !(s > 0) || math.IsInf(s, 0) {
				bad("jobs[%d] (%s): speeds must be > 0", i, j.ID)
				break
			}
		}
		if !(j.InterruptDraw > 0 && j.InterruptDraw <= 1) {
			bad("jobs[%d] (%s): interrupt_draw must be in (0, 1]", i, j.ID)
		}
	}
	return errors.Join(errs...)
}
