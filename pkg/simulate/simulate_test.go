package simulate

import (
	"bytes"
	"strings"
	"testing"

	"github.com/sortie-fleet/sortie/pkg/learn"
)

func table(t *testing.T, tr Trace) string {
	t.Helper()
	scores, err := Run(tr, DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := WriteTable(&b, tr, DefaultOptions, scores); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// The table is a function of the seed: generating twice, or writing the trace and reading
// it back, prints the same table; another seed prints another.
func TestTableReproducibleFromSeed(t *testing.T) {
	a := table(t, Generate(1000, 7))
	if b := table(t, Generate(1000, 7)); a != b {
		t.Fatalf("same seed, different tables:\n%s\n%s", a, b)
	}
	var buf bytes.Buffer
	if err := Generate(1000, 7).Write(&buf); err != nil {
		t.Fatal(err)
	}
	read, err := Read(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if b := table(t, read); a != b {
		t.Fatalf("trace read back prints another table:\n%s\n%s", a, b)
	}
	if c := table(t, Generate(1000, 8)); a == c {
		t.Fatalf("seeds 7 and 8 print the same table:\n%s", a)
	}
	for _, p := range []string{"sortie (learned rates)", "keda", "aws backlog per instance", "oracle"} {
		if !strings.Contains(a, p) {
			t.Errorf("table lacks %q:\n%s", p, a)
		}
	}
}

// The target of the sizing with learned rates (pkg/learn, the ops config's defaults) on generated traces: ≥ 99 % of deadlines met with
// ≤ 10 % instance-minutes over the oracle; the baselines miss far more deadlines.
func TestLearnedSizingMeetsTarget(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		scores, err := Run(Generate(1000, seed), DefaultOptions)
		if err != nil {
			t.Fatal(err)
		}
		s := scores[0]
		if s.Policy != "sortie (learned rates)" || s.Jobs != 900 {
			t.Fatalf("seed %d: first score %+v", seed, s)
		}
		if s.MetShare() < 0.99 || s.OverOracle > 0.10 {
			t.Errorf("seed %d: sizing with learned rates met %.3f, %.3f over the oracle", seed, s.MetShare(), s.OverOracle)
		}
		for _, b := range scores[2:4] {
			if b.MetShare() > 0.9 {
				t.Errorf("seed %d: baseline %s met %.3f of deadlines", seed, b.Policy, b.MetShare())
			}
		}
	}
}

func TestRunRejectsBadInput(t *testing.T) {
	good := Generate(10, 1)
	tests := []struct {
		name string
		edit func(*Trace)
		opts Options
		want string
	}{
		{"no jobs", func(t *Trace) { t.Jobs = nil }, Options{Alpha: 0.2}, "jobs: none"},
		{"speeds", func(t *Trace) { t.Jobs[3].Speed = t.Jobs[3].Speed[:1] }, Options{Alpha: 0.2}, "1 speeds for 2 types"},
		{"zero items", func(t *Trace) { t.Jobs[0].Items = 0 }, Options{Alpha: 0.2}, "items ≥ 1"},
		{"draw", func(t *Trace) { t.Jobs[0].InterruptDraw = 0 }, Options{Alpha: 0.2}, "interrupt_draw"},
		{"bounds", func(t *Trace) { t.MinInstances = 5; t.MaxInstances = 2 }, Options{Alpha: 0.2}, "0 ≤ min ≤ max"},
		{"calibration", func(*Trace) {}, Options{CalibrationJobs: 10, Alpha: 0.2}, "calibration jobs"},
		{"alpha", func(*Trace) {}, Options{Alpha: 1.5}, "alpha"},
		{"spread factor", func(*Trace) {}, Options{Alpha: 0.2, Learning: learn.Policy{SpreadFactor: -1}}, "spread factor ≥ 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := Generate(10, 1)
			tt.edit(&tr)
			_, err := Run(tr, tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Run = %v, want an error containing %q", err, tt.want)
			}
		})
	}
	if _, err := Run(good, Options{CalibrationJobs: 2, Alpha: 0.2}); err != nil {
		t.Fatalf("good trace: %v", err)
	}
	if _, err := Read(strings.NewReader(`{"seed":1,"surprise":2}`)); err == nil || !strings.Contains(err.Error(), "surprise") {
		t.Fatalf("Read with an unknown field = %v", err)
	}
}

// A fleet that loses an instance finishes later; a lone instance's replacement boots first.
func TestRunInterruption(t *testing.T) {
	tr := Trace{Types: []Type{{InstanceType: "x", ConfiguredItemsPerMinute: 60, TrueItemsPerMinute: 60, BootSeconds: 10, HourlyPrice: 3.6}},
		MinInstances: 1, MaxInstances: 10, SpotInterruptionsPerHour: 3600}
	j := Job{Items: 100, DeadlineSeconds: 1000, Speed: []float64{1}, InterruptDraw: 1}
	// draw 1: the interruption comes at once, and the other instance does all 100 items.
	if got := run(tr, j, choice{0, 2}); got.finish != 110 || got.instanceSeconds != 120 {
		t.Fatalf("2 instances, one lost at once: %+v", got)
	}
	j.InterruptDraw = 0.5 // -ln(0.5)/(3600 × 1) h ≈ 0.69 s of work
	got := run(tr, j, choice{0, 1})
	if want := 10 + 0.693 + 10 + (100 - 0.693); got.finish < want-0.01 || got.finish > want+0.01 {
		t.Fatalf("1 instance replaced: finish %v, want ≈%v", got.finish, want)
	}
	tr.SpotInterruptionsPerHour = 0
	if got := run(tr, j, choice{0, 4}); got.finish != 35 || got.instanceSeconds != 140 || got.cost != 4*60*0.001 {
		t.Fatalf("4 instances, no interruption: %+v", got)
	}
}
