package bootstrapper

import (
	"strings"
	"testing"
	"time"

	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/service"
)

func TestConfigFromEnv(t *testing.T) {
	t.Run("defaults", func(t *testing.T) {
		cloudtest.Setenv(t, map[string]string{"SORTIE_SSH_KEY": "/etc/sortie/id", "SORTIE_PREFIX": ""})
		cfg, err := ConfigFromEnv()
		if err != nil {
			t.Fatalf("ConfigFromEnv: %v", err)
		}
		want := Config{SSHKey: "/etc/sortie/id", Concurrency: 0, DialTimeout: 2 * time.Minute, HandshakeTimeout: 30 * time.Second, StepTimeout: 10 * time.Minute, HostKeyTimeout: 10 * time.Minute, Fetcher: "curl", MaxHandle: 15 * time.Minute, PollWait: 20 * time.Second}
		want.Prefix = "sortie"
		want.HTTPAddr = service.DefaultHTTPAddr
		if cfg != want {
			t.Fatalf("config = %+v, want %+v", cfg, want)
		}
	})
	t.Run("set", func(t *testing.T) {
		cloudtest.Setenv(t, map[string]string{
			"SORTIE_SSH_KEY": "s3://keys/sortie-dev.pem", "SORTIE_PREFIX": "stack-a", "SORTIE_BOOTSTRAP_CONCURRENCY": "4",
			"SORTIE_BOOTSTRAP_DIAL_TIMEOUT": "30s", "SORTIE_BOOTSTRAP_STEP_TIMEOUT": "1m", "SORTIE_BOOTSTRAP_FETCHER": "wget",
			"SORTIE_BOOTSTRAP_HOSTKEY_TIMEOUT": "3m",
		})
		cfg, err := ConfigFromEnv()
		if err != nil {
			t.Fatalf("ConfigFromEnv: %v", err)
		}
		if cfg.Prefix != "stack-a" || cfg.Concurrency != 4 || cfg.DialTimeout != 30*time.Second || cfg.StepTimeout != time.Minute || cfg.Fetcher != "wget" || cfg.HostKeyTimeout != 3*time.Minute {
			t.Fatalf("config = %+v", cfg)
		}
	})
	t.Run("every problem at once", func(t *testing.T) {
		cloudtest.Setenv(t, map[string]string{
			"SORTIE_SSH_KEY": "", "SORTIE_PREFIX": "Bad Prefix", "SORTIE_BOOTSTRAP_CONCURRENCY": "1001",
			"SORTIE_BOOTSTRAP_DIAL_TIMEOUT": "-1s", "SORTIE_BOOTSTRAP_HANDSHAKE_TIMEOUT": "0s", "SORTIE_BOOTSTRAP_STEP_TIMEOUT": "", "SORTIE_BOOTSTRAP_FETCHER": "scp",
			"SORTIE_BOOTSTRAP_HOSTKEY_TIMEOUT": "0s",
		})
		_, err := ConfigFromEnv()
		if err == nil {
			t.Fatal("ConfigFromEnv accepted a bad configuration")
		}
		for _, want := range []string{"SORTIE_SSH_KEY", "SORTIE_PREFIX", "SORTIE_BOOTSTRAP_CONCURRENCY", "SORTIE_BOOTSTRAP_DIAL_TIMEOUT", "SORTIE_BOOTSTRAP_HANDSHAKE_TIMEOUT", "SORTIE_BOOTSTRAP_FETCHER", "SORTIE_BOOTSTRAP_HOSTKEY_TIMEOUT"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not mention %s", err, want)
			}
		}
	})
	t.Run("unparsable values", func(t *testing.T) {
		cloudtest.Setenv(t, map[string]string{"SORTIE_SSH_KEY": "/k", "SORTIE_BOOTSTRAP_CONCURRENCY": "many", "SORTIE_BOOTSTRAP_DIAL_TIMEOUT": "soon"})
		_, err := ConfigFromEnv()
		if err == nil || !strings.Contains(err.Error(), "SORTIE_BOOTSTRAP_CONCURRENCY") || !strings.Contains(err.Error(), "SORTIE_BOOTSTRAP_DIAL_TIMEOUT") {
			t.Fatalf("error = %v, want both variables named", err)
		}
	})
}
