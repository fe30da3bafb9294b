package reaper

import (
	"strings"
	"testing"
	"time"

	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/service"
)

func TestConfigFromEnv(t *testing.T) {
	t.Run("defaults", func(t *testing.T) {
		t.Setenv("SORTIE_SSH_KEY", "s3://keys/dev.pem")
		t.Setenv("SORTIE_PREFIX", "")
		cfg, err := ConfigFromEnv()
		if err != nil {
			t.Fatalf("ConfigFromEnv: %v", err)
		}
		want := Config{
			SSHKey: "s3://keys/dev.pem", Concurrency: 16, ArchiveTimeout: 2 * time.Minute, ArchiveMaxBytes: 16 << 30,
			SweepInterval: time.Minute, SweepArchiveTimeout: 20 * time.Second, SweepArchiveWindow: 10 * time.Minute, MetricsFlush: time.Second,
			WaiterMinDelay: 2 * time.Second, WaiterMaxDelay: 30 * time.Second, TerminateTimeout: 5 * time.Minute, PollWait: 20 * time.Second,
		}
		want.Prefix = "sortie"
		want.HTTPAddr = service.DefaultHTTPAddr
		if cfg != want {
			t.Fatalf("config = %+v\nwant %+v", cfg, want)
		}
		if cfg.WithDefaults() != want {
			t.Fatal("WithDefaults changed a complete config")
		}
	})
	t.Run("set", func(t *testing.T) {
		cloudtest.Setenv(t, map[string]string{
			"SORTIE_SSH_KEY": "/k", "SORTIE_REAPER_CONCURRENCY": "3", "SORTIE_ARCHIVE_TIMEOUT": "5s",
			"SORTIE_ARCHIVE_MAX_BYTES": "1048576", "SORTIE_LOG_KMS_KEY_ID": "alias/sortie-logs",
			"SORTIE_SWEEP_INTERVAL": "2s", "SORTIE_SWEEP_ARCHIVE_TIMEOUT": "1s",
			"SORTIE_WAITER_MIN_DELAY": "100ms", "SORTIE_WAITER_MAX_DELAY": "1s", "SORTIE_TERMINATE_TIMEOUT": "30s",
			"SORTIE_POLL_WAIT": "1s", "SORTIE_SWEEP_ARCHIVE_WINDOW": "3m", "SORTIE_METRICS_FLUSH": "250ms",
		})
		cfg, err := ConfigFromEnv()
		if err != nil {
			t.Fatalf("ConfigFromEnv: %v", err)
		}
		if cfg.Concurrency != 3 || cfg.ArchiveTimeout != 5*time.Second || cfg.ArchiveMaxBytes != 1<<20 ||
			cfg.KMSKeyID != "alias/sortie-logs" || cfg.SweepInterval != 2*time.Second || cfg.SweepArchiveTimeout != time.Second ||
			cfg.WaiterMinDelay != 100*time.Millisecond || cfg.WaiterMaxDelay != time.Second || cfg.TerminateTimeout != 30*time.Second || cfg.PollWait != time.Second ||
			cfg.SweepArchiveWindow != 3*time.Minute || cfg.MetricsFlush != 250*time.Millisecond {
			t.Fatalf("config = %+v", cfg)
		}
	})
	t.Run("every problem at once", func(t *testing.T) {
		cloudtest.Setenv(t, map[string]string{
			"SORTIE_SSH_KEY": "ftp://x", "SORTIE_PREFIX": "UPPER", "SORTIE_REAPER_CONCURRENCY": "0",
			"SORTIE_ARCHIVE_MAX_BYTES": "-1", "SORTIE_SWEEP_INTERVAL": "10ms",
			"SORTIE_WAITER_MIN_DELAY": "10s", "SORTIE_WAITER_MAX_DELAY": "1s", "SORTIE_ARCHIVE_TIMEOUT": "-1s", "SORTIE_POLL_WAIT": "1500ms",
			"SORTIE_SWEEP_ARCHIVE_WINDOW": "-1m", "SORTIE_METRICS_FLUSH": "-1s",
		})
		_, err := ConfigFromEnv()
		if err == nil {
			t.Fatal("accepted a bad configuration")
		}
		for _, want := range []string{"SORTIE_SSH_KEY", "SORTIE_PREFIX", "SORTIE_REAPER_CONCURRENCY", "SORTIE_ARCHIVE_MAX_BYTES",
			"SORTIE_SWEEP_INTERVAL", "SORTIE_WAITER_MIN_DELAY", "SORTIE_ARCHIVE_TIMEOUT", "SORTIE_POLL_WAIT",
			"SORTIE_SWEEP_ARCHIVE_WINDOW", "SORTIE_METRICS_FLUSH"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error does not mention %s:\n%v", want, err)
			}
		}
	})
	t.Run("unparsable", func(t *testing.T) {
		t.Setenv("SORTIE_SSH_KEY", "/k")
		t.Setenv("SORTIE_REAPER_CONCURRENCY", "lots")
		t.Setenv("SORTIE_SWEEP_INTERVAL", "often")
		_, err := ConfigFromEnv()
		if err == nil || !strings.Contains(err.Error(), "SORTIE_REAPER_CONCURRENCY") || !strings.Contains(err.Error(), "SORTIE_SWEEP_INTERVAL") {
			t.Fatalf("error = %v, want both named", err)
		}
	})
}
