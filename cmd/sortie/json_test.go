package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/infra"
)

// TestJSONOutputs: infra up and submit print JSON with --json, and submit's S3 work size
// is spelled --s3.
func TestJSONOutputs(t *testing.T) {
	useCloud(t)
	prefix := "clijson" + randomHex(3)

	out, err := runCLI(t, "--prefix", prefix, "infra", "up", "--json")
	if err != nil {
		t.Fatalf("infra up --json: %v\n%s", err, out)
	}
	var report infra.Report
	if err := json.Unmarshal([]byte(out), &report); err != nil {
		t.Fatalf("infra up --json does not parse: %v\n%s", err, out)
	}
	if report.Count(infra.Created) == 0 || report.Lines[0].Name == "" || !strings.Contains(out, `"action": "created"`) {
		t.Errorf("infra up --json: %s", out)
	}

	out, err = runCLI(t, "--prefix", prefix, "submit", "--json", "--job-id", "json-1", "--template", "demo", "--profile", "files",
		"--recipe", "demo-worker", "--s3", "s3://my-input/photos/", "--param", "bucket=my-input", "--param", "queue=q")
	if err != nil {
		t.Fatalf("submit --json: %v\n%s", err, out)
	}
	var sub struct {
		Submitted events.JobSubmitted `json:"submitted"`
	}
	if err := json.Unmarshal([]byte(out), &sub); err != nil {
		t.Fatalf("submit --json does not parse: %v\n%s", err, out)
	}
	if sub.Submitted.JobID != "json-1" || sub.Submitted.Work.S3 == nil || sub.Submitted.Work.S3.Bucket != "my-input" || sub.Submitted.Work.S3.Prefix != "photos/" {
		t.Errorf("submitted %+v", sub.Submitted)
	}

	if out, err := runCLI(t, "--prefix", prefix, "submit", "--template", "demo", "--s-3", "s3://my-input/x"); err == nil || !strings.Contains(err.Error(), "--s-3") {
		t.Errorf("--s-3 accepted: %v\n%s", err, out)
	}
}
