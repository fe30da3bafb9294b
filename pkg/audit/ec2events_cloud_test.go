package audit

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	ebtypes "github.com/aws/aws-sdk-go-v2/service/eventbridge/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/infra"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
)

// TestAuditEC2EventsOnLocalCloud audits the routing of EC2's notices as infra up leaves it
// on the local cloud (kumo's EventBridge and SQS), then breaks one thing at a time, each
// mended by infra up again: exactly the broken resource and rule are NON_COMPLIANT.
func TestAuditEC2EventsOnLocalCloud(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := awsx.ForEndpoint(cloudtest.NewCloud(t, localcloud.Options{}).URL())
	eb, sqsc := eventbridge.NewFromConfig(cfg), sqs.NewFromConfig(cfg)
	clients := Clients{EventBridge: eb, SQS: sqsc}
	topo := bus.Topology{Prefix: cloudtest.Unique("aue")}
	rule, queue := topo.EC2EventsRuleName(), topo.EC2EventsQueueName()

	up := func(t *testing.T) {
		t.Helper()
		if _, err := infra.Up(ctx, infra.NewClients(cfg), topo); err != nil {
			t.Fatal(err)
		}
	}
	audit := func(t *testing.T) Report {
		t.Helper()
		r, err := Audit(ctx, clients, Target{Topology: topo})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	// fails wants exactly one NON_COMPLIANT finding: typ id rule, its reason containing reason.
	fails := func(t *testing.T, typ ResourceType, id string, rl Rule, reason string) Report {
		t.Helper()
		r := audit(t)
		if n := r.NonCompliant(); n != 1 {
			t.Errorf("%d non-compliant findings, want 1:\n%s", n, r)
		}
		if f := r.Findings(typ, id)[rl]; f.Status != NonCompliant || !strings.Contains(f.Reason, reason) {
			t.Errorf("%s %s %s: %+v, want NON_COMPLIANT with %q:\n%s", typ, id, rl, f, reason, r)
		}
		return r
	}
	queueURL := func(t *testing.T, name string) *string {
		t.Helper()
		out, err := sqsc.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String(name)})
		if err != nil {
			t.Fatal(err)
		}
		return out.QueueUrl
	}
	describe := func(t *testing.T) *eventbridge.DescribeRuleOutput {
		t.Helper()
		out, err := eb.DescribeRule(ctx, &eventbridge.DescribeRuleInput{Name: aws.String(rule)})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	setPolicy := func(t *testing.T, doc string) {
		t.Helper()
		if _, err := sqsc.SetQueueAttributes(ctx, &sqs.SetQueueAttributesInput{QueueUrl: queueURL(t, queue),
			Attributes: map[string]string{string(sqstypes.QueueAttributeNamePolicy): doc}}); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("a stack without the routing", func(t *testing.T) {
		r := audit(t)
		for _, id := range []struct {
			typ ResourceType
			id  string
		}{{TypeRule, rule}, {TypeQueue, queue}} {
			got := r.Findings(id.typ, id.id)
			f := got[RuleExists]
			if len(got) != 1 || f.Status != NonCompliant || !strings.Contains(f.Reason, "the monitor will not hear of spot interruptions") ||
				!strings.Contains(f.Reason, "sortie infra up") {
				t.Errorf("%s %s: %+v, want only exists NON_COMPLIANT saying what it means and what to run:\n%s", id.typ, id.id, got, r)
			}
		}
	})

	up(t)
	t.Run("infra up's routing passes", func(t *testing.T) {
		r := audit(t)
		t.Logf("report:\n%s", r)
		want := map[ResourceType][]Rule{
			TypeRule:  {RuleEnabled, RuleEC2EventsPattern, RuleTargetsQueue},
			TypeQueue: {RuleDeadLetterQueue, RuleRuleSendsOnly},
		}
		ids := map[ResourceType]string{TypeRule: rule, TypeQueue: queue}
		for typ, rules := range want {
			got := r.Findings(typ, ids[typ])
			if len(got) != len(rules) {
				t.Errorf("%s %s: %d findings, want %d:\n%s", typ, ids[typ], len(got), len(rules), r)
			}
			for _, rl := range rules {
				if got[rl].Status != Compliant {
					t.Errorf("%s %s %s: %+v, want COMPLIANT", typ, ids[typ], rl, got[rl])
				}
			}
		}
		// The policy is judged against the ARN DescribeRule gives (kumo's rule/default/<name>).
		if arn := aws.ToString(describe(t).Arn); !strings.Contains(r.Findings(TypeQueue, queue)[RuleRuleSendsOnly].Reason, arn) {
			t.Errorf("rule-sends-only does not name the rule's ARN %s:\n%s", arn, r)
		}
	})

	t.Run("rule disabled", func(t *testing.T) {
		// kumo has no DisableRule: PutRule with the state, as the console's edit does.
		have := describe(t)
		if _, err := eb.PutRule(ctx, &eventbridge.PutRuleInput{Name: aws.String(rule), EventPattern: have.EventPattern, State: ebtypes.RuleStateDisabled}); err != nil {
			t.Fatal(err)
		}
		fails(t, TypeRule, rule, RuleEnabled, "state DISABLED, want ENABLED")
		up(t)
	})

	t.Run("pattern narrowed to spot warnings", func(t *testing.T) {
		have := describe(t)
		if _, err := eb.PutRule(ctx, &eventbridge.PutRuleInput{Name: aws.String(rule), State: have.State,
			EventPattern: aws.String(`{"source":["aws.ec2"],"detail-type":["EC2 Spot Instance Interruption Warning"]}`)}); err != nil {
			t.Fatal(err)
		}
		fails(t, TypeRule, rule, RuleEC2EventsPattern, `detail-type does not admit "EC2 Instance State-change Notification"`)
		up(t)
	})

	t.Run("target removed", func(t *testing.T) {
		if _, err := eb.RemoveTargets(ctx, &eventbridge.RemoveTargetsInput{Rule: aws.String(rule), Ids: []string{infra.EC2EventsTargetID}}); err != nil {
			t.Fatal(err)
		}
		fails(t, TypeRule, rule, RuleTargetsQueue, "no targets")
		up(t)
	})

	t.Run("queue policy open to *", func(t *testing.T) {
		setPolicy(t, `{"Version":"2012-10-17","Statement":[{"Sid":"Open","Effect":"Allow","Principal":"*","Action":"sqs:SendMessage","Resource":"*"}]}`)
		fails(t, TypeQueue, queue, RuleRuleSendsOnly, "Open: lets any principal (*) send")
		up(t)
	})

	t.Run("queue policy without the SourceArn condition", func(t *testing.T) {
		setPolicy(t, `{"Version":"2012-10-17","Statement":[{"Sid":"Any","Effect":"Allow","Principal":{"Service":"events.amazonaws.com"},"Action":"sqs:SendMessage","Resource":"*"}]}`)
		fails(t, TypeQueue, queue, RuleRuleSendsOnly, "Any: no condition aws:SourceArn = "+aws.ToString(describe(t).Arn))
		up(t)
	})

	t.Run("DLQ deleted", func(t *testing.T) {
		if _, err := sqsc.DeleteQueue(ctx, &sqs.DeleteQueueInput{QueueUrl: queueURL(t, bus.DLQName(queue))}); err != nil {
			t.Fatal(err)
		}
		fails(t, TypeQueue, queue, RuleDeadLetterQueue, "DLQ "+bus.DLQName(queue)+" does not exist")
		up(t)
	})

	t.Run("queue deleted", func(t *testing.T) {
		if _, err := sqsc.DeleteQueue(ctx, &sqs.DeleteQueueInput{QueueUrl: queueURL(t, queue)}); err != nil {
			t.Fatal(err)
		}
		r := fails(t, TypeQueue, queue, RuleExists, "queue does not exist: the monitor will not hear of spot interruptions")
		if f := r.Findings(TypeRule, rule)[RuleTargetsQueue]; f.Status != NotApplicable {
			t.Errorf("targets-queue with the queue gone: %+v, want NOT_APPLICABLE", f)
		}
		up(t)
	})

	t.Run("rule deleted", func(t *testing.T) {
		// AWS refuses to delete a rule with targets (kumo does not): remove them first.
		if _, err := eb.RemoveTargets(ctx, &eventbridge.RemoveTargetsInput{Rule: aws.String(rule), Ids: []string{infra.EC2EventsTargetID}}); err != nil {
			t.Fatal(err)
		}
		if _, err := eb.DeleteRule(ctx, &eventbridge.DeleteRuleInput{Name: aws.String(rule)}); err != nil {
			t.Fatal(err)
		}
		r := fails(t, TypeRule, rule, RuleExists, "rule does not exist: EC2's notices reach no queue; the monitor will not hear of spot interruptions")
		if f := r.Findings(TypeQueue, queue)[RuleRuleSendsOnly]; f.Status != NotApplicable {
			t.Errorf("rule-sends-only with the rule gone: %+v, want NOT_APPLICABLE", f)
		}
		up(t)
	})

	t.Run("infra up mends every case", func(t *testing.T) {
		if r := audit(t); r.NonCompliant() != 0 || r.Count(Compliant) != 5 {
			t.Errorf("want 5 compliant findings:\n%s", r)
		}
	})
}
