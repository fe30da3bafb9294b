package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
)

// useCloud starts a local cloud and points the AWS SDK's default chain at it, as a user
// of `sortie` would with AWS_ENDPOINT_URL.
func useCloud(t *testing.T) *localcloud.Cloud {
	t.Helper()
	cloud, err := localcloud.New(localcloud.Options{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cloud.Close() })
	t.Setenv("AWS_ENDPOINT_URL", cloud.URL())
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_ACCESS_KEY_ID", "test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "test")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	return cloud
}

func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := run(ctx, args, &out, &errOut)
	return out.String() + errOut.String(), err
}

func TestInfraUpTwiceThenDownLeavesNothing(t *testing.T) {
	cloud := useCloud(t)
	prefix := "cli" + strings.ToLower(randomHex(3))

	out, err := runCLI(t, "--prefix", prefix, "infra", "up")
	if err != nil {
		t.Fatalf("infra up: %v\n%s", err, out)
	}
	for _, want := range []string{"created", prefix + "-planner-job-submitted", prefix + "-logs", "bucket-policy"} {
		if !strings.Contains(out, want) {
			t.Errorf("first up output lacks %q:\n%s", want, out)
		}
	}
	out, err = runCLI(t, "--prefix", prefix, "infra", "up")
	if err != nil {
		t.Fatalf("second infra up: %v\n%s", err, out)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "created") || strings.HasPrefix(strings.TrimSpace(line), "updated") {
			t.Errorf("second up changed something: %q", line)
		}
	}
	out, err = runCLI(t, "--prefix", prefix, "infra", "down")
	if err != nil {
		t.Fatalf("infra down: %v\n%s", err, out)
	}
	if !strings.Contains(out, "deleted") {
		t.Errorf("down output lacks deletions:\n%s", out)
	}
	sqsc := sqs.NewFromConfig(awsx.ForEndpoint(cloud.URL()))
	left, err := sqsc.ListQueues(context.Background(), &sqs.ListQueuesInput{QueueNamePrefix: aws.String(prefix)})
	if err != nil {
		t.Fatal(err)
	}
	if len(left.QueueUrls) != 0 {
		t.Errorf("queues left behind after down: %v", left.QueueUrls)
	}
}

func TestInfraRejectsBadPrefix(t *testing.T) {
	useCloud(t)
	_, err := runCLI(t, "--prefix", "Bad_Prefix", "infra", "up")
	if err == nil || !strings.Contains(err.Error(), "prefix") {
		t.Fatalf("want a prefix error, got %v", err)
	}
}

func TestLocalcloudCommandServesEC2(t *testing.T) {
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"localcloud", "--addr", "127.0.0.1:0"}, pw, io.Discard)
		pw.Close()
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, pr)
	url := strings.TrimSpace(strings.TrimPrefix(line, "local cloud serving on "))
	if !strings.HasPrefix(url, "http://127.0.0.1:") {
		t.Fatalf("unexpected first line %q", line)
	}
	client := ec2.NewFromConfig(awsx.ForEndpoint(url))
	if _, err := client.DescribeInstances(ctx, &ec2.DescribeInstancesInput{}); err != nil {
		t.Fatalf("DescribeInstances against `sortie localcloud`: %v", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("localcloud returned %v after interrupt", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("localcloud did not stop after interrupt")
	}
}

func TestSubmitRejectsInvalidJobBeforePublishing(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, body, want string
	}{
		{"zero count", `{"template":"demo","profile":"files","recipe":"demo-worker","work":{"count":0},"deadline_seconds":600}`, "work"},
		{"negative deadline", `{"template":"demo","profile":"files","recipe":"demo-worker","work":{"count":5},"deadline_seconds":-1}`, "deadline_seconds"},
		{"unknown field", `{"template":"demo","profile":"files","recipe":"demo-worker","work":{"count":5},"deadline_seconds":60,"ami":"ami-1"}`, "ami"},
		{"two jobs in one file", `{"template":"demo"} {"template":"demo"}`, "more than one JSON value"},
		{"not JSON", "template: demo", "invalid character"},
		{"huge", `{"template":"` + strings.Repeat("x", 300<<10) + `"}`, "at most 262144 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-")+".json")
			if err := os.WriteFile(path, []byte(tt.body), 0o600); err != nil {
				t.Fatal(err)
			}
			// No AWS endpoint is configured: a job that reached publishing would fail on
			// credentials or network, not on validation.
			_, err := runCLI(t, "submit", "--file", path)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("want an error naming %q, got %v", tt.want, err)
			}
		})
	}
}
