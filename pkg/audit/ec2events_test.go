package audit

import (
	"context"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	ebtypes "github.com/aws/aws-sdk-go-v2/service/eventbridge/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/smithy-go"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/ec2events"
	"github.com/sortie-fleet/sortie/pkg/infra"
)

func TestCheckEventPattern(t *testing.T) {
	tests := []struct {
		name    string
		pattern string
		want    Status
		reason  string // a part of the finding's reason
	}{
		{"Sortie's own", ec2events.Pattern(), Compliant, `admits source aws.ec2`},
		{"keys reordered, spaced", `{ "detail-type": ["EC2 Instance State-change Notification", "EC2 Spot Instance Interruption Warning"], "source": ["aws.ec2"] }`, Compliant, "admits"},
		{"more sources and detail types", `{"source":["aws.ec2","aws.autoscaling"],"detail-type":["EC2 Spot Instance Interruption Warning","EC2 Instance State-change Notification","EC2 Instance Rebalance Recommendation"]}`, Compliant, "admits"},
		{"an extra detail filter", `{"source":["aws.ec2"],"detail-type":["EC2 Spot Instance Interruption Warning","EC2 Instance State-change Notification"],"detail":{"state":["terminated"]}}`, Compliant, "(filters on detail not judged)"},
		{"no detail-type: every detail type", `{"source":["aws.ec2"]}`, Compliant, "admits"},
		{"spot warnings only", `{"source":["aws.ec2"],"detail-type":["EC2 Spot Instance Interruption Warning"]}`, NonCompliant, `detail-type does not admit "EC2 Instance State-change Notification"`},
		{"state changes only", `{"source":["aws.ec2"],"detail-type":["EC2 Instance State-change Notification"]}`, NonCompliant, `detail-type does not admit "EC2 Spot Instance Interruption Warning"`},
		{"another source", `{"source":["aws.autoscaling"],"detail-type":["EC2 Spot Instance Interruption Warning","EC2 Instance State-change Notification"]}`, NonCompliant, `source does not admit "aws.ec2"`},
		{"a content filter", `{"source":[{"prefix":"aws."}],"detail-type":["EC2 Spot Instance Interruption Warning","EC2 Instance State-change Notification"]}`, NonCompliant, `source "aws.ec2": cannot judge whether {"prefix":"aws."} admits it`},
		{"a content filter beside the value", `{"source":["aws.ec2",{"prefix":"aws."}],"detail-type":["EC2 Spot Instance Interruption Warning","EC2 Instance State-change Notification"]}`, Compliant, "admits"},
		{"$or", `{"$or":[{"source":["aws.ec2"]}]}`, NonCompliant, "cannot judge $or"},
		{"not a list", `{"source":"aws.ec2","detail-type":["EC2 Spot Instance Interruption Warning","EC2 Instance State-change Notification"]}`, NonCompliant, `source: want a list, got "aws.ec2"`},
		{"not JSON", `source=aws.ec2`, NonCompliant, "is not a JSON object"},
		{"empty", ``, NonCompliant, "is not a JSON object"},
		{"null", `null`, NonCompliant, "is not a JSON object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := CheckEventPattern(tt.pattern)
			if f.Rule != RuleEC2EventsPattern || f.Status != tt.want || !strings.Contains(f.Reason, tt.reason) {
				t.Errorf("finding %+v, want %s with %q", f, tt.want, tt.reason)
			}
			if tt.want == NonCompliant && !strings.Contains(f.Reason, "the monitor will not hear of spot interruptions") && !strings.Contains(f.Reason, "not a JSON object") {
				t.Errorf("reason %q does not say what it means", f.Reason)
			}
		})
	}
}

