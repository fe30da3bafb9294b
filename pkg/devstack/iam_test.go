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
	"github.com/sortie-fleet/sortie/pkg/bus"
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
		p, err := iampolicy.Parse([]byte(doc))
		if err != nil {
			t.Fatalf("%s: %v", role, err)
		}
		p.Statement = append(out[role].Statement, p.Statement...) // a role's policies together
		out[role] = p
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
	for _, c := range recorded {
		byService[c.Service]++
	}
	for _, d := range deniedCalls(t, e.Topology, policies, recorded) {
		t.Errorf("not allowed by the Terraform: %s", d)
	}
	t.Logf("%d calls checked: %v", len(recorded), byService)
	if len(byService) != 6 {
		t.Errorf("calls recorded for %v, want the five services and the worker", slices.Sorted(maps.Keys(byService)))
	}
}

// deniedCalls lists, once each, the calls that the caller's role would be refused.
func deniedCalls(t *testing.T, topo bus.Topology, policies map[string]iampolicy.Policy, calls []awsx.Call) []string {
	t.Helper()
	denied := map[string]bool{}
	for _, c := range calls {
		role := topo.RoleName(c.Service)
		if c.Service == bus.WorkerProducer {
			role = topo.WorkerRoleName()
		}
		p, ok := policies[role]
		if !ok {
			t.Fatalf("no policy for %s's role %s", c.Service, role)
		}
		for _, res := range c.Resources {
			if d := p.Decide(iampolicy.Request{Action: c.Action, Resource: res, Context: c.Context}); !d.Allowed {
				denied[fmt.Sprintf("%s (%s): %s on %s with %v", c.Service, role, c.Action, res, c.Context)] = true
			}
		}
	}
	return slices.Sorted(maps.Keys(denied))
}

// The check fails on what the policies do not allow: calls a service could make by mistake
// or under attack, recorded as the recorder would.
func TestDeniedCalls(t *testing.T) {
	e := &e2e{Stack: &Stack{Topology: bus.Topology{Prefix: "e2e"}, SSHKey: "s3://e2e-secrets/keys/sortie-dev.pem"}}
	policies := e.stackPolicies(t, DemoFor("e2e"))
	const R, A = "us-east-1", localcloud.Account
	inst := "arn:aws:ec2:" + R + ":" + A + ":instance/i-0123456789abcdef0"
	for _, c := range []struct {
		name    string
		call    awsx.Call
		allowed bool
	}{
		{"reaper terminates its stack's instance", awsx.Call{Service: bus.Reaper, Action: "ec2:TerminateInstances", Resources: []string{inst},
			Context: map[string][]string{"aws:ResourceTag/sortie:stack": {"e2e"}}}, true},
		{"reaper terminates another stack's instance", awsx.Call{Service: bus.Reaper, Action: "ec2:TerminateInstances", Resources: []string{inst},
			Context: map[string][]string{"aws:ResourceTag/sortie:stack": {"prod"}}}, false},
		{"monitor terminates", awsx.Call{Service: bus.Monitor, Action: "ec2:TerminateInstances", Resources: []string{inst},
			Context: map[string][]string{"aws:ResourceTag/sortie:stack": {"e2e"}}}, false},
		{"provisioner launches untagged", awsx.Call{Service: bus.Provisioner, Action: "ec2:RunInstances",
			Resources: []string{"arn:aws:ec2:" + R + ":" + A + ":instance/*"}}, false},
		{"planner publishes JobFinished", awsx.Call{Service: bus.Planner, Action: "sns:Publish",
			Resources: []string{"arn:aws:sns:" + R + ":" + A + ":e2e-job-finished"}}, false},
		{"monitor writes another namespace", awsx.Call{Service: bus.Monitor, Action: "cloudwatch:PutMetricData", Resources: []string{"*"},
			Context: map[string][]string{"cloudwatch:namespace": {"AWS/EC2"}}}, false},
		{"worker reads the login key", awsx.Call{Service: bus.WorkerProducer, Action: "s3:GetObject",
			Resources: []string{"arn:aws:s3:::e2e-secrets/keys/sortie-dev.pem"}}, false},
		{"worker publishes TaskReported", awsx.Call{Service: bus.WorkerProducer, Action: "sns:Publish",
			Resources: []string{"arn:aws:sns:" + R + ":" + A + ":e2e-task-reported"}}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			denied := deniedCalls(t, e.Topology, policies, []awsx.Call{c.call})
			if (len(denied) == 0) != c.allowed {
				t.Errorf("denied %q, want allowed %v", denied, c.allowed)
			}
		})
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
