package main

import (
	"context"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/sortie-fleet/sortie/pkg/awsx"
)

func TestDemoPrepareTwice(t *testing.T) {
	cloud := useCloud(t)
	prefix := "dp" + strings.ToLower(randomHex(3))
	want := "SORTIE_SSH_KEY=s3://" + prefix + "-secrets/keys/sortie-dev.pem\n"
	for run := 1; run <= 2; run++ {
		out, err := runCLI(t, "--prefix", prefix, "demo", "prepare", "--files", "7")
		if err != nil {
			t.Fatalf("run %d: %v\n%s", run, err, out)
		}
		if !strings.HasSuffix(out, want) {
			t.Errorf("run %d: output does not end with %q:\n%s", run, want, out)
		}
		if !strings.Contains(out, "seeded 7 files in s3://"+prefix+"-demo/input/") {
			t.Errorf("run %d: output lacks the seeding:\n%s", run, out)
		}
	}
	sqsc := sqs.NewFromConfig(awsx.ForEndpoint(cloud.URL()))
	q, err := sqsc.GetQueueUrl(context.Background(), &sqs.GetQueueUrlInput{QueueName: aws.String(prefix + "-demo-work")})
	if err != nil {
		t.Fatal(err)
	}
	attrs, err := sqsc.GetQueueAttributes(context.Background(), &sqs.GetQueueAttributesInput{QueueUrl: q.QueueUrl,
		AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameApproximateNumberOfMessages}})
	if err != nil {
		t.Fatal(err)
	}
	if got := attrs.Attributes[string(sqstypes.QueueAttributeNameApproximateNumberOfMessages)]; got != "7" {
		t.Errorf("work queue holds %s items after two prepares, want 7", got)
	}
}

func TestDemoSubmitBeforePrepareSaysSo(t *testing.T) {
	useCloud(t)
	prefix := "ds" + strings.ToLower(randomHex(3))
	if out, err := runCLI(t, "--prefix", prefix, "infra", "up"); err != nil {
		t.Fatalf("infra up: %v\n%s", err, out)
	}
	out, err := runCLI(t, "--prefix", prefix, "demo", "submit", "--watch")
	if err == nil || !strings.Contains(err.Error(), "sortie demo prepare") {
		t.Fatalf("want an error pointing at `sortie demo prepare`, got %v\n%s", err, out)
	}
	if strings.Contains(out, "submitted job") {
		t.Errorf("a job was submitted without the demo's work queue:\n%s", out)
	}
}