func TestCheckRuleQueuePolicy(t *testing.T) {
	const queueARN = "arn:aws:sqs:us-east-1:000000000000:s-ec2-events"
	const ruleARN = "arn:aws:events:us-east-1:000000000000:rule/s-ec2-events"
	ours, err := infra.RuleQueuePolicy(queueARN, ruleARN)
	if err != nil {
		t.Fatal(err)
	}
	stmt := func(principal, condition string) string {
		s := `{"Sid":"S","Effect":"Allow","Principal":` + principal + `,"Action":"sqs:SendMessage","Resource":"` + queueARN + `"`
		if condition != "" {
			s += `,"Condition":` + condition
		}
		return s + `}`
	}
	doc := func(statements ...string) string {
		return `{"Version":"2012-10-17","Statement":[` + strings.Join(statements, ",") + `]}`
	}
	const events = `{"Service":"events.amazonaws.com"}`
	const bySource = `{"ArnEquals":{"aws:SourceArn":"` + ruleARN + `"}}`
	tests := []struct {
		name   string
		doc    string
		want   Status
		reason string
	}{
		{"infra.RuleQueuePolicy", string(ours), Compliant, "only events.amazonaws.com may send, for " + ruleARN},
		{"StringEquals, and an extra condition", doc(stmt(events, `{"StringEquals":{"aws:SourceArn":"`+ruleARN+`","aws:SourceAccount":"000000000000"}}`)), Compliant, "only"},
		{"a Deny beside it", doc(stmt(events, bySource), `{"Effect":"Deny","Principal":"*","Action":"sqs:*","Resource":"*","Condition":{"Bool":{"aws:SecureTransport":"false"}}}`), Compliant, "only"},
		{"a statement about receiving", doc(stmt(events, bySource), `{"Sid":"R","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::000000000000:role/s-monitor"},"Action":"sqs:ReceiveMessage","Resource":"*"}`), Compliant, "only"},
		{"open to *", doc(stmt(`"*"`, bySource)), NonCompliant, "S: lets any principal (*) send"},
		{"open to AWS *", doc(stmt(`{"AWS":"*"}`, "")), NonCompliant, "S: lets any principal (*) send"},
		{"another service too", doc(stmt(`{"Service":["events.amazonaws.com","sns.amazonaws.com"]}`, bySource)), NonCompliant, "S: lets Service sns.amazonaws.com send"},
		{"an account", doc(stmt(events, bySource), `{"Sid":"Acct","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111111111111:root"},"Action":"sqs:*","Resource":"*"}`), NonCompliant, "Acct: lets AWS arn:aws:iam::111111111111:root send"},
		{"NotPrincipal", doc(`{"Sid":"N","Effect":"Allow","NotPrincipal":{"AWS":"x"},"Action":"sqs:SendMessage","Resource":"*"}`), NonCompliant, "N: NotPrincipal lets every other principal send"},
		{"NotAction covering send", doc(`{"Sid":"NA","Effect":"Allow","Principal":"*","NotAction":"sqs:DeleteQueue","Resource":"*"}`), NonCompliant, "NA: lets any principal (*) send"},
		{"no SourceArn condition", doc(stmt(events, "")), NonCompliant, "S: no condition aws:SourceArn = " + ruleARN},
		{"another rule", doc(stmt(events, `{"ArnEquals":{"aws:SourceArn":"arn:aws:events:us-east-1:000000000000:rule/other"}}`)), NonCompliant, "no condition aws:SourceArn"},
		{"the rule and another", doc(stmt(events, `{"ArnEquals":{"aws:SourceArn":["`+ruleARN+`","arn:aws:events:us-east-1:000000000000:rule/other"]}}`)), NonCompliant, "no condition aws:SourceArn"},
		{"a wildcard", doc(stmt(events, `{"ArnLike":{"aws:SourceArn":"arn:aws:events:*"}}`)), NonCompliant, "no condition aws:SourceArn"},
		{"IfExists", doc(stmt(events, `{"ArnEqualsIfExists":{"aws:SourceArn":"`+ruleARN+`"}}`)), NonCompliant, "no condition aws:SourceArn"},
		{"a condition on another key", doc(stmt(events, `{"ArnEquals":{"aws:SourceAccount":"000000000000"}}`)), NonCompliant, "no condition aws:SourceArn"},
		{"nothing lets EventBridge send", doc(`{"Effect":"Deny","Principal":"*","Action":"sqs:*","Resource":"*"}`), NonCompliant, "no statement lets events.amazonaws.com send"},
		{"no policy", "", NonCompliant, "no queue policy"},
		{"unparsable", "{", NonCompliant, "parsing policy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := CheckRuleQueuePolicy(tt.doc, ruleARN)
			if f.Rule != RuleRuleSendsOnly || f.Status != tt.want || !strings.Contains(f.Reason, tt.reason) {
				t.Errorf("finding %+v, want %s with %q", f, tt.want, tt.reason)
			}
		})
	}
}

