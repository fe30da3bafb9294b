package monitor

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/recipe"
)

func running() recipe.Status     { return recipe.Status{State: recipe.StateRunning, PID: 42} }
func exited(c int) recipe.Status { return recipe.Status{State: recipe.StateExited, ExitCode: c} }

func steps(ss ...recipe.Status) []stepCheck {
	out := make([]stepCheck, len(ss))
	for i, s := range ss {
		out[i] = stepCheck{Step: fmt.Sprintf("s%d", i), Status: s, Tail: []string{fmt.Sprintf("tail of s%d", i)}}
	}
	return out
}

func TestDecide(t *testing.T) {
	t.Parallel()
	unreachable := errors.New("connection refused")
	deadline := time.Date(2025, 3, 14, 9, 36, 53, 0, time.UTC)
	for _, tc := range []struct {
		name         string
		checks       []instanceCheck
		misses       map[string]int
		pastDeadline bool
		want         verdict
		wantMisses   map[string]int
	}{
		{
			name:   "all exited 0",
			checks: []instanceCheck{{ID: "i-1", Steps: steps(exited(0), exited(0))}, {ID: "i-2", Steps: steps(exited(0))}},
			want:   verdict{Done: true, Outcome: events.OutcomeSucceeded, Reason: "every workload exited 0 on 2 instances"},
		},
		{
			name:   "still running",
			checks: []instanceCheck{{ID: "i-1", Steps: steps(exited(0), running())}, {ID: "i-2", Steps: steps(exited(0))}},
			want:   verdict{Alive: 1},
		},
		{
			name:   "starting counts as alive",
			checks: []instanceCheck{{ID: "i-1", Steps: steps(recipe.Status{State: recipe.StateStarting})}},
			want:   verdict{Alive: 1},
		},
		{
			name: "first failure in instance and step order wins",
			checks: []instanceCheck{
				{ID: "i-1", Steps: steps(exited(0), running())},
				{ID: "i-2", Steps: steps(exited(0), exited(3))},
				{ID: "i-3", Steps: steps(exited(9))},
			},
			want: verdict{Done: true, Outcome: events.OutcomeFailed, Reason: "workload s1 on i-2 exited 3",
				FailingInstance: "i-2", LogTail: []string{"tail of s1"}, Alive: 1},
		},
		{
			name:   "dead",
			checks: []instanceCheck{{ID: "i-1", Steps: steps(recipe.Status{State: recipe.StateDead})}},
			want: verdict{Done: true, Outcome: events.OutcomeFailed, Reason: "workload s0 on i-1 died without recording an exit code",
				FailingInstance: "i-1", LogTail: []string{"tail of s0"}},
		},
		{
			name:   "never started",
			checks: []instanceCheck{{ID: "i-1", Steps: steps(recipe.Status{State: recipe.StateNotStarted})}},
			want: verdict{Done: true, Outcome: events.OutcomeFailed, Reason: "workload s0 on i-1 never started",
				FailingInstance: "i-1", LogTail: []string{"tail of s0"}},
		},
		{
			name:       "a miss is counted",
			checks:     []instanceCheck{{ID: "i-1", Err: unreachable}, {ID: "i-2", Steps: steps(running())}},
			misses:     map[string]int{"i-1": 1, "i-2": 3},
			want:       verdict{Alive: 1},
			wantMisses: map[string]int{"i-1": 2},
		},
		{
			name:       "misses up to the limit fail the job",
			checks:     []instanceCheck{{ID: "i-1", Steps: steps(exited(0))}, {ID: "i-2", Err: unreachable}},
			misses:     map[string]int{"i-2": 2},
			want:       verdict{Done: true, Outcome: events.OutcomeFailed, FailingInstance: "i-2", Reason: "instance i-2 unreachable over SSH at 3 checks in a row: connection refused"},
			wantMisses: map[string]int{"i-2": 3},
		},
		{
			name:       "a failed workload beats a miss",
			checks:     []instanceCheck{{ID: "i-1", Err: unreachable}, {ID: "i-2", Steps: steps(exited(1))}},
			misses:     map[string]int{"i-1": 5},
			want:       verdict{Done: true, Outcome: events.OutcomeFailed, Reason: "workload s0 on i-2 exited 1", FailingInstance: "i-2", LogTail: []string{"tail of s0"}},
			wantMisses: map[string]int{"i-1": 6},
		},
		{
			name:         "past the deadline",
			checks:       []instanceCheck{{ID: "i-1", Steps: steps(exited(0))}, {ID: "i-2", Steps: steps(running(), running())}, {ID: "i-3", Err: unreachable}},
			pastDeadline: true,
			want: verdict{Done: true, Outcome: events.OutcomeTimedOut, FailingInstance: "i-2", LogTail: []string{"tail of s0"}, Alive: 1,
				Reason: "deadline 2025-03-14T09:36:53Z plus grace 1m0s passed with workloads still running on i-2, i-3 (unreachable)"},
			wantMisses: map[string]int{"i-3": 1},
		},
		{
			name:         "done just past the deadline is a success",
			checks:       []instanceCheck{{ID: "i-1", Steps: steps(exited(0))}},
			pastDeadline: true,
			want:         verdict{Done: true, Outcome: events.OutcomeSucceeded, Reason: "every workload exited 0 on 1 instances"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, misses := decide(tc.checks, checkState{Misses: tc.misses, MaxMisses: 3, Deadline: deadline, Grace: time.Minute, PastDeadline: tc.pastDeadline})
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("verdict\n got %+v\nwant %+v", got, tc.want)
			}
			if tc.wantMisses == nil {
				tc.wantMisses = map[string]int{}
			}
			if fmt.Sprint(misses) != fmt.Sprint(tc.wantMisses) {
				t.Errorf("misses %v, want %v", misses, tc.wantMisses)
			}
		})
	}
}

