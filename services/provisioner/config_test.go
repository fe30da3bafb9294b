package provisioner

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestConfigFromEnv(t *testing.T) {
	const hexSecret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
	tests := []struct {
		name     string
		env      map[string]string
		want     Config // checked when wantErrs is empty
		wantErrs []string
	}{
		{
			name: "defaults",
			env:  map[string]string{EnvHostKeySecret: hexSecret},
			want: Config{WaiterMinDelay: 2 * time.Second, WaiterMaxDelay: 15 * time.Second, LaunchTimeout: 3 * time.Minute},
		},
		{
			name: "fast waiter for tests and sortie dev",
			env:  map[string]string{EnvHostKeySecret: hexSecret, EnvWaiterMinDelay: "100ms", EnvWaiterMaxDelay: "100ms", EnvLaunchTimeout: "10s"},
			want: Config{WaiterMinDelay: 100 * time.Millisecond, WaiterMaxDelay: 100 * time.Millisecond, LaunchTimeout: 10 * time.Second},
		},
		{name: "no secret", env: map[string]string{}, wantErrs: []string{"SORTIE_HOSTKEY_SECRET: required: at least 32 random bytes"}},
		{name: "short secret", env: map[string]string{EnvHostKeySecret: "00112233"}, wantErrs: []string{"SORTIE_HOSTKEY_SECRET: host key secret is 4 bytes, want at least 32"}},
		{
			name: "every problem at once, each once",
			env: map[string]string{
				EnvHostKeySecret: "not a secret!", EnvWaiterMinDelay: "soon", EnvWaiterMaxDelay: "1s", EnvLaunchTimeout: "-1s",
				"SORTIE_PREFIX": "Bad_Prefix",
			},
			wantErrs: []string{
				"SORTIE_HOSTKEY_SECRET: host key secret is neither hex nor base64",
				`SORTIE_WAITER_MIN_DELAY: time: invalid duration "soon"`,
				"SORTIE_WAITER_MAX_DELAY: must be ≥ SORTIE_WAITER_MIN_DELAY (2s), got 1s",
				"SORTIE_LAUNCH_TIMEOUT: must be > SORTIE_WAITER_MIN_DELAY (2s), got -1s",
				"SORTIE_PREFIX",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, k := range []string{EnvHostKeySecret, EnvWaiterMinDelay, EnvWaiterMaxDelay, EnvLaunchTimeout, "SORTIE_PREFIX", "SORTIE_CONFIG"} {
				t.Setenv(k, tt.env[k])
			}
			cfg, err := ConfigFromEnv()
			if len(tt.wantErrs) > 0 {
				if err == nil {
					t.Fatal("accepted")
				}
				for _, want := range tt.wantErrs {
					if n := strings.Count(err.Error(), want); n != 1 {
						t.Errorf("error reports %q %d times, want once:\n%v", want, n, err)
					}
				}
				if n := strings.Count(err.Error(), "SORTIE_HOSTKEY_SECRET"); n > 1 {
					t.Errorf("the secret is reported %d times:\n%v", n, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Prefix != "sortie" || len(cfg.HostKeySecret) != 32 || cfg.HostKeySecret[1] != 0x11 {
				t.Errorf("base %+v, secret %x", cfg.Base, cfg.HostKeySecret)
			}
			if cfg.WaiterMinDelay != tt.want.WaiterMinDelay || cfg.WaiterMaxDelay != tt.want.WaiterMaxDelay || cfg.LaunchTimeout != tt.want.LaunchTimeout {
				t.Errorf("durations %s %s %s", cfg.WaiterMinDelay, cfg.WaiterMaxDelay, cfg.LaunchTimeout)
			}
		})
	}
}

func TestConfigLogValueRedactsSecret(t *testing.T) {
	cfg := Config{HostKeySecret: []byte("0123456789abcdef0123456789abcdef")}
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("config", "cfg", cfg)
	if strings.Contains(buf.String(), "0123456789abcdef") || strings.Contains(buf.String(), "48 49 50 51") {
		t.Errorf("secret logged: %s", buf.String())
	}
	if !strings.Contains(buf.String(), "[redacted]") {
		t.Errorf("log %s", buf.String())
	}
}
