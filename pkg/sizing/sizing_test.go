package sizing

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

// seed is the seed's benchmark: one m3.medium processes 100 files in 10 minutes.
var seed = Candidate{InstanceType: "m3.medium", ItemsPerMinute: 10, HourlyPrice: 0.067}

func TestPlan(t *testing.T) {
	tests := []struct {
		name      string
		req       Request
		wantType  string
		wantCount int
		wantSec   float64 // EstimatedSeconds, compared to 1e-6
		wantCost  float64 // compared to 1e-9
		wantMeets bool
		rationale string   // exact, when set
		contains  []string // substrings of the rationale
	}{
		{
			name:      "seed vector: 202 files, 100 per 10 min, 10 min deadline needs 3 not 2",
			req:       Request{Items: 202, Deadline: 10 * time.Minute, Candidates: []Candidate{seed}, Min: 1, Max: 10},
			wantType:  "m3.medium",
			wantCount: 3,
			wantSec:   404, // 202 / (3×10) min = 6.73 min
			wantCost:  3 * 0.067 * 404 / 3600,
			wantMeets: true,
			rationale: "202 items, 10/min per m3.medium, 10 min deadline → 3 instances, ≈6.7 min, $0.0226",
		},
		{
			name:      "exactly divisible does not round up: 200 items need 2",
			req:       Request{Items: 200, Deadline: 10 * time.Minute, Candidates: []Candidate{seed}, Min: 1, Max: 10},
			wantType:  "m3.medium",
			wantCount: 2,
			wantSec:   600,
			wantCost:  2 * 0.067 * 600 / 3600,
			wantMeets: true,
			rationale: "200 items, 10/min per m3.medium, 10 min deadline → 2 instances, ≈10.0 min, $0.0223",
		},
		{
			name:      "exactly divisible with fractional rate: 7 items at 0.7/min in 10 min need 1",
			req:       Request{Items: 7, Deadline: 10 * time.Minute, Candidates: []Candidate{{InstanceType: "t", ItemsPerMinute: 0.7}}, Max: 5},
			wantType:  "t",
			wantCount: 1,
			wantSec:   600,
			wantMeets: true,
		},
		{
			name:      "exactly divisible with 0.1/min: 3 items in 30 min need 1",
			req:       Request{Items: 3, Deadline: 30 * time.Minute, Candidates: []Candidate{{InstanceType: "t", ItemsPerMinute: 0.1}}, Max: 5},
			wantType:  "t",
			wantCount: 1,
			wantSec:   1800,
			wantMeets: true,
		},
		{
			name:      "exactly divisible with a 70 s deadline: 7 items at 3/min need 2",
			req:       Request{Items: 7, Deadline: 70 * time.Second, Candidates: []Candidate{{InstanceType: "t", ItemsPerMinute: 3}}, Max: 5},
			wantType:  "t",
			wantCount: 2,
			wantSec:   70,
			wantMeets: true,
		},
		{
			name: "boot time shrinks the usable window",
			req: Request{Items: 202, Deadline: 10 * time.Minute, Min: 1, Max: 10,
				Candidates: []Candidate{{InstanceType: "m3.medium", ItemsPerMinute: 10, BootSeconds: 60, HourlyPrice: 0.067}}},
			wantType:  "m3.medium",
			wantCount: 3, // 9 usable min × 10/min = 90 per instance
			wantSec:   464,
			wantCost:  3 * 0.067 * 464 / 3600,
			wantMeets: true,
			rationale: "202 items, 10/min per m3.medium, 60 s boot, 10 min deadline → 3 instances, ≈6.7 min + 60 s boot, $0.0259",
		},
		{
			name: "boot time pushes 180 items from 2 to 3 instances",
			req: Request{Items: 181, Deadline: 10 * time.Minute, Max: 10,
				Candidates: []Candidate{{InstanceType: "m3.medium", ItemsPerMinute: 10, BootSeconds: 60}}},
			wantType:  "m3.medium",
			wantCount: 3,
			wantSec:   60 + 181.0/30*60,
			wantMeets: true,
		},
		{
			name:      "raised to min",
			req:       Request{Items: 10, Deadline: 10 * time.Minute, Candidates: []Candidate{seed}, Min: 4, Max: 10},
			wantType:  "m3.medium",
			wantCount: 4,
			wantSec:   15,
			wantCost:  4 * 0.067 * 60 / 3600, // 60 s minimum each
			wantMeets: true,
			contains:  []string{"→ 4 instances", "(1 instance needed, raised to min 4)"},
		},
		{
			name:      "min 0 still plans one instance",
			req:       Request{Items: 1, Deadline: time.Minute, Candidates: []Candidate{seed}, Min: 0, Max: 3},
			wantType:  "m3.medium",
			wantCount: 1,
			wantSec:   6,
			wantCost:  0.067 * 60 / 3600,
			wantMeets: true,
			rationale: "1 item, 10/min per m3.medium, 1 min deadline → 1 instance, ≈6.0 s, $0.0011",
		},
		{
			name:      "capped at max misses the deadline",
			req:       Request{Items: 1000, Deadline: 10 * time.Minute, Candidates: []Candidate{seed}, Min: 1, Max: 5},
			wantType:  "m3.medium",
			wantCount: 5,
			wantSec:   1200, // 1000 / 50 per min
			wantCost:  5 * 0.067 * 1200 / 3600,
			wantMeets: false,
			rationale: "1000 items, 10/min per m3.medium, 10 min deadline: no candidate meets it within max 5; " +
				"10 instances needed; planning max 5 instances, ≈20.0 min, late by ≈10.0 min, $0.1117",
		},
		{
			name: "boot longer than the deadline cannot meet it",
			req: Request{Items: 5, Deadline: time.Minute, Max: 3,
				Candidates: []Candidate{{InstanceType: "slow-boot", ItemsPerMinute: 100, BootSeconds: 90, HourlyPrice: 1}}},
			wantType:  "slow-boot",
			wantCount: 3,
			wantSec:   91,
			wantCost:  3 * 1 * 91.0 / 3600,
			wantMeets: false,
			contains:  []string{"boot alone takes the deadline", "planning max 3 instances"},
		},
		{
			name: "boot equal to the deadline cannot meet it",
			req: Request{Items: 5, Deadline: time.Minute, Max: 3,
				Candidates: []Candidate{{InstanceType: "t", ItemsPerMinute: 1e6, BootSeconds: 60}}},
			wantType:  "t",
			wantCount: 3,
			wantSec:   60 + 5.0/3e6*60,
			wantMeets: false,
		},
		{
			name: "cheapest candidate wins over the first",
			req: Request{Items: 202, Deadline: 10 * time.Minute, Min: 1, Max: 10, Candidates: []Candidate{
				seed,
				{InstanceType: "c5.large", ItemsPerMinute: 30, HourlyPrice: 0.085},
			}},
			wantType:  "c5.large",
			wantCount: 1,
			wantSec:   404,
			wantCost:  0.085 * 404 / 3600,
			wantMeets: true,
			contains:  []string{"→ 1 instance,", "also considered m3.medium: 3 instances, ≈6.7 min, $0.0226"},
		},
		{
			name: "a cheaper candidate that misses the deadline loses",
			req: Request{Items: 202, Deadline: 10 * time.Minute, Min: 1, Max: 2, Candidates: []Candidate{
				{InstanceType: "cheap", ItemsPerMinute: 10, HourlyPrice: 0.001},
				{InstanceType: "dear", ItemsPerMinute: 11, HourlyPrice: 1},
			}},
			wantType:  "dear",
			wantCount: 2,
			wantSec:   202.0 / 22 * 60,
			wantCost:  2 * 1 * math.Ceil(202.0/22*60) / 3600,
			wantMeets: true,
			contains:  []string{"also considered cheap: 3 instances needed, over max"},
		},
		{
			name: "equal cost: fewer instances win",
			req: Request{Items: 400, Deadline: 10 * time.Minute, Max: 10, Candidates: []Candidate{
				{InstanceType: "small", ItemsPerMinute: 10, HourlyPrice: 0.1},
				{InstanceType: "big", ItemsPerMinute: 20, HourlyPrice: 0.2},
			}},
			wantType:  "big",
			wantCount: 2,
			wantSec:   600,
			wantCost:  2 * 0.2 * 600 / 3600,
			wantMeets: true,
		},
		{
			name: "equal cost and count: candidate order wins",
			req: Request{Items: 50, Deadline: 10 * time.Minute, Max: 10, Candidates: []Candidate{
				{InstanceType: "first", ItemsPerMinute: 10, HourlyPrice: 0.1},
				{InstanceType: "second", ItemsPerMinute: 10, HourlyPrice: 0.1},
			}},
			wantType:  "first",
			wantCount: 1,
			wantSec:   300,
			wantCost:  0.1 * 300 / 3600,
			wantMeets: true,
		},
		{
			name: "none meets: the soonest at max is planned",
			req: Request{Items: 1000, Deadline: 10 * time.Minute, Max: 2, Candidates: []Candidate{
				{InstanceType: "never", ItemsPerMinute: 1000, BootSeconds: 3600},
				{InstanceType: "slow", ItemsPerMinute: 10},
				{InstanceType: "faster", ItemsPerMinute: 20},
			}},
			wantType:  "faster",
			wantCount: 2,
			wantSec:   1500, // 1000 / 40 per min = 25 min
			wantMeets: false,
			contains: []string{"no candidate meets it within max 2", "planning max 2 instances, ≈25.0 min",
				"never: boot 3600 s leaves no time", "slow: 10 instances needed, over max"},
		},
		{
			name: "60 s minimum billing",
			req: Request{Items: 1, Deadline: 10 * time.Second, Max: 1,
				Candidates: []Candidate{{InstanceType: "t", ItemsPerMinute: 600, HourlyPrice: 3.6}}},
			wantType:  "t",
			wantCount: 1,
			wantSec:   0.1,
			wantCost:  0.06, // 60 s of $3.6/h
			wantMeets: true,
		},
		{
			name: "per-second billing rounds up to the next second",
			req: Request{Items: 61, Deadline: 2 * time.Minute, Max: 1,
				Candidates: []Candidate{{InstanceType: "t", ItemsPerMinute: 59, HourlyPrice: 3.6}}},
			wantType:  "t",
			wantCount: 1,
			wantSec:   61.0 / 59 * 60, // 62.03 s, billed 63 s
			wantCost:  0.063,
			wantMeets: true,
		},
		{
			name: "time-scaled demo profile: 202 items in 10 s, 600/min, 1 s boot",
			req: Request{Items: 202, Deadline: 10 * time.Second, Min: 1, Max: 10, Candidates: []Candidate{
				{InstanceType: "m3.medium", ItemsPerMinute: 600, BootSeconds: 1, HourlyPrice: 0.067},
				{InstanceType: "c5.large", ItemsPerMinute: 1200, BootSeconds: 1, HourlyPrice: 0.17},
			}},
			wantType:  "m3.medium",
			wantCount: 3,
			wantSec:   1 + 202.0/1800*60,
			wantCost:  3 * 0.067 * 60 / 3600,
			wantMeets: true,
			rationale: "202 items, 600/min per m3.medium, 1 s boot, 10 s deadline → 3 instances, ≈6.7 s + 1 s boot, $0.0034; " +
				"also considered c5.large: 2 instances, ≈5.0 s, $0.0057",
		},
		{
			name: "rate sources are named per candidate",
			req: Request{Items: 202, Deadline: 10 * time.Minute, Min: 1, Max: 10, Candidates: []Candidate{
				{InstanceType: "m3.medium", ItemsPerMinute: 5, HourlyPrice: 0.067, RateSource: "learned: 6 ± 0.5/min over 9 samples"},
				{InstanceType: "c5.large", ItemsPerMinute: 20, HourlyPrice: 0.17, RateSource: "configured"},
			}},
			wantType:  "c5.large",
			wantCount: 2,
			wantSec:   202.0 / 40 * 60,
			wantCost:  2 * 0.17 * 303 / 3600,
			wantMeets: true,
			rationale: "202 items, 20/min per c5.large (configured), 10 min deadline → 2 instances, ≈5.0 min, $0.0286; " +
				"also considered m3.medium at 5/min (learned: 6 ± 0.5/min over 9 samples): 5 instances, ≈8.1 min, $0.0451",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Plan(tt.req)
			if err != nil {
				t.Fatalf("Plan: %v", err)
			}
			if got.InstanceType != tt.wantType || got.Count != tt.wantCount || got.MeetsDeadline != tt.wantMeets {
				t.Errorf("got %s × %d meets=%v, want %s × %d meets=%v (%s)",
					got.InstanceType, got.Count, got.MeetsDeadline, tt.wantType, tt.wantCount, tt.wantMeets, got.Rationale)
			}
			if math.Abs(got.EstimatedSeconds-tt.wantSec) > 1e-6 {
				t.Errorf("EstimatedSeconds = %v, want %v", got.EstimatedSeconds, tt.wantSec)
			}
			if math.Abs(got.Cost-tt.wantCost) > 1e-9 {
				t.Errorf("Cost = %v, want %v", got.Cost, tt.wantCost)
			}
			if tt.rationale != "" && got.Rationale != tt.rationale {
				t.Errorf("Rationale =\n%q\nwant\n%q", got.Rationale, tt.rationale)
			}
			for _, s := range tt.contains {
				if !strings.Contains(got.Rationale, s) {
					t.Errorf("Rationale %q lacks %q", got.Rationale, s)
				}
			}
		})
	}
}