func bootstrapped(instances ...events.InstanceResult) events.FleetBootstrapped {
	return events.FleetBootstrapped{
		Header:     events.NewHeader("job-1", "corr-1", time.Date(2025, 3, 14, 9, 30, 0, 0, time.UTC)),
		FleetID:    "job-1",
		Template:   "test",
		Recipe:     "lines",
		DeadlineAt: time.Date(2025, 3, 14, 9, 40, 0, 0, time.UTC),
		HostKey:    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEEdGT8dWijq9R+oXz/ZONo+ZOvi9i4M7cLjOWdpu+tL",
		KeyName:    "sortie-test",
		Instances:  instances,
	}
}

func okInstance(id, endpoint string) events.InstanceResult {
	return events.InstanceResult{ID: id, SSHEndpoint: endpoint, OK: true, Steps: []events.StepResult{{Name: "work", ExitCode: 0}}}
}

func TestBootstrapVerdict(t *testing.T) {
	t.Parallel()
	e := bootstrapped(
		okInstance("i-0000000000000000a", "127.0.0.1:2201"),
		events.InstanceResult{ID: "i-0000000000000000b", SSHEndpoint: "127.0.0.1:2202", Error: "step tools exited 127", Steps: []events.StepResult{
			{Name: "config", ExitCode: 0, OutputTail: []string{"fine"}},
			{Name: "tools", ExitCode: 127, OutputTail: []string{"sh: 1: convert: not found"}},
		}},
		events.InstanceResult{ID: "i-0000000000000000c", SSHEndpoint: "127.0.0.1:2203", Error: "unreachable: connection refused"},
	)
	v, failed := bootstrapVerdict(e)
	if !failed {
		t.Fatal("no failure found")
	}
	want := verdict{Done: true, Outcome: events.OutcomeFailed, FailingInstance: "i-0000000000000000b",
		Reason:  "bootstrap failed on i-0000000000000000b: step tools exited 127 (2 of 3 instances failed: i-0000000000000000b, i-0000000000000000c)",
		LogTail: []string{"sh: 1: convert: not found"}}
	if fmt.Sprint(v) != fmt.Sprint(want) {
		t.Errorf("verdict\n got %+v\nwant %+v", v, want)
	}
	wl := []recipe.Workload{{Step: "w", Log: "logs/w.log", Stderr: ".sortie/w/stderr", StateDir: ".sortie/w"}}
	jf := jobFinished(e, v, wl, time.Now())
	if err := jf.Validate(); err != nil {
		t.Fatalf("JobFinished invalid: %v", err)
	}
	if len(jf.Instances) != 3 || jf.HostKey != e.HostKey || jf.KeyName != e.KeyName || jf.Template != "test" {
		t.Errorf("JobFinished must list every instance with how to reach them: %+v", jf)
	}
	if !slices.Equal(jf.Logs, []string{"logs/w.log"}) {
		t.Errorf("JobFinished logs %q, want the workload's log outside .sortie", jf.Logs)
	}

	if _, failed := bootstrapVerdict(bootstrapped(okInstance("i-0000000000000000a", "127.0.0.1:2201"))); failed {
		t.Error("a fleet bootstrapped everywhere failed")
	}
}

