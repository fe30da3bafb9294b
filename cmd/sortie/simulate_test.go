package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// sortie simulate: a generated trace written to a file and replayed prints the same table as
// generating and replaying at once; a bad trace is refused with the reason.
func TestSimulateCommand(t *testing.T) {
	direct, err := runCLI(t, "simulate", "--generate", "300", "--seed", "5", "--calibration", "30")
	if err != nil {
		t.Fatalf("simulate --generate: %v\n%s", err, direct)
	}
	for _, want := range []string{"300 jobs (seed 5), scored on the 270 after 30 calibration jobs", "sortie (learned rates)", "keda ceil(items / target)", "aws backlog per instance", "oracle (true throughput)"} {
		if !strings.Contains(direct, want) {
			t.Errorf("table lacks %q:\n%s", want, direct)
		}
	}
	trace := filepath.Join(t.TempDir(), "trace.json")
	if out, err := runCLI(t, "simulate", "--generate", "300", "--seed", "5", "--out", trace); err != nil || out != "" {
		t.Fatalf("simulate --out: %v, %q", err, out)
	}
	replayed, err := runCLI(t, "simulate", "--trace", trace, "--calibration", "30")
	if err != nil || replayed != direct {
		t.Fatalf("replayed trace: %v\n%s\nwant\n%s", err, replayed, direct)
	}

	bad := filepath.Join(t.TempDir(), "bad.json")
	if err := os.WriteFile(bad, []byte(`{"seed": 1, "types": [], "jobs": []}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := runCLI(t, "simulate", "--trace", bad); err == nil || !strings.Contains(err.Error(), "types: none") {
		t.Errorf("bad trace: %v\n%s", err, out)
	}
	if out, err := runCLI(t, "simulate", "--generate", "100", "--calibration", "100"); err == nil || !strings.Contains(err.Error(), "calibration jobs") {
		t.Errorf("calibration over the trace: %v\n%s", err, out)
	}
}
