package infra

import (
	"encoding/json"
	"testing"

	"github.com/sortie-fleet/sortie/pkg/bus"
)

const (
	testQueueARN = "arn:aws:sqs:us-east-1:123456789012:sortie-planner-job-submitted"
	testDLQARN   = "arn:aws:sqs:us-east-1:123456789012:sortie-planner-job-submitted-dlq"
	testTopicARN = "arn:aws:sns:us-east-1:123456789012:sortie-job-submitted"
)

func TestPolicyGolden(t *testing.T) {
	tests := []struct {
		golden string
		gen    func() ([]byte, error)
	}{
		{"bucket-policy.golden.json", func() ([]byte, error) { return BucketPolicy("sortie-logs") }},
		{"queue-policy.golden.json", func() ([]byte, error) { return QueuePolicy(testQueueARN, testTopicARN) }},
		{"redrive-policy.golden.json", func() ([]byte, error) { return RedrivePolicy(testDLQARN, 5) }},
		{"rule-queue-policy.golden.json", func() ([]byte, error) {
			return RuleQueuePolicy("arn:aws:sqs:us-east-1:123456789012:sortie-ec2-events", "arn:aws:events:us-east-1:123456789012:rule/sortie-ec2-events")
		}},
		{"topic-policy-job-submitted.golden.json", func() ([]byte, error) {
			return TopicPolicy(bus.Topology{Prefix: "sortie"}, bus.JobSubmitted, "123456789012")
		}},
		{"topic-policy-fleet-planned.golden.json", func() ([]byte, error) {
			return TopicPolicy(bus.Topology{Prefix: "sortie"}, bus.FleetPlanned, "123456789012")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.golden, func(t *testing.T) {
			got, err := tt.gen()
			if err != nil {
				t.Fatal(err)
			}
			if !json.Valid(got) {
				t.Fatalf("not valid JSON: %s", got)
			}
			again, _ := tt.gen()
			if string(again) != string(got) {
				t.Fatalf("not deterministic:\n%s\n%s", got, again)
			}
			golden(t, tt.golden, got)
		})
	}
}

func TestPolicyGeneratorsRejectEmptyInput(t *testing.T) {
	tests := []struct {
		name string
		gen  func() ([]byte, error)
	}{
		{"bucket policy without bucket", func() ([]byte, error) { return BucketPolicy("") }},
		{"queue policy without queue", func() ([]byte, error) { return QueuePolicy("", testTopicARN) }},
		{"queue policy without topic", func() ([]byte, error) { return QueuePolicy(testQueueARN, "") }},
		{"rule queue policy without queue", func() ([]byte, error) { return RuleQueuePolicy("", "arn:aws:events:us-east-1:1:rule/r") }},
		{"rule queue policy without rule", func() ([]byte, error) { return RuleQueuePolicy(testQueueARN, "") }},
		{"redrive without DLQ", func() ([]byte, error) { return RedrivePolicy("", 5) }},
		{"redrive with zero receives", func() ([]byte, error) { return RedrivePolicy(testDLQARN, 0) }},
		{"topic policy without account", func() ([]byte, error) { return TopicPolicy(bus.Topology{Prefix: "sortie"}, bus.FleetPlanned, "") }},
		{"topic policy of an unknown event", func() ([]byte, error) { return TopicPolicy(bus.Topology{Prefix: "sortie"}, "Nope", "123456789012") }},
		{"topic policy of a bad prefix", func() ([]byte, error) {
			return TopicPolicy(bus.Topology{Prefix: "Bad_"}, bus.FleetPlanned, "123456789012")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if b, err := tt.gen(); err == nil {
				t.Errorf("got %s, want an error", b)
			}
		})
	}
}

func TestSameJSON(t *testing.T) {
	tests := []struct {
		name string
		a, b string
		want bool
	}{
		{"identical", `{"a":1}`, `{"a":1}`, true},
		{"whitespace and key order", `{"a":1,"b":"x"}`, "{\n  \"b\": \"x\",\n  \"a\": 1\n}", true},
		{"number as string", `{"maxReceiveCount":5}`, `{"maxReceiveCount":"5"}`, true},
		{"one-element list", `{"Resource":["r"]}`, `{"Resource":"r"}`, true},
		{"bool as string", `{"b":true}`, `{"b":"true"}`, true},
		{"other value", `{"maxReceiveCount":5}`, `{"maxReceiveCount":10}`, false},
		{"extra key", `{"a":1}`, `{"a":1,"b":2}`, false},
		{"list order matters", `{"r":["a","b"]}`, `{"r":["b","a"]}`, false},
		{"empty is not a policy", `{"a":1}`, ``, false},
		{"invalid JSON", `{"a":1`, `{"a":1`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := sameJSON(tt.a, tt.b); got != tt.want {
				t.Errorf("sameJSON(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.want)
			}
		})
	}
}