// TestPlanTwoInstancesWouldBeLate spells out why the seed vector is 3: with 2 instances the
// last file lands at 10.1 minutes.
func TestPlanTwoInstancesWouldBeLate(t *testing.T) {
	if got := estimate(seed, 202, 2); got != 606 {
		t.Fatalf("estimate with 2 instances = %v s, want 606 s (10.1 min)", got)
	}
	res, err := Plan(Request{Items: 202, Deadline: 10 * time.Minute, Candidates: []Candidate{seed}, Min: 1, Max: 2})
	if err != nil {
		t.Fatal(err)
	}
	if res.MeetsDeadline || res.Count != 2 {
		t.Fatalf("with max 2: got %d meets=%v, want 2 instances that miss the deadline", res.Count, res.MeetsDeadline)
	}
	if !strings.Contains(res.Rationale, "≈10.1 min") || !strings.Contains(res.Rationale, "late by ≈6.0 s") {
		t.Errorf("Rationale %q should show 10.1 min, late by 6.0 s", res.Rationale)
	}
}

func TestPlanInvalid(t *testing.T) {
	valid := func() Request {
		return Request{Items: 1, Deadline: time.Minute, Candidates: []Candidate{seed}, Min: 1, Max: 1}
	}
	tests := []struct {
		name   string
		mutate func(*Request)
		want   []string
	}{
		{"items zero", func(r *Request) { r.Items = 0 }, []string{"items: must be ≥ 1, got 0"}},
		{"items negative", func(r *Request) { r.Items = -5 }, []string{"items: must be ≥ 1, got -5"}},
		{"deadline zero", func(r *Request) { r.Deadline = 0 }, []string{"deadline: must be > 0, got 0s"}},
		{"deadline negative", func(r *Request) { r.Deadline = -time.Second }, []string{"deadline: must be > 0, got -1s"}},
		{"no candidates", func(r *Request) { r.Candidates = nil }, []string{"candidates: must not be empty"}},
		{"rate zero", func(r *Request) { r.Candidates[0].ItemsPerMinute = 0 }, []string{"candidates[0].items_per_minute: must be > 0, got 0"}},
		{"rate negative", func(r *Request) { r.Candidates[0].ItemsPerMinute = -1 }, []string{"candidates[0].items_per_minute: must be > 0"}},
		{"rate NaN", func(r *Request) { r.Candidates[0].ItemsPerMinute = math.NaN() }, []string{"candidates[0].items_per_minute: must be > 0, got NaN"}},
		{"rate infinite", func(r *Request) { r.Candidates[0].ItemsPerMinute = math.Inf(1) }, []string{"candidates[0].items_per_minute: must be within"}},
		{"rate too small", func(r *Request) { r.Candidates[0].ItemsPerMinute = 1e-9 }, []string{"candidates[0].items_per_minute: must be within"}},
		{"boot negative", func(r *Request) { r.Candidates[0].BootSeconds = -1 }, []string{"candidates[0].boot_seconds: must be within [0, 1e+09], got -1"}},
		{"boot NaN", func(r *Request) { r.Candidates[0].BootSeconds = math.NaN() }, []string{"candidates[0].boot_seconds"}},
		{"price negative", func(r *Request) { r.Candidates[0].HourlyPrice = -0.01 }, []string{"candidates[0].hourly_price: must be within [0, 1e+06], got -0.01"}},
		{"price infinite", func(r *Request) { r.Candidates[0].HourlyPrice = math.Inf(1) }, []string{"candidates[0].hourly_price"}},
		{"empty instance type", func(r *Request) { r.Candidates[0].InstanceType = "" }, []string{"candidates[0].instance_type: must not be empty"}},
		{"min over max", func(r *Request) { r.Min, r.Max = 3, 2 }, []string{"min: must be ≤ max (2), got 3"}},
		{"max zero", func(r *Request) { r.Min, r.Max = 0, 0 }, []string{"max: must be ≥ 1, got 0"}},
		{"min negative", func(r *Request) { r.Min = -1 }, []string{"min: must be ≥ 0, got -1"}},
		{"every problem at once", func(r *Request) {
			r.Items, r.Deadline = 0, 0
			r.Candidates = append(r.Candidates, Candidate{InstanceType: "x", ItemsPerMinute: 0, BootSeconds: -1})
		}, []string{"items:", "deadline:", "candidates[1].items_per_minute:", "candidates[1].boot_seconds:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := valid()
			tt.mutate(&req)
			_, err := Plan(req)
			if err == nil {
				t.Fatal("Plan succeeded, want an error")
			}
			if !errors.Is(err, ErrInvalidRequest) {
				t.Errorf("error %v does not wrap ErrInvalidRequest", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// FuzzPlan checks Plan's invariants on arbitrary numbers.
func FuzzPlan(f *testing.F) {
	f.Add(202, int64(10*time.Minute), 10.0, 0.0, 0.067, 30.0, 60.0, 0.085, 1, 10)
	f.Add(200, int64(10*time.Minute), 10.0, 0.0, 0.067, 10.0, 0.0, 0.067, 0, 10)
	f.Add(1, int64(time.Nanosecond), 1e12, 0.0, 0.0, 1e-6, 1e9, 1e6, 1, 1000)
	f.Add(1<<62, int64(time.Hour), 1e-6, 5.0, 1e6, 1e12, 0.0, 0.0, 7, 1<<40)
	f.Add(7, int64(70*time.Second), 3.0, 0.0, 1.0, 0.7, 1.0, 1.0, 2, 2)
	f.Fuzz(func(t *testing.T, items int, deadline int64, rate1, boot1, price1, rate2, boot2, price2 float64, lo, hi int) {
		req := Request{
			Items:    items,
			Deadline: time.Duration(deadline),
			Min:      lo,
			Max:      hi,
			Candidates: []Candidate{
				{InstanceType: "a", ItemsPerMinute: rate1, BootSeconds: boot1, HourlyPrice: price1},
				{InstanceType: "b", ItemsPerMinute: rate2, BootSeconds: boot2, HourlyPrice: price2},
			},
		}
		res, err := Plan(req)
		if err != nil {
			if !errors.Is(err, ErrInvalidRequest) {
				t.Fatalf("error %v does not wrap ErrInvalidRequest", err)
			}
			return
		}
		if res.Count < max(lo, 1) || res.Count > hi {
			t.Fatalf("count %d outside [%d, %d]", res.Count, max(lo, 1), hi)
		}
		dl := req.Deadline.Seconds()
		if res.MeetsDeadline && res.EstimatedSeconds > dl {
			t.Fatalf("meets the deadline but estimated %v s > %v s", res.EstimatedSeconds, dl)
		}
		if !res.MeetsDeadline && res.Count != hi {
			t.Fatalf("misses the deadline with %d instances, want max %d", res.Count, hi)
		}
		if math.IsNaN(res.EstimatedSeconds) || math.IsInf(res.EstimatedSeconds, 0) || res.EstimatedSeconds < 0 {
			t.Fatalf("EstimatedSeconds = %v", res.EstimatedSeconds)
		}
		if math.IsNaN(res.Cost) || math.IsInf(res.Cost, 0) || res.Cost < 0 {
			t.Fatalf("Cost = %v", res.Cost)
		}
		var c Candidate
		for _, cand := range req.Candidates {
			if cand.InstanceType == res.InstanceType {
				c = cand
			}
		}
		if c.InstanceType == "" {
			t.Fatalf("instance type %q is not a candidate", res.InstanceType)
		}
		if res.Rationale == "" {
			t.Fatal("empty rationale")
		}
		// Minimal: one instance fewer would be late (unless the count was raised to min).
		if res.MeetsDeadline && res.Count > max(lo, 1) {
			if est := estimate(c, items, res.Count-1); est <= dl*(1-1e-6) {
				t.Fatalf("%d instances finish at %v s ≤ deadline %v s, yet %d planned", res.Count-1, est, dl, res.Count)
			}
		}
		// Honest: when nothing meets the deadline, no candidate meets it at max.
		if !res.MeetsDeadline {
			for _, cand := range req.Candidates {
				if est := estimate(cand, items, hi); est <= dl*(1-1e-6) && cand.BootSeconds < dl {
					t.Fatalf("%s at max %d finishes at %v s within %v s, yet no candidate meets the deadline", cand.InstanceType, hi, est, dl)
				}
			}
		}
	})
}