func TestCheckTargets(t *testing.T) {
	const queueARN = "arn:aws:sqs:us-east-1:000000000000:s-ec2-events"
	target := func(id, arn string) ebtypes.Target { return ebtypes.Target{Id: aws.String(id), Arn: aws.String(arn)} }
	withInput := target("t", queueARN)
	withInput.InputPath = aws.String("$.detail")
	tests := []struct {
		name    string
		targets []ebtypes.Target
		want    Status
		reason  string
	}{
		{"the queue", []ebtypes.Target{target("sortie-ec2-events", queueARN)}, Compliant, "target sortie-ec2-events → " + queueARN},
		{"the queue among others", []ebtypes.Target{target("log", "arn:aws:logs:us-east-1:000000000000:log-group:x"), target("q", queueARN)}, Compliant, "target q"},
		{"none", nil, NonCompliant, "no targets: the monitor will not hear"},
		{"another queue", []ebtypes.Target{target("q", queueARN+"-x")}, NonCompliant, "no target is " + queueARN + " (targets: q → " + queueARN + "-x)"},
		{"the event rewritten", []ebtypes.Target{withInput}, NonCompliant, "target t to " + queueARN + " rewrites the event"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := CheckTargets(tt.targets, queueARN)
			if f.Rule != RuleTargetsQueue || f.Status != tt.want || !strings.Contains(f.Reason, tt.reason) {
				t.Errorf("finding %+v, want %s with %q", f, tt.want, tt.reason)
			}
		})
	}
}

func TestCheckRedrive(t *testing.T) {
	const dlq = "s-ec2-events-dlq"
	const dlqARN = "arn:aws:sqs:us-east-1:000000000000:" + dlq
	ours, err := infra.RedrivePolicy(dlqARN, 5)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, doc, dlqARN string
		want              Status
		reason            string
	}{
		{"infra.RedrivePolicy", string(ours), dlqARN, Compliant, "dead letters go to " + dlq + " after 5 receives"},
		{"count as a string", `{"deadLetterTargetArn":"` + dlqARN + `","maxReceiveCount":"5"}`, dlqARN, Compliant, "after 5 receives"},
		{"DLQ missing", string(ours), "", NonCompliant, "DLQ " + dlq + " does not exist"},
		{"no redrive policy", "", dlqARN, NonCompliant, "no redrive policy"},
		{"another DLQ", `{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:000000000000:other","maxReceiveCount":5}`, dlqARN, NonCompliant, "redrive policy sends to arn:aws:sqs:us-east-1:000000000000:other, want " + dlqARN},
		{"unparsable", `{`, dlqARN, NonCompliant, "redrive policy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := CheckRedrive(tt.doc, dlq, tt.dlqARN)
			if f.Rule != RuleDeadLetterQueue || f.Status != tt.want || !strings.Contains(f.Reason, tt.reason) {
				t.Errorf("finding %+v, want %s with %q", f, tt.want, tt.reason)
			}
		})
	}
}

func TestCheckRuleState(t *testing.T) {
	for s, want := range map[ebtypes.RuleState]Status{
		ebtypes.RuleStateEnabled:                                  Compliant,
		ebtypes.RuleStateEnabledWithAllCloudtrailManagementEvents: Compliant,
		ebtypes.RuleStateDisabled:                                 NonCompliant,
		"":                                                        NonCompliant,
	} {
		if f := CheckRuleState(s); f.Rule != RuleEnabled || f.Status != want {
			t.Errorf("state %q: %+v, want %s", s, f, want)
		}
	}
}

