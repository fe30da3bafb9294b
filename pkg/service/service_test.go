package service

import (
	"github.com/aws/aws-sdk-go-v2/aws"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
