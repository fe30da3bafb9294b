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
	list := func(s string) cty.Value { return cty.ListVal([]cty.Value{cty.StringVal(s)}) }
	m, err := tfmodule.Load("../../deployments/terraform", "123456789012", map[string]cty.Value{
		"prefix": cty.StringVal(topo.Prefix), "vpc_id": cty.StringVal("vpc-1"), "subnet_ids": list("subnet-1"),
		"image_repository": cty.StringVal("r"), "image_tag": cty.StringVal("v1"),
		"work_buckets": list("in"), "work_queues": list("work"), "fetch_buckets": list("tools"),
	})
	if err != nil {
		t.Fatal(err)
	}
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
