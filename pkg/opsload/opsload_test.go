package opsload_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/opsload"
)

func TestParseLocation(t *testing.T) {
	tests := []struct {
		in      string
		want    opsload.Location
		wantErr string
	}{
		{"/etc/sortie/ops.yaml", opsload.Location{Path: "/etc/sortie/ops.yaml"}, ""},
		{"ops.yaml", opsload.Location{Path: "ops.yaml"}, ""},
		{"s3://sortie-config/prod/ops.yaml", opsload.Location{Bucket: "sortie-config", Key: "prod/ops.yaml"}, ""},
		{"ssm:/sortie/prod/ops", opsload.Location{Parameter: "/sortie/prod/ops"}, ""},
		{"ssm:sortie-ops", opsload.Location{Parameter: "sortie-ops"}, ""},
		{"", opsload.Location{}, "empty"},
		{"s3://bucket-only", opsload.Location{}, "both parts"},
		{"s3:///key", opsload.Location{}, "both parts"},
		{"ssm:", opsload.Location{}, "ssm:/parameter/name"},
		{"ssm:/", opsload.Location{}, "ssm:/parameter/name"},
		{"https://example.com/ops.yaml", opsload.Location{}, "want a file path"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := opsload.ParseLocation(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("opsload.ParseLocation(%q) = %+v, %v; want an error with %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("opsload.ParseLocation(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
			if got.String() != tt.in {
				t.Errorf("String() = %q, want %q", got.String(), tt.in)
			}
		})
	}
}

// fakeSSM serves one parameter, as SSM does with decryption, and records the requests.
type fakeSSM struct {
	value     string
	decrypted []bool
}

func (f *fakeSSM) GetParameter(_ context.Context, in *ssm.GetParameterInput, _ ...func(*ssm.Options)) (*ssm.GetParameterOutput, error) {
	f.decrypted = append(f.decrypted, aws.ToBool(in.WithDecryption))
	if f.value == "" {
		return nil, errors.New("ParameterNotFound")
	}
	return &ssm.GetParameterOutput{Parameter: &ssmtypes.Parameter{Name: in.Name, Value: aws.String(f.value)}}, nil
}

func TestLoaderReadsSSMWithDecryption(t *testing.T) {
	f := &fakeSSM{value: string(opsconfig.DefaultYAML())}
	c, err := opsload.Loader{Location: opsload.Location{Parameter: "/sortie/ops"}, SSM: f}.Load(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Template("demo"); err != nil {
		t.Error(err)
	}
	if len(f.decrypted) != 1 || !f.decrypted[0] {
		t.Errorf("GetParameter WithDecryption = %v, want [true]", f.decrypted)
	}
	if _, err := (opsload.Loader{Location: opsload.Location{Parameter: "/sortie/ops"}}).Load(t.Context()); err == nil || !strings.Contains(err.Error(), "no SSM client") {
		t.Errorf("without a client: %v", err)
	}
}

func TestLoaderRefusesOversized(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ops.yaml")
	cloudtest.WriteFile(t, path, bytes.Repeat([]byte("#"), opsload.MaxBytes+1), 0o600)
	_, err := opsload.Loader{Location: opsload.Location{Path: path}}.Load(t.Context())
	if err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("Load = %v, want a size error", err)
	}
}

// TestReloader: a reload applies a changed valid config, skips an unchanged one and keeps
// the config in force when the new one is invalid or unreadable, logging why once; a
// signal triggers a reload.
func TestReloader(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ops.yaml")
	write := func(data []byte) { cloudtest.WriteFile(t, path, data, 0o600) }
	write(opsconfig.DefaultYAML())
	logs := &cloudtest.Buffer{}
	var results []opsload.Result
	r := &opsload.Reloader{
		Loader:  opsload.Loader{Location: opsload.Location{Path: path}},
		Logger:  slog.New(slog.NewJSONHandler(logs, nil)),
		Observe: func(res opsload.Result, _ time.Time) { results = append(results, res) },
	}
	h, err := r.Prime(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	first := h.Current()

	res, err := r.Reload(t.Context())
	if res != opsload.Unchanged || err != nil || h.Current() != first {
		t.Fatalf("unchanged file: %s, %v; config replaced %t", res, err, h.Current() != first)
	}

	bad := bytes.Replace(opsconfig.DefaultYAML(), []byte("max_instances: 10"), []byte("max_instances: 0"), 1)
	write(bad)
	for range 2 {
		res, err = r.Reload(t.Context())
		if res != opsload.Rejected || err == nil || !strings.Contains(err.Error(), "templates.demo.max_instances") {
			t.Fatalf("invalid file: %s, %v; want rejected naming the field", res, err)
		}
	}
	if h.Current() != first {
		t.Fatal("an invalid config replaced the one in force")
	}
	if n := strings.Count(logs.String(), "ops config invalid: keeping the one in force"); n != 1 {
		t.Errorf("the same invalid config was logged at error level %d times, want once:\n%s", n, logs)
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if res, err = r.Reload(t.Context()); res != opsload.Rejected || err == nil || h.Current() != first {
		t.Fatalf("missing file: %s, %v", res, err)
	}
	if !strings.Contains(logs.String(), "ops config not reloaded: keeping the one in force") {
		t.Errorf("unreadable source not logged:\n%s", logs)
	}

	good := bytes.Replace(opsconfig.DefaultYAML(), []byte("max_instances: 10"), []byte("max_instances: 7"), 1)
	write(good)
	sig := make(chan os.Signal, 1)
	r.Signals = sig
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	sig <- os.Interrupt // any value: a SIGHUP in a service
	cloudtest.Eventually(t, 10*time.Second, func() error {
		tpl, _ := h.Current().Template("demo")
		if tpl.MaxInstances != 7 {
			return errors.New("the signal did not reload the config")
		}
		return nil
	})
	cancel()
	<-done
	want := []opsload.Result{opsload.Applied, opsload.Unchanged, opsload.Rejected, opsload.Rejected, opsload.Rejected, opsload.Applied}
	if !equal(results, want) {
		t.Errorf("results %v, want %v", results, want)
	}
}

func TestReloaderInterval(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ops.yaml")
	cloudtest.WriteFile(t, path, opsconfig.DefaultYAML(), 0o600)
	r := &opsload.Reloader{Loader: opsload.Loader{Location: opsload.Location{Path: path}}, Interval: 20 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)}
	h, err := r.Prime(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	cloudtest.WriteFile(t, path, bytes.Replace(opsconfig.DefaultYAML(), []byte("max_instances: 10"), []byte("max_instances: 3"), 1), 0o600)
	cloudtest.Eventually(t, 10*time.Second, func() error {
		if tpl, _ := h.Current().Template("demo"); tpl.MaxInstances != 3 {
			return errors.New("not reloaded on the interval")
		}
		return nil
	})
}

func equal(a, b []opsload.Result) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestReloaderCheck: a configuration the service's own Check refuses is rejected on a
// reload like an invalid one, and the one in force is kept.
func TestReloaderCheck(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ops.yaml")
	cloudtest.WriteFile(t, path, opsconfig.DefaultYAML(), 0o600)
	r := &opsload.Reloader{Logger: slog.New(slog.DiscardHandler), Loader: opsload.Loader{
		Location: opsload.Location{Path: path},
		Check: func(c *opsconfig.Config) error {
			if t, _ := c.Template("demo"); t.MaxInstances > 10 {
				return errors.New("templates.demo.max_instances: over the stack's cap")
			}
			return nil
		},
	}}
	h, err := r.Prime(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	first := h.Current()
	cloudtest.WriteFile(t, path, bytes.Replace(opsconfig.DefaultYAML(), []byte("max_instances: 10"), []byte("max_instances: 50"), 1), 0o600)
	res, err := r.Reload(t.Context())
	if res != opsload.Rejected || err == nil || !strings.Contains(err.Error(), "over the stack's cap") || !strings.Contains(err.Error(), path) {
		t.Fatalf("Reload = %s, %v; want rejected with the check's reason and the location", res, err)
	}
	if h.Current() != first {
		t.Error("a configuration the check refused was put in force")
	}
}
