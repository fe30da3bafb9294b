package service

import (
	"github.com/aws/aws-sdk-go-v2/aws"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sortie-fleet/sortie/pkg/opsconfig"
)

func TestBaseValidate(t *testing.T) {
	tests := []struct {
		name string
		base Base
		want []string // substrings of the error; none means valid
	}{
		{"defaults", Base{Prefix: "sortie"}, nil},
		{"bad prefix", Base{Prefix: "Sortie_1"}, []string{"SORTIE_PREFIX"}},
		{"missing config file", Base{Prefix: "sortie", OpsConfig: filepath.Join(t.TempDir(), "nope.yaml")}, []string{"SORTIE_CONFIG"}},
		{"both at once", Base{Prefix: "", OpsConfig: "/no/such/file"}, []string{"SORTIE_PREFIX", "SORTIE_CONFIG"}},
		{"config in S3: not a file to stat", Base{Prefix: "sortie", OpsConfig: "s3://ops-bucket/sortie/ops.yaml"}, nil},
		{"config in SSM: not a file to stat", Base{Prefix: "sortie", OpsConfig: "ssm:/sortie/ops"}, nil},
		{"S3 location without a key", Base{Prefix: "sortie", OpsConfig: "s3://ops-bucket"}, []string{"SORTIE_CONFIG", "s3://bucket/key"}},
		{"SSM location without a name", Base{Prefix: "sortie", OpsConfig: "ssm:"}, []string{"SORTIE_CONFIG", "ssm:/parameter/name"}},
		{"another scheme", Base{Prefix: "sortie", OpsConfig: "https://example.com/ops.yaml"}, []string{"SORTIE_CONFIG"}},
		{"negative reload interval", Base{Prefix: "sortie", ConfigReload: -time.Second}, []string{"SORTIE_CONFIG_RELOAD"}},
		{"http addr without a port", Base{Prefix: "sortie", HTTPAddr: "localhost"}, []string{"SORTIE_HTTP_ADDR"}},
		{"http addr :8080", Base{Prefix: "sortie", HTTPAddr: ":8080"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.base.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("want an error mentioning %v", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %s", err, w)
				}
			}
		})
	}
}

func TestBaseFromEnvAndLoadOps(t *testing.T) {
	t.Setenv("SORTIE_PREFIX", "")
	t.Setenv("SORTIE_CONFIG", "")
	b := BaseFromEnv()
	if b.Prefix != "sortie" || b.OpsConfig != "" {
		t.Fatalf("defaults = %+v", b)
	}
	ops, err := b.LoadOps(t.Context(), aws.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ops.Template("demo"); err != nil {
		t.Errorf("embedded ops config lacks the demo template: %v", err)
	}
	t.Setenv("SORTIE_PREFIX", "stack-a")
	if got := BaseFromEnv().Topology().TopicName("JobSubmitted"); got != "stack-a-job-submitted" {
		t.Errorf("topic = %q", got)
	}
}

func TestBaseFromEnvHTTPAndReload(t *testing.T) {
	tests := []struct {
		name      string
		env       map[string]string // "-" unsets
		wantAddr  string
		wantEvery time.Duration
		wantErr   string
	}{
		{"defaults", map[string]string{"SORTIE_HTTP_ADDR": "-", "SORTIE_CONFIG_RELOAD": "-"}, ":8080", 0, ""},
		{"empty address: off", map[string]string{"SORTIE_HTTP_ADDR": "", "SORTIE_CONFIG_RELOAD": "5m"}, "", 5 * time.Minute, ""},
		{"loopback, any port", map[string]string{"SORTIE_HTTP_ADDR": "127.0.0.1:0", "SORTIE_CONFIG_RELOAD": "0"}, "127.0.0.1:0", 0, ""},
		{"bad interval", map[string]string{"SORTIE_HTTP_ADDR": "-", "SORTIE_CONFIG_RELOAD": "often"}, ":8080", 0, "SORTIE_CONFIG_RELOAD"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("SORTIE_PREFIX", "")
			t.Setenv("SORTIE_CONFIG", "")
			for k, v := range tt.env {
				t.Setenv(k, v)
				if v == "-" {
					os.Unsetenv(k)
				}
			}
			b := BaseFromEnv()
			if b.HTTPAddr != tt.wantAddr || b.ConfigReload != tt.wantEvery {
				t.Errorf("HTTPAddr %q, ConfigReload %s; want %q, %s", b.HTTPAddr, b.ConfigReload, tt.wantAddr, tt.wantEvery)
			}
			err := b.Validate()
			if tt.wantErr == "" && err != nil {
				t.Errorf("Validate = %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("Validate = %v, want an error naming %s", err, tt.wantErr)
			}
		})
	}
}

func TestDurationEnv(t *testing.T) {
	t.Setenv("X_DELAY", "")
	if d, err := DurationEnv("X_DELAY", time.Second); err != nil || d != time.Second {
		t.Errorf("unset: %v, %v", d, err)
	}
	t.Setenv("X_DELAY", "250ms")
	if d, err := DurationEnv("X_DELAY", time.Second); err != nil || d != 250*time.Millisecond {
		t.Errorf("set: %v, %v", d, err)
	}
	t.Setenv("X_DELAY", "soon")
	if _, err := DurationEnv("X_DELAY", time.Second); err == nil || !strings.Contains(err.Error(), "X_DELAY") {
		t.Errorf("bad value: want an error naming the variable, got %v", err)
	}
}

// TestLoadOpsRefusesSecretsBucket: an ops config whose recipe lists the stack's secrets
// bucket among the buckets it may fetch from stops the service at start-up.
func TestLoadOpsRefusesSecretsBucket(t *testing.T) {
	yaml := strings.Replace(string(opsconfig.DefaultYAML()), "recipes:\n", `recipes:
  tools:
    fetch_buckets: [stack-a-tools, stack-a-secrets]
    steps:
      - name: tool
        fetch: {bucket: stack-a-secrets, key: keys/sortie-dev.pem, path: key.pem}
`, 1)
	path := filepath.Join(t.TempDir(), "ops.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := (Base{Prefix: "stack-b", OpsConfig: path}).LoadOps(t.Context(), aws.Config{}); err != nil {
		t.Errorf("another stack's prefix: %v, want the config accepted", err)
	}
	_, err := Base{Prefix: "stack-a", OpsConfig: path}.LoadOps(t.Context(), aws.Config{})
	if err == nil || !strings.Contains(err.Error(), `recipes.tools.fetch_buckets[1]: "stack-a-secrets" is the stack's secrets bucket`) {
		t.Errorf("LoadOps = %v, want the secrets bucket refused", err)
	}
}
