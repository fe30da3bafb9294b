package infra

import (
	"context"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	ebtypes "github.com/aws/aws-sdk-go-v2/service/eventbridge/types"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/ec2events"
	"github.com/sortie-fleet/sortie/pkg/tags"
)

// putRule makes a rule as someone else would: a pattern of another source, tagged for
// stack unless stack is "".
func putRule(t *testing.T, s stack, name, stack string) {
	t.Helper()
	in := &eventbridge.PutRuleInput{Name: aws.String(name), EventPattern: aws.String(`{"source":["aws.s3"]}`)}
	if stack != "" {
		in.Tags = []ebtypes.Tag{{Key: aws.String(tags.Stack), Value: aws.String(stack)}}
	}
	if _, err := s.c.EventBridge.PutRule(context.Background(), in); err != nil {
		t.Fatal(err)
	}
}

func (s stack) rule(t *testing.T, name string) *eventbridge.DescribeRuleOutput {
	t.Helper()
	out, err := s.c.EventBridge.DescribeRule(context.Background(), &eventbridge.DescribeRuleInput{Name: aws.String(name)})
	if err != nil {
		t.Fatalf("DescribeRule %s: %v", name, err)
	}
	return out
}

// Up routes EC2's notices: a rule with the package's pattern, tagged, whose one target is
// the stack's EC2 events queue, which redrives to its DLQ and admits only that rule.
func TestUpRoutesEC2Events(t *testing.T) {
	ctx := context.Background()
	s := newStack(t)
	topo := bus.Topology{Prefix: uniquePrefix(t)}
	up(t, s, topo)

	rule := s.rule(t, topo.EC2EventsRuleName())
	ruleARN := aws.ToString(rule.Arn)
	if !samePattern(aws.ToString(rule.EventPattern), ec2events.Pattern()) {
		t.Errorf("pattern %s, want %s", aws.ToString(rule.EventPattern), ec2events.Pattern())
	}
	if rule.State != ebtypes.RuleStateEnabled || aws.ToString(rule.EventBusName) != "default" {
		t.Errorf("rule %s on bus %q, want ENABLED on the default bus", rule.State, aws.ToString(rule.EventBusName))
	}
	o, err := stackTagger{c: s.c}.ruleOwner(ctx, ruleARN)
	if err != nil || o.stack != topo.Prefix {
		t.Errorf("rule owner %s (%v), want %s=%s", o, err, tags.Stack, topo.Prefix)
	}

	q, dlq := s.queueAttributes(t, topo.EC2EventsQueueName()), s.queueAttributes(t, bus.DLQName(topo.EC2EventsQueueName()))
	targets, err := listTargets(ctx, s.c.EventBridge, topo.EC2EventsRuleName())
	if err != nil {
		t.Fatal(err)
	}
	if len(targets) != 1 || aws.ToString(targets[0].Id) != EC2EventsTargetID || aws.ToString(targets[0].Arn) != q["QueueArn"] {
		t.Errorf("targets %+v, want only %s → %s", targets, EC2EventsTargetID, q["QueueArn"])
	}
	redrive, _ := RedrivePolicy(dlq["QueueArn"], bus.MaxReceiveCount)
	policy, _ := RuleQueuePolicy(q["QueueArn"], ruleARN)
	for k, want := range map[string]string{
		"RedrivePolicy": string(redrive), "Policy": string(policy),
		"VisibilityTimeout": "60", "MessageRetentionPeriod": "345600", "ReceiveMessageWaitTimeSeconds": "20",
	} {
		if q[k] != want {
			t.Errorf("queue %s = %s, want %s", k, q[k], want)
		}
	}
	if dlq["MessageRetentionPeriod"] != "1209600" || dlq["Policy"] != "" || dlq["RedrivePolicy"] != "" {
		t.Errorf("DLQ attributes %v", settings(dlq))
	}
	for name, o := range owners(t, s, topo) {
		if strings.HasPrefix(name, topo.EC2EventsQueueName()) && o.stack != topo.Prefix {
			t.Errorf("%s: %s", name, o)
		}
	}

	t.Run("down removes them", func(t *testing.T) {
		down(t, s, topo)
		_, err := s.c.EventBridge.DescribeRule(ctx, &eventbridge.DescribeRuleInput{Name: aws.String(topo.EC2EventsRuleName())})
		if !awsx.IsNotFound(err) {
			t.Errorf("rule after down: %v", err)
		}
		if left := s.queuesWithPrefix(t, topo.EC2EventsQueueName()); len(left) != 0 {
			t.Errorf("queues left: %v", left)
		}
	})
}

