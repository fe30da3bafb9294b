package localcloud

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/sortie-fleet/sortie/pkg/ec2events"
	"github.com/sortie-fleet/sortie/pkg/infra"
)

func TestMatchPattern(t *testing.T) {
	at := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	warning, _ := json.Marshal(ec2events.SpotWarning(where, "e1", "i-0123456789abcdef0", at))
	terminated, _ := json.Marshal(ec2events.StateChange(where, "e2", "i-0123456789abcdef0", "terminated", at))
	tests := []struct {
		name    string
		pattern string
		event   []byte
		want    bool
		err     string // a part of the error; "" for none
	}{
		{"sortie's rule, warning", ec2events.Pattern(), warning, true, ""},
		{"sortie's rule, state change", ec2events.Pattern(), terminated, true, ""},
		{"another source", `{"source":["aws.s3"]}`, warning, false, ""},
		{"another detail type", `{"source":["aws.ec2"],"detail-type":["EC2 Instance Rebalance Recommendation"]}`, warning, false, ""},
		{"nested detail, matching", `{"detail-type":["EC2 Instance State-change Notification"],"detail":{"state":["shutting-down","terminated"]}}`, terminated, true, ""},
		{"nested detail, another state", `{"detail":{"state":["running"]}}`, terminated, false, ""},
		{"nested detail on an event without the field", `{"detail":{"state":["terminated"]}}`, warning, false, ""},
		{"a list field contains the value", `{"resources":["arn:aws:ec2:us-east-1:000000000000:instance/i-0123456789abcdef0"]}`, warning, true, ""},
		{"a list field lacks the value", `{"resources":["arn:aws:ec2:us-east-1:000000000000:instance/i-1"]}`, warning, false, ""},
		{"account and region", `{"account":["000000000000"],"region":["us-east-1"]}`, warning, true, ""},
		{"a field the event lacks", `{"source":["aws.ec2"],"nope":["x"]}`, warning, false, ""},
		{"prefix matching", `{"source":[{"prefix":"aws."}]}`, warning, false, "only exact string values"},
		{"numbers", `{"detail":{"state":[16]}}`, terminated, false, "only exact string values"},
		{"a bare value", `{"source":"aws.ec2"}`, warning, false, "want a list of values or an object"},
		{"an empty list", `{"source":[]}`, warning, false, "empty list"},
		{"an empty object", `{"detail":{}}`, warning, false, "empty pattern object"},
		{"not an object", `["aws.ec2"]`, warning, false, "not a JSON object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := matchPattern([]byte(tt.pattern), tt.event)
			if tt.err == "" && err != nil || tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
				t.Fatalf("error %v, want one containing %q", err, tt.err)
			}
			if got != tt.want {
				t.Errorf("matched %v, want %v", got, tt.want)
			}
		})
	}
}

// A queue gets a rule's notices only when its policy lets EventBridge send for that rule.
func TestAdmitsRule(t *testing.T) {
	const (
		queue = "arn:aws:sqs:us-east-1:000000000000:t-ec2-events"
		rule  = "arn:aws:events:us-east-1:000000000000:rule/default/t-ec2-events"
	)
	sortie, _ := infra.RuleQueuePolicy(queue, rule)
	other, _ := infra.RuleQueuePolicy(queue, "arn:aws:events:us-east-1:000000000000:rule/default/other")
	fromTopic, _ := infra.QueuePolicy(queue, "arn:aws:sns:us-east-1:000000000000:t-job-submitted")
	policy := func(statements string) string { return `{"Version":"2012-10-17","Statement":[` + statements + `]}` }
	tests := []struct {
		name   string
		policy string
		ok     bool
	}{
		{"infra up's policy", string(sortie), true},
		{"no policy", "", false},
		{"another rule's", string(other), false},
		{"a topic's", string(fromTopic), false},
		{"open to everyone", policy(`{"Effect":"Allow","Principal":"*","Action":"sqs:SendMessage","Resource":"` + queue + `"}`), true},
		{"for another queue", policy(`{"Effect":"Allow","Principal":{"Service":"events.amazonaws.com"},"Action":"sqs:SendMessage","Resource":"` + queue + `-dlq"}`), false},
		{"another action", policy(`{"Effect":"Allow","Principal":{"Service":"events.amazonaws.com"},"Action":"sqs:ReceiveMessage","Resource":"` + queue + `"}`), false},
		{"allowed, then denied", policy(`{"Effect":"Allow","Principal":{"Service":"events.amazonaws.com"},"Action":"sqs:SendMessage","Resource":"` + queue + `"},` +
			`{"Effect":"Deny","Principal":"*","Action":"sqs:*","Resource":"*"}`), false},
		{"allowed without a condition", policy(`{"Effect":"Allow","Principal":{"Service":["sns.amazonaws.com","events.amazonaws.com"]},"Action":"sqs:SendMessage","Resource":"` + queue + `"}`), true},
		{"not JSON", "{", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := admitsRule(tt.policy, queue, rule); (err == nil) != tt.ok {
				t.Errorf("admitsRule = %v, want admitted %v", err, tt.ok)
			}
		})
	}
}
