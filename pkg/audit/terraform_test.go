package audit_test

import (
	"testing"

	"github.com/zclconf/go-cty/cty"

	"github.com/sortie-fleet/sortie/pkg/audit"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/tfmodule"
)

// The roles deployments/terraform creates pass the audit's least-privilege rule: what the
// Terraform grants is what `sortie audit` accepts on a real stack.
func TestTerraformRolesPassAudit(t *testing.T) {
	topo := bus.Topology{Prefix: "prodstack"}
	m := loadTerraform(t, topo)
	docs := map[string][]audit.PolicyDoc{}
	for _, i := range m.ResourcesOf("aws_iam_role_policy") {
		role, err := i.String("role")
		if err != nil {
			t.Fatal(err)
		}
		doc, err := i.String("policy")
		if err != nil {
			t.Fatal(err)
		}
		docs[role] = append(docs[role], audit.PolicyDoc{Name: i.Name + "[" + i.Key + "]", Document: doc})
	}
	for _, role := range audit.StackRoles(topo) {
		if len(docs[role]) == 0 {
			t.Errorf("role %s: no policy in the Terraform", role)
			continue
		}
		if f := audit.CheckRolePolicies(docs[role]); f.Status != audit.Compliant {
			t.Errorf("role %s: %s %s", role, f.Status, f.Reason)
		}
	}
}

func loadTerraform(t *testing.T, topo bus.Topology) *tfmodule.Module {
	t.Helper()
	list := func(s string) cty.Value { return cty.ListVal([]cty.Value{cty.StringVal(s)}) }
	m, err := tfmodule.Load("../../deployments/terraform", "123456789012", map[string]cty.Value{
		"prefix": cty.StringVal(topo.Prefix), "vpc_id": cty.StringVal("vpc-1"), "subnet_ids": list("subnet-1"),
		"image_repository": cty.StringVal("r"), "image_tag": cty.StringVal("v1"),
		"work_buckets": list("in"), "work_queues": list("work"), "fetch_buckets": list("tools"),
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// The Terraform's EC2 events rule and queue policy pass the audit's pattern and
// rule-sends-only rules.
func TestTerraformEC2EventsPassAudit(t *testing.T) {
	topo := bus.Topology{Prefix: "prodstack"}
	m := loadTerraform(t, topo)
	rules := m.ResourcesOf("aws_cloudwatch_event_rule")
	if len(rules) != 1 {
		t.Fatalf("%d event rules, want 1", len(rules))
	}
	pattern, err := rules[0].String("event_pattern")
	if err != nil {
		t.Fatal(err)
	}
	if f := audit.CheckEventPattern(pattern); f.Status != audit.Compliant {
		t.Errorf("event_pattern: %s %s", f.Status, f.Reason)
	}
	ruleARN, err := rules[0].String("arn")
	if err != nil {
		t.Fatal(err)
	}
	pols := m.Instances("aws_sqs_queue_policy", "from_rule")
	if len(pols) != 1 {
		t.Fatalf("%d rule queue policies, want 1", len(pols))
	}
	doc, err := pols[0].String("policy")
	if err != nil {
		t.Fatal(err)
	}
	if f := audit.CheckRuleQueuePolicy(doc, ruleARN); f.Status != audit.Compliant {
		t.Errorf("queue policy: %s %s", f.Status, f.Reason)
	}
}