func TestEncodeFinishedFitsTheLimit(t *testing.T) {
	t.Parallel()
	var instances []events.InstanceResult
	for i := range events.MaxInstances {
		instances = append(instances, okInstance(fmt.Sprintf("i-%017x", i), fmt.Sprintf("10.0.%d.%d:22", i/250, i%250)))
	}
	tail := make([]string, events.MaxTailLines)
	for i := range tail {
		tail[i] = fmt.Sprintf("%04d ", i) + strings.Repeat("x", events.MaxTextBytes)
	}
	v := verdict{Done: true, Outcome: events.OutcomeFailed, Reason: "workload w on i-00000000000000000 exited 1",
		FailingInstance: "i-00000000000000000", LogTail: tail}
	body, err := encodeFinished(jobFinished(bootstrapped(instances...), v, nil, time.Now()))
	if err != nil {
		t.Fatalf("encodeFinished: %v", err)
	}
	jf, err := events.DecodeJobFinished(body)
	if err != nil {
		t.Fatal(err)
	}
	if len(body) > events.MaxBodyBytes || len(jf.Instances) != events.MaxInstances || len(jf.LogTail) == 0 {
		t.Errorf("body %d bytes, %d instances, %d tail lines", len(body), len(jf.Instances), len(jf.LogTail))
	}
	if last := jf.LogTail[len(jf.LogTail)-1]; !strings.HasPrefix(last, "0049 ") {
		t.Errorf("the newest line must survive shortening, got %q", last[:10])
	}
}

func TestSanitizeTail(t *testing.T) {
	t.Parallel()
	var lines []string
	for i := range 60 {
		lines = append(lines, fmt.Sprint(i))
	}
	lines[59] = "bad\xff\x00utf8" + strings.Repeat("é", events.MaxTextBytes)
	got := sanitizeTail(lines)
	if len(got) != events.MaxTailLines || got[0] != "10" {
		t.Fatalf("kept %d lines starting %q, want the last %d", len(got), got[0], events.MaxTailLines)
	}
	last := got[len(got)-1]
	if len(last) > events.MaxTextBytes || strings.ContainsRune(last, 0) || !strings.HasPrefix(last, "bad\uFFFDutf8") {
		t.Errorf("last line not sanitized: %d bytes, prefix %q", len(last), last[:10])
	}
	if sanitizeTail(nil) != nil {
		t.Error("an empty tail must stay nil")
	}
}

func TestMisses(t *testing.T) {
	t.Parallel()
	m := map[string]int{"i-b": 2, "i-a": 1, "i-c": 0}
	s := encodeMisses(m)
	if s != "i-a=1,i-b=2" {
		t.Errorf("encodeMisses = %q", s)
	}
	got, err := decodeMisses(s)
	if err != nil || fmt.Sprint(got) != "map[i-a:1 i-b:2]" {
		t.Errorf("decodeMisses = %v, %v", got, err)
	}
	if got, err := decodeMisses(""); err != nil || len(got) != 0 {
		t.Errorf("decodeMisses(\"\") = %v, %v", got, err)
	}
	for _, bad := range []string{"i-a", "i-a=x", "=1", "i-a=-1"} {
		if _, err := decodeMisses(bad); err == nil {
			t.Errorf("decodeMisses(%q) accepted", bad)
		}
	}
}