// routingFake answers the audit's EventBridge and SQS reads for a healthy routing, except
// that the call named by fail answers AccessDenied; ListTargetsByRule always returns the
// same NextToken, as an emulator that ignores it would.
type routingFake struct {
	fail  string
	pages int
}

const fakeRuleARN = "arn:aws:events:us-east-1:000000000000:rule/t-ec2-events"

func (f *routingFake) err(call string) error {
	if f.fail == call {
		return &smithy.GenericAPIError{Code: "AccessDenied", Message: "Access Denied"}
	}
	return nil
}

func (f *routingFake) DescribeRule(context.Context, *eventbridge.DescribeRuleInput, ...func(*eventbridge.Options)) (*eventbridge.DescribeRuleOutput, error) {
	return &eventbridge.DescribeRuleOutput{Arn: aws.String(fakeRuleARN), State: ebtypes.RuleStateEnabled, EventPattern: aws.String(ec2events.Pattern())}, f.err("DescribeRule")
}

func (f *routingFake) ListTargetsByRule(context.Context, *eventbridge.ListTargetsByRuleInput, ...func(*eventbridge.Options)) (*eventbridge.ListTargetsByRuleOutput, error) {
	f.pages++
	return &eventbridge.ListTargetsByRuleOutput{NextToken: aws.String("same"),
		Targets: []ebtypes.Target{{Id: aws.String("q"), Arn: aws.String("arn:aws:sqs:us-east-1:000000000000:t-ec2-events")}}}, f.err("ListTargetsByRule")
}

func (f *routingFake) GetQueueUrl(_ context.Context, in *sqs.GetQueueUrlInput, _ ...func(*sqs.Options)) (*sqs.GetQueueUrlOutput, error) {
	return &sqs.GetQueueUrlOutput{QueueUrl: aws.String("http://q/" + aws.ToString(in.QueueName))}, f.err("GetQueueUrl")
}

func (f *routingFake) GetQueueAttributes(_ context.Context, in *sqs.GetQueueAttributesInput, _ ...func(*sqs.Options)) (*sqs.GetQueueAttributesOutput, error) {
	name := strings.TrimPrefix(aws.ToString(in.QueueUrl), "http://q/")
	arn := "arn:aws:sqs:us-east-1:000000000000:" + name
	policy, _ := infra.RuleQueuePolicy(arn, fakeRuleARN)
	redrive, _ := infra.RedrivePolicy(arn+"-dlq", 5)
	return &sqs.GetQueueAttributesOutput{Attributes: map[string]string{"QueueArn": arn, "Policy": string(policy), "RedrivePolicy": string(redrive)}}, f.err("GetQueueAttributes")
}

// TestAuditEC2EventsReadErrors: a read of the routing that is refused fails the audit,
// naming the resource and the error, rather than passing what it could not see; a
// NextToken that repeats ends the listing of targets.
func TestAuditEC2EventsReadErrors(t *testing.T) {
	target := Target{Topology: bus.Topology{Prefix: "t"}}
	t.Run("healthy", func(t *testing.T) {
		f := &routingFake{}
		r, err := Audit(context.Background(), Clients{EventBridge: f, SQS: f}, target)
		if err != nil {
			t.Fatal(err)
		}
		if r.Count(Compliant) != 5 || r.NonCompliant() != 0 {
			t.Errorf("want 5 compliant findings:\n%s", r)
		}
		if f.pages != 2 {
			t.Errorf("ListTargetsByRule called %d times, want 2 (the token repeated)", f.pages)
		}
	})
	for call, resource := range map[string]string{
		"DescribeRule": "rule t-ec2-events", "ListTargetsByRule": "rule t-ec2-events",
		"GetQueueUrl": "queue t-ec2-events", "GetQueueAttributes": "queue t-ec2-events",
	} {
		t.Run(call, func(t *testing.T) {
			f := &routingFake{fail: call}
			_, err := Audit(context.Background(), Clients{EventBridge: f, SQS: f}, target)
			if err == nil || !strings.Contains(err.Error(), "auditing "+resource) || !strings.Contains(err.Error(), "AccessDenied") {
				t.Fatalf("want an error naming %s and AccessDenied, got %v", resource, err)
			}
		})
	}
}
