package worker

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadJobEnv(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	data, err := os.ReadFile("testdata/job.env")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(home, ".sortie"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home, JobEnvPath), data, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := LoadJobEnv(home)
	if err != nil {
		t.Fatal(err)
	}
	want := JobEnv{JobID: "job-42", CorrelationID: "corr-7=x", FleetID: "job-42", InstanceID: "i-0123456789abcdef0", Prefix: "sortie-test"}
	if got != want {
		t.Errorf("LoadJobEnv = %+v, want %+v", got, want)
	}
	var cfg Config
	got.Apply(&cfg)
	if cfg.JobID != want.JobID || cfg.CorrelationID != want.CorrelationID || cfg.FleetID != want.FleetID ||
		cfg.InstanceID != want.InstanceID || cfg.Prefix != want.Prefix {
		t.Errorf("Apply = %+v", cfg)
	}
}

func TestLoadJobEnvErrors(t *testing.T) {
	t.Parallel()
	if _, err := LoadJobEnv(t.TempDir()); err == nil || !strings.Contains(err.Error(), "job.env") {
		t.Errorf("missing file: %v", err)
	}
	for _, tc := range []struct {
		name, content string
		want          []string
	}{
		{"empty", "", []string{"SORTIE_JOB_ID is missing", "SORTIE_CORRELATION_ID is missing", "SORTIE_FLEET_ID is missing", "SORTIE_INSTANCE_ID is missing", "SORTIE_PREFIX is missing"}},
		{"not KEY=VALUE", "SORTIE_JOB_ID job-1\n", []string{"line 1: want KEY=VALUE", "SORTIE_JOB_ID is missing"}},
		{"empty value", "SORTIE_JOB_ID=\r\nSORTIE_CORRELATION_ID=c\nSORTIE_FLEET_ID=f\nSORTIE_INSTANCE_ID=i\nSORTIE_PREFIX=p\n", []string{"SORTIE_JOB_ID is missing or empty"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseJobEnv([]byte(tc.content))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
		})
	}
	t.Run("too large", func(t *testing.T) {
		home := t.TempDir()
		_ = os.MkdirAll(filepath.Join(home, ".sortie"), 0o700)
		if err := os.WriteFile(filepath.Join(home, JobEnvPath), make([]byte, maxJobEnvBytes+1), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadJobEnv(home); err == nil || !strings.Contains(err.Error(), "larger than") {
			t.Errorf("oversized file: %v", err)
		}
	})
}