func TestUpRepairsEC2EventsDrift(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name   string
		kind   Kind
		target func(bus.Topology) string
		drift  func(t *testing.T, s stack, topo bus.Topology)
		detail string
	}{
		{
			name: "rule pattern", kind: KindRule, target: bus.Topology.EC2EventsRuleName,
			drift: func(t *testing.T, s stack, topo bus.Topology) {
				t.Helper()
				if _, err := s.c.EventBridge.PutRule(ctx, &eventbridge.PutRuleInput{Name: aws.String(topo.EC2EventsRuleName()), EventPattern: aws.String(`{"source":"aws.ec2"}`)}); err != nil {
					t.Fatal(err)
				}
			},
			detail: "EventPattern changed",
		},
		{
			name: "rule disabled", kind: KindRule, target: bus.Topology.EC2EventsRuleName,
			drift: func(t *testing.T, s stack, topo bus.Topology) {
				t.Helper()
				if _, err := s.c.EventBridge.PutRule(ctx, &eventbridge.PutRuleInput{Name: aws.String(topo.EC2EventsRuleName()), EventPattern: aws.String(ec2events.Pattern()), State: ebtypes.RuleStateDisabled}); err != nil {
					t.Fatal(err)
				}
			},
			detail: "State DISABLED→ENABLED",
		},
		{
			name: "target elsewhere", kind: KindRuleTarget,
			target: func(topo bus.Topology) string { return topo.EC2EventsRuleName() + " -> " + topo.EC2EventsQueueName() },
			drift: func(t *testing.T, s stack, topo bus.Topology) {
				t.Helper()
				if _, err := s.c.EventBridge.PutTargets(ctx, &eventbridge.PutTargetsInput{Rule: aws.String(topo.EC2EventsRuleName()), Targets: []ebtypes.Target{
					{Id: aws.String(EC2EventsTargetID), Arn: aws.String("arn:aws:sqs:us-east-1:000000000000:somewhere-else")},
				}}); err != nil {
					t.Fatal(err)
				}
			},
			detail: "target arn:aws:sqs:us-east-1:000000000000:somewhere-else→",
		},
		{
			name: "queue policy", kind: KindEventsQueue, target: bus.Topology.EC2EventsQueueName,
			drift: func(t *testing.T, s stack, topo bus.Topology) {
				t.Helper()
				setQueueAttribute("Policy", `{"Version":"2012-10-17","Statement":[]}`)(t, s, topo.EC2EventsQueueName())
			},
			detail: "Policy changed",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStack(t)
			topo := bus.Topology{Prefix: uniquePrefix(t)}
			up(t, s, topo)
			tt.drift(t, s, topo)
			r := up(t, s, topo)
			var updated []Line
			for _, l := range r.Lines {
				if l.Action == Updated {
					updated = append(updated, l)
				}
			}
			if len(updated) != 1 || updated[0].Kind != tt.kind || updated[0].Name != tt.target(topo) || !strings.HasPrefix(updated[0].Detail, tt.detail) {
				t.Fatalf("want exactly %s %s updated (%s), got:\n%s", tt.kind, tt.target(topo), tt.detail, r)
			}
			wantAll(t, up(t, s, topo), Exists)
		})
	}
}

func TestSamePattern(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{ec2events.Pattern(), ec2events.Pattern(), true},
		{`{"source":["aws.ec2"],"detail-type":["x"]}`, "{\"detail-type\": [\"x\"],\n \"source\": [\"aws.ec2\"]}", true},
		{`{"source":["aws.ec2"]}`, `{"source":"aws.ec2"}`, false}, // EventBridge wants a list
		{`{"detail-type":["a","b"]}`, `{"detail-type":["a"]}`, false},
		{`{"source":["aws.ec2"]}`, ``, false},
	}
	for _, tt := range tests {
		if got := samePattern(tt.a, tt.b); got != tt.want {
			t.Errorf("samePattern(%s, %s) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}
