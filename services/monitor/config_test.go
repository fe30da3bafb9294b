package monitor

import (
	"strings"
	"testing"
	"time"

	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/service"
)

func TestConfigFromEnv(t *testing.T) {
	cloudtest.Setenv(t, map[string]string{
		"SORTIE_PREFIX":              "stack-a",
		"SORTIE_CONFIG":              "",
		"SORTIE_SSH_KEY":             "s3://keys/fleet.pem",
		"SORTIE_MONITOR_INTERVAL":    "300ms",
		"SORTIE_MONITOR_GRACE":       "5s",
		"SORTIE_LEASE":               "2m",
		"SORTIE_MONITOR_MAX_MISSES":  "3",
		"SORTIE_MONITOR_SSH_TIMEOUT": "4s",
		"SORTIE_MONITOR_PARALLEL":    "8",
		"SORTIE_METRICS_FLUSH":       "250ms",
		"SORTIE_MONITOR_SETTLE":      "",
		"SORTIE_POLL_WAIT":           "1s",
	})
	cfg, err := ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	want := Config{Base: service.Base{Prefix: "stack-a", HTTPAddr: service.DefaultHTTPAddr}, SSHKey: "s3://keys/fleet.pem", Interval: 300 * time.Millisecond,
		Grace: 5 * time.Second, Lease: 2 * time.Minute, MaxMisses: 3, SSHTimeout: 4 * time.Second, Parallel: 8,
		MetricsFlush: 250 * time.Millisecond, Settle: 500 * time.Millisecond, PollWait: time.Second}
	if cfg != want {
		t.Errorf("ConfigFromEnv\n got %+v\nwant %+v", cfg, want)
	}
}

func TestConfigDefaults(t *testing.T) {
	for _, k := range []string{"SORTIE_PREFIX", "SORTIE_CONFIG", "SORTIE_MONITOR_INTERVAL", "SORTIE_MONITOR_GRACE", "SORTIE_LEASE",
		"SORTIE_MONITOR_MAX_MISSES", "SORTIE_MONITOR_SSH_TIMEOUT", "SORTIE_MONITOR_PARALLEL", "SORTIE_METRICS_FLUSH",
		"SORTIE_MONITOR_SETTLE", "SORTIE_POLL_WAIT"} {
		t.Setenv(k, "")
	}
	t.Setenv("SORTIE_SSH_KEY", "/keys/fleet.pem")
	cfg, err := ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Interval != 30*time.Second || cfg.Grace != time.Minute || cfg.Lease != 10*time.Minute || cfg.MaxMisses != 5 ||
		cfg.MetricsFlush != time.Second || cfg.Settle != 2*time.Second || cfg.PollWait != 20*time.Second || cfg.Prefix != "sortie" {
		t.Errorf("defaults: %+v", cfg)
	}
}

func TestConfigReportsEveryProblem(t *testing.T) {
	t.Setenv("SORTIE_SSH_KEY", "")
	t.Setenv("SORTIE_PREFIX", "Bad Prefix")
	t.Setenv("SORTIE_MONITOR_INTERVAL", "soon")
	t.Setenv("SORTIE_MONITOR_MAX_MISSES", "many")
	if _, err := ConfigFromEnv(); err == nil || !strings.Contains(err.Error(), "SORTIE_MONITOR_INTERVAL") || !strings.Contains(err.Error(), "SORTIE_MONITOR_MAX_MISSES") {
		t.Errorf("unparsable values: %v", err)
	}

	err := Config{Base: service.Base{Prefix: "Bad Prefix"}, Lease: 30 * time.Second, Interval: time.Minute, MaxMisses: -1,
		Parallel: 1000, PollWait: 1500 * time.Millisecond, Grace: -time.Second}.Validate()
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	for _, want := range []string{"SORTIE_PREFIX", "SORTIE_SSH_KEY is required", "SORTIE_LEASE 30s: want at least 1m",
		"want longer than SORTIE_MONITOR_INTERVAL", "SORTIE_MONITOR_MAX_MISSES -1", "SORTIE_MONITOR_PARALLEL 1000",
		"SORTIE_POLL_WAIT 1.5s", "SORTIE_MONITOR_GRACE -1s"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}
