package devstack

import (
	"context"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/zclconf/go-cty/cty"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/iampolicy"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
	"github.com/sortie-fleet/sortie/pkg/tfmodule"
)

// The least-privilege proof: the Terraform's policies, evaluated for this stack's prefix and
// the demo's work bucket and queue, must allow every call the services made.

// stackPolicies evaluates deployments/terraform for the e2e stack and returns each role's
// policy by role name.
func (e *e2e) stackPolicies(t *testing.T, demo Demo) map[string]iampolicy.Policy {
	t.Helper()
	keyName := strings.TrimSuffix(path.Base(e.SSHKey), ".pem")
	list := func(s string) cty.Value { return cty.ListVal([]cty.Value{cty.StringVal(s)}) }
	m, err := tfmodule.Load("../../deployments/terraform", localcloud.Account, map[string]cty.Value{
		"prefix":           cty.StringVal(e.Topology.Prefix),
		"vpc_id":           cty.StringVal("vpc-local"),
		"subnet_ids":       list("subnet-local"),
		"image_repository": cty.StringVal("local"),
		"image_tag":        cty.StringVal("test"),
		"ssh_key_name":     cty.StringVal(keyName),
		"work_buckets":     list(demo.Bucket),
		"work_queues":      list(demo.Queue),
	})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]iampolicy.Policy{}
	for _, i := range m.ResourcesOf("aws_iam_role_policy") {
		doc, err := i.String("policy")
		if err != nil {
			t.Fatal(err)
		}
		role, err := i.String("role")
		if err != nil {
			t.Fatal(err)
		}
		if out[role], err = iampolicy.Parse([]byte(doc)); err != nil {
			t.Fatalf("%s: %v", role, err)
		}
	}
	return out
}

// checkCalls fails on every recorded call that the caller's role would be refused.
func (e *e2e) checkCalls(t *testing.T, demo Demo) {
	t.Helper()
	calls := e.calls
	// Tag conditions need the instances' tags: ask the local cloud (unrecorded).
	tagsOf := e.instanceTags(t)
	calls.ResourceTags(func(id string) map[string]string { return tagsOf[id] })
	policies := e.stackPolicies(t, demo)
	recorded := calls.Calls()
	if len(recorded) == 0 {
		t.Fatal("no AWS call recorded")
	}
	// The workers on the instances, separate processes, logged theirs to a file.
	workers, err := awsx.ReadCallLog(e.workerCalls)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range workers {
		recorded = append(recorded, c.WithAccount(localcloud.Account))
	}
	byService := map[string]int{}
	denied := map[string]bool{}
	for _, c := range recorded {
		byService[c.Service]++
		role := e.Topology.RoleName(c.Service)
		if c.Service == "worker" {
			role = e.Topology.WorkerRoleName()
		}
		p, ok := policies[role]
		if !ok {
			t.Fatalf("no policy for %s's role %s", c.Service, role)
		}
		for _, res := range c.Resources {
			d := p.Decide(iampolicy.Request{Action: c.Action, Resource: res, Context: c.Context})
			if !d.Allowed {
				denied[fmt.Sprintf("%s (%s): %s on %s with %v", c.Service, role, c.Action, res, c.Context)] = true
			}
		}
	}
	for _, d := range slices.Sorted(maps.Keys(denied)) {
		t.Errorf("not allowed by the Terraform: %s", d)
	}
	t.Logf("%d calls checked: %v", len(recorded), byService)
	if len(byService) != 6 {
		t.Errorf("calls recorded for %v, want the five services and the worker", slices.Sorted(maps.Keys(byService)))
	}
}

// instanceTags maps every instance of the local cloud to its tags.
func (e *e2e) instanceTags(t *testing.T) map[string]map[string]string {
	t.Helper()
	out := map[string]map[string]string{}
	p := ec2.NewDescribeInstancesPaginator(e.EC2, &ec2.DescribeInstancesInput{})
	for p.HasMorePages() {
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page.Reservations {
			for _, in := range r.Instances {
				tags := map[string]string{}
				for _, tg := range in.Tags {
					tags[aws.ToString(tg.Key)] = aws.ToString(tg.Value)
				}
				out[aws.ToString(in.InstanceId)] = tags
			}
		}
	}
	return out
}