func TestWorkloads(t *testing.T) {
	t.Parallel()
	r, err := cloudtest.LoadOps(t, "testdata/ops.yaml").Recipe("lines")
	if err != nil {
		t.Fatal(err)
	}
	work := recipe.Workload{Step: "work", Log: ".sortie/work/stdout.log", Stderr: ".sortie/work/stderr", StateDir: ".sortie/work"}
	side := recipe.Workload{Step: "side", Log: "logs/side.log", Stderr: ".sortie/side/stderr", StateDir: ".sortie/side"}
	tests := []struct {
		name   string
		params map[string]string
		tagged string // the tagged step's log
	}{
		// An older event: the parameterised log path is unknown, only stderr is tailed.
		{name: "no params", params: nil, tagged: ""},
		{name: "params given", params: map[string]string{"tag": "abc", "code": "3"}, tagged: "logs/abc.log"},
		{name: "params given, default used", params: map[string]string{"code": "3"}, tagged: "logs/x.log"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wl, err := workloads(r, tt.params)
			if err != nil {
				t.Fatal(err)
			}
			want := []recipe.Workload{work, side,
				{Step: "tagged", Log: tt.tagged, Stderr: ".sortie/tagged/stderr", StateDir: ".sortie/tagged"}}
			if !slices.Equal(wl, want) {
				t.Errorf("workloads\n got %+v\nwant %+v", wl, want)
			}
			// The paths agree with what the bootstrapper renders, where they are known.
			steps, err := recipe.Render(r, tt.params, recipe.RenderEnv{})
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range steps {
				if wl[i].Log == "" && tt.params == nil {
					continue
				}
				if s.Log != wl[i].Log || s.Stderr != wl[i].Stderr {
					t.Errorf("step %s renders log %q stderr %q, monitor tails %q %q", s.Name, s.Log, s.Stderr, wl[i].Log, wl[i].Stderr)
				}
			}
		})
	}
	t.Run("params the recipe rejects", func(t *testing.T) {
		if _, err := workloads(r, map[string]string{"tag": "NO"}); err == nil {
			t.Fatal("workloads accepted a value that does not match the pattern")
		}
	})
}

func TestLogPaths(t *testing.T) {
	t.Parallel()
	w := func(logs ...string) []recipe.Workload {
		var out []recipe.Workload
		for i, l := range logs {
			out = append(out, recipe.Workload{Step: fmt.Sprint("s", i), Log: l})
		}
		return out
	}
	many := make([]string, events.MaxLogs+5)
	for i := range many {
		many[i] = fmt.Sprintf("logs/%02d.log", i)
	}
	tests := []struct {
		name string
		wl   []recipe.Workload
		want []string
	}{
		{"none", nil, nil},
		{"inside .sortie left out", w(".sortie/work/stdout.log", "./.sortie/x.log"), nil},
		{"outside kept, cleaned", w("logs/a.log", "./out/b.log", ".sortiex/c.log"), []string{"logs/a.log", "out/b.log", ".sortiex/c.log"}},
		{"unknown left out", w("", "logs/a.log"), []string{"logs/a.log"}},
		{"absolute left out", w("/var/log/w.log", "logs/a.log"), []string{"logs/a.log"}},
		{"outside the login directory left out", w("../w.log", "logs/../../w.log", "logs/a.log"), []string{"logs/a.log"}},
		{"repeats once", w("logs/a.log", "logs//a.log"), []string{"logs/a.log"}},
		{"too long left out", w("logs/" + strings.Repeat("l", events.MaxLogPathBytes)), nil},
		{"at most MaxLogs", w(many...), many[:events.MaxLogs]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := logPaths(tt.wl)
			if !slices.Equal(got, tt.want) {
				t.Errorf("logPaths = %q, want %q", got, tt.want)
			}
			jf := jobFinished(bootstrapped(okInstance("i-0000000000000000a", "127.0.0.1:2201")),
				verdict{Done: true, Outcome: events.OutcomeSucceeded}, tt.wl, time.Now())
			if err := jf.Validate(); err != nil {
				t.Errorf("JobFinished with these logs is invalid: %v", err)
			}
		})
	}
}
