package infra

import (
	"strings"
	"testing"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/ec2events"
)

// The Terraform routes EC2's notices as `infra up` does: a rule on the default bus named
// EC2EventsRuleName with ec2events.Pattern, one target (EC2EventsTargetID) on the queue
// EC2EventsQueueName, and the queue policy RuleQueuePolicy admitting only that rule. The
// queue and its DLQ are checked with the others (TestTerraformMatchesGenerators), the
// monitor's grants on them by TestTerraformLeastPrivilege.
func TestTerraformEC2Events(t *testing.T) {
	topo := bus.Topology{Prefix: "prodstack"}
	m := loadStack(t, topo.Prefix, nil)
	queueARN := "arn:aws:sqs:" + m.Region + ":" + tfAccount + ":" + topo.EC2EventsQueueName()

	rules := m.ResourcesOf("aws_cloudwatch_event_rule")
	if len(rules) != 1 {
		t.Fatalf("%d event rules, want 1", len(rules))
	}
	rule := rules[0]
	if got := str(t, rule, "name"); got != topo.EC2EventsRuleName() {
		t.Errorf("rule %s, want %s", got, topo.EC2EventsRuleName())
	}
	if p := str(t, rule, "event_pattern"); !samePattern(p, ec2events.Pattern()) {
		t.Errorf("event_pattern\n%s\nwant ec2events.Pattern()\n%s", p, ec2events.Pattern())
	}
	for _, attr := range []string{"event_bus_name", "is_enabled", "state"} {
		if _, ok := rule.Body.Attributes[attr]; ok {
			t.Errorf("rule sets %s: want the default bus, enabled", attr)
		}
	}
	ruleARN := str(t, rule, "arn")

	targets := m.ResourcesOf("aws_cloudwatch_event_target")
	if len(targets) != 1 {
		t.Fatalf("%d event targets, want 1", len(targets))
	}
	tg := targets[0]
	if str(t, tg, "rule") != topo.EC2EventsRuleName() || str(t, tg, "target_id") != EC2EventsTargetID || str(t, tg, "arn") != queueARN {
		t.Errorf("target %s %s → %s, want %s %s → %s", str(t, tg, "rule"), str(t, tg, "target_id"), str(t, tg, "arn"),
			topo.EC2EventsRuleName(), EC2EventsTargetID, queueARN)
	}

	pols := m.Instances("aws_sqs_queue_policy", "from_rule")
	if len(pols) != 1 {
		t.Fatalf("%d rule queue policies, want 1", len(pols))
	}
	if url := str(t, pols[0], "queue_url"); !strings.HasSuffix(url, "/"+topo.EC2EventsQueueName()) {
		t.Errorf("policy on %s, want the queue %s", url, topo.EC2EventsQueueName())
	}
	want, err := RuleQueuePolicy(queueARN, ruleARN)
	if err != nil {
		t.Fatal(err)
	}
	if p := str(t, pols[0], "policy"); !sameJSON(p, string(want)) {
		t.Errorf("queue policy\n%s\nwant infra.RuleQueuePolicy's\n%s", p, want)
	}
	for _, i := range m.Instances("aws_sqs_queue_policy", "from_topic") {
		if strings.HasSuffix(str(t, i, "queue_url"), "/"+topo.EC2EventsQueueName()) {
			t.Error("the EC2 events queue also admits a topic")
		}
	}
}
