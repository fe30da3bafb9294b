package infra

import (
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/zclconf/go-cty/cty"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/iampolicy"
	"github.com/sortie-fleet/sortie/pkg/metrics"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/tfmodule"
)

// These tests hold the rest of deployments/terraform — IAM, secrets, ECS — to the Go code:
// every name from bus.Topology, the topic policies from bus.Producers, least privilege by
// evaluating the policies on requests the services must and must not be allowed, and the
// task definitions against what is declared. The end-to-end half of the least-privilege
// proof (every call the services really make is allowed) is pkg/devstack's
// TestEndToEnd/every_AWS_call_is_allowed_by_the_Terraform_policies.

// loadStack evaluates the module for prefix with the variables a deployment must give.
func loadStack(t *testing.T, prefix string, extra map[string]cty.Value) *tfmodule.Module {
	t.Helper()
	vars := map[string]cty.Value{
		"prefix":           cty.StringVal(prefix),
		"vpc_id":           cty.StringVal("vpc-1"),
		"subnet_ids":       cty.ListVal([]cty.Value{cty.StringVal("subnet-1"), cty.StringVal("subnet-2")}),
		"image_repository": cty.StringVal("000000000000.dkr.ecr.us-east-1.amazonaws.com"),
		"image_tag":        cty.StringVal("v1"),
		"work_buckets":     cty.ListVal([]cty.Value{cty.StringVal(prefix + "-input")}),
		"work_queues":      cty.ListVal([]cty.Value{cty.StringVal(prefix + "-work")}),
		"fetch_buckets":    cty.ListVal([]cty.Value{cty.StringVal(prefix + "-tools")}),
	}
	maps.Copy(vars, extra)
	m, err := tfmodule.Load(tfDir, tfAccount, vars)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func str(t *testing.T, i tfmodule.Instance, attr string) string {
	t.Helper()
	s, err := i.String(attr)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// policies returns each role's inline policy, parsed, by role name.
func policies(t *testing.T, m *tfmodule.Module) map[string]iampolicy.Policy {
	t.Helper()
	out := map[string]iampolicy.Policy{}
	for _, i := range m.ResourcesOf("aws_iam_role_policy") {
		p, err := iampolicy.Parse([]byte(str(t, i, "policy")))
		if err != nil {
			t.Fatalf("%s: %v", i, err)
		}
		role := str(t, i, "role")
		if prev, ok := out[role]; ok { // a role's policies together: IAM unions them
			p.Statement = append(prev.Statement, p.Statement...)
		}
		out[role] = p
	}
	return out
}

// The worker's own policy (apart from the workload's, from variables) lets the instances
// publish TaskReported and read what the recipes fetch: nothing else.
func TestTerraformWorkerPolicy(t *testing.T) {
	m := loadStack(t, "prodstack", nil)
	p, err := iampolicy.Parse([]byte(str(t, m.Instances("aws_iam_role_policy", "worker")[0], "policy")))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range p.Statement {
		for _, a := range s.Action {
			got = append(got, a+" "+strings.Join(s.Resource, ","))
		}
	}
	want := []string{
		"s3:GetObject arn:aws:s3:::prodstack-tools/*",
		"sns:ListTopics *",
		"sns:Publish arn:aws:sns:us-east-1:" + tfAccount + ":prodstack-task-reported",
	}
	if slices.Sort(got); !slices.Equal(got, want) {
		t.Errorf("worker grants\n%q\nwant\n%q", got, want)
	}
	// Without work buckets or queues, no workload policy at all.
	bare := loadStack(t, "prodstack", map[string]cty.Value{
		"work_buckets": cty.ListValEmpty(cty.String), "work_queues": cty.ListValEmpty(cty.String),
	})
	if n := len(bare.Instances("aws_iam_role_policy", "worker_workload")); n != 0 {
		t.Errorf("%d workload policies without work buckets or queues", n)
	}
}

func TestTerraformNamesAreTopology(t *testing.T) {
	topo := bus.Topology{Prefix: "prodstack"}
	m := loadStack(t, topo.Prefix, nil)
	for _, c := range []struct{ typ, attr, want string }{
		{"aws_s3_bucket", "bucket", topo.BucketName()},
		{"aws_s3_bucket", "bucket", topo.SecretsBucketName()},
		{"aws_secretsmanager_secret", "name", topo.HostKeySecretName()},
		{"aws_iam_role", "name", topo.WorkerRoleName()},
		{"aws_iam_instance_profile", "name", topo.WorkerRoleName()},
		{"aws_iam_role", "name", topo.UpstreamRoleName()},
		{"aws_iam_role", "name", topo.ExecutionRoleName()},
		{"aws_ecs_cluster", "name", topo.ClusterName()},
	} {
		if !m.Declared(c.typ, c.attr, c.want) {
			t.Errorf("no %s with %s = %q", c.typ, c.attr, c.want)
		}
	}
	for _, svc := range []string{bus.Planner, bus.Provisioner, bus.Bootstrapper, bus.Monitor, bus.Reaper} {
		if !m.Declared("aws_iam_role", "name", topo.RoleName(svc)) {
			t.Errorf("no task role %s", topo.RoleName(svc))
		}
		if !m.Declared("aws_cloudwatch_log_group", "name", topo.LogGroupName(svc)) {
			t.Errorf("no log group %s", topo.LogGroupName(svc))
		}
		if !m.Declared("aws_ecs_service", "name", svc) {
			t.Errorf("no ECS service %s", svc)
		}
	}
	// The ledger table, once declared (deployments/terraform/ledger.tf), and the policies'
	// grants on it name the same table.
	for _, i := range m.ResourcesOf("aws_dynamodb_table") {
		if n := str(t, i, "name"); n != topo.LedgerTableName() {
			t.Errorf("DynamoDB table %s, want %s", n, topo.LedgerTableName())
		}
	}
	if arn, _ := m.Local("ledger_table_arn"); !strings.HasSuffix(arn.AsString(), ":table/"+topo.LedgerTableName()) {
		t.Errorf("policies grant the ledger on %s, want table %s", arn.AsString(), topo.LedgerTableName())
	}
	// The metric namespace the monitor's policy allows is the one pkg/metrics writes.
	if ns, _ := m.Local("metrics_namespace"); ns.AsString() != metrics.Namespace {
		t.Errorf("metrics_namespace %s, want %s", ns.AsString(), metrics.Namespace)
	}
}

// With the embedded ops configuration (ops_config empty), the templates' instance profile
// and key pair are the ones the Terraform declares and hands the services.
func TestTerraformMatchesDefaultOpsConfig(t *testing.T) {
	m := loadStack(t, "sortie", nil)
	keyName := m.Var("ssh_key_name").AsString()
	for name, tpl := range opsconfig.Default().Templates {
		if !m.Declared("aws_iam_instance_profile", "name", tpl.InstanceProfile) {
			t.Errorf("template %s: instance profile %s is not the Terraform's", name, tpl.InstanceProfile)
		}
		if tpl.KeyName != keyName {
			t.Errorf("template %s: key pair %s, the services read keys/%s.pem", name, tpl.KeyName, keyName)
		}
	}
}

// Only producers publish: each topic's policy allows exactly the roles of bus.Producers and
// denies everyone else.
func TestTerraformTopicPolicies(t *testing.T) {
	topo := bus.Topology{Prefix: "prodstack"}
	m := loadStack(t, topo.Prefix, nil)
	roleARN := func(p string) string { return "arn:aws:iam::" + tfAccount + ":role/" + topo.Prefix + "-" + p }
	got := map[string]bool{}
	for _, i := range m.Instances("aws_sns_topic_policy", "producers") {
		topic := str(t, i, "arn")
		et := i.Key
		got[et] = true
		if want := m.Region; !strings.HasSuffix(topic, ":"+topo.TopicName(et)) || !strings.Contains(topic, want) {
			t.Errorf("%s: policy on %s, want topic %s", et, topic, topo.TopicName(et))
		}
		doc := str(t, i, "policy")
		if want, err := TopicPolicy(topo, et, tfAccount); err != nil {
			t.Fatal(err)
		} else if !sameJSON(doc, string(want)) {
			t.Errorf("%s: topic policy\n%s\nwant infra.TopicPolicy's\n%s", et, doc, want)
		}
		p, err := iampolicy.Parse([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		// Who may publish: every role in the account is tried.
		for _, who := range []string{"upstream", "worker", bus.Planner, bus.Provisioner, bus.Bootstrapper, bus.Monitor, bus.Reaper, "admin"} {
			req := iampolicy.Request{Action: "sns:Publish", Resource: topic,
				Context: map[string][]string{"aws:PrincipalArn": {roleARN(who)}}}
			d := p.Decide(req)
			want := slices.Contains(bus.Producers[et], who)
			if want && (!d.Allowed || !principalAllowed(t, p, d.Sid, roleARN(who))) {
				t.Errorf("%s: producer %s may not publish (%+v)", et, who, d)
			}
			if !want && !d.ExplicitDeny {
				t.Errorf("%s: %s is not explicitly denied publishing (%+v)", et, who, d)
			}
		}
	}
	if want := slices.Sorted(slices.Values(bus.EventTypes)); !slices.Equal(slices.Sorted(maps.Keys(got)), want) {
		t.Errorf("topic policies for %v, want %v", slices.Sorted(maps.Keys(got)), want)
	}
}

// principalAllowed reports whether the Allow statement sid names principal.
func principalAllowed(t *testing.T, p iampolicy.Policy, sid, principal string) bool {
	t.Helper()
	for _, s := range p.Statement {
		if s.Sid != sid {
			continue
		}
		var pr struct{ AWS iampolicy.Strings }
		if err := json.Unmarshal(s.Principal, &pr); err != nil {
			t.Fatalf("%s principal: %v", sid, err)
		}
		return slices.Contains(pr.AWS, principal)
	}
	return false
}

func TestTerraformPoliciesLint(t *testing.T) {
	m := loadStack(t, "prodstack", nil)
	ps := policies(t, m)
	if len(ps) < 8 { // five services, worker, upstream, execution
		t.Fatalf("%d role policies: %v", len(ps), slices.Sorted(maps.Keys(ps)))
	}
	for role, p := range ps {
		for _, problem := range p.Lint() {
			t.Errorf("role %s: %s", role, problem)
		}
	}
	// Trust policies too: a role assumable by "*" would undo the rest.
	for _, i := range m.ResourcesOf("aws_iam_role") {
		if strings.Contains(str(t, i, "assume_role_policy"), `"Principal":"*"`) {
			t.Errorf("%s: anyone may assume it", i)
		}
	}
}

// Requests each role must be allowed and must be denied: the policies are as narrow as
// claimed (the end-to-end test proves they are wide enough for what the services do).
func TestTerraformLeastPrivilege(t *testing.T) {
	topo := bus.Topology{Prefix: "prodstack"}
	m := loadStack(t, topo.Prefix, nil)
	ps := policies(t, m)
	const R, A = "us-east-1", tfAccount
	queue := func(name string) string { return "arn:aws:sqs:" + R + ":" + A + ":" + name }
	topic := func(et string) string { return "arn:aws:sns:" + R + ":" + A + ":" + topo.TopicName(et) }
	inst := "arn:aws:ec2:" + R + ":" + A + ":instance/i-0123456789abcdef0"
	own := map[string][]string{"aws:ResourceTag/sortie:stack": {topo.Prefix}}
	other := map[string][]string{"aws:ResourceTag/sortie:stack": {"otherstack"}}
	stage := map[string][]string{"aws:ResourceTag/sortie:stack": {topo.Prefix}, "aws:TagKeys": {"sortie:stage"}}
	restack := map[string][]string{"aws:ResourceTag/sortie:stack": {topo.Prefix}, "aws:TagKeys": {"sortie:stack"}}
	rq := func(action, resource string, ctx map[string][]string) iampolicy.Request {
		return iampolicy.Request{Action: action, Resource: resource, Context: ctx}
	}
	for _, c := range []struct {
		role    string
		req     iampolicy.Request
		allowed bool
	}{
		{topo.RoleName(bus.Planner), rq("sqs:ReceiveMessage", queue(topo.QueueName(bus.Planner, bus.JobSubmitted)), nil), true},
		{topo.RoleName(bus.Planner), rq("sqs:SendMessage", queue(bus.DLQName(topo.QueueName(bus.Planner, bus.JobSubmitted))), nil), true},
		{topo.RoleName(bus.Planner), rq("sns:Publish", topic(bus.FleetPlanned), nil), true},
		{topo.RoleName(bus.Planner), rq("sqs:GetQueueAttributes", queue("prodstack-work"), nil), true},
		{topo.RoleName(bus.Planner), rq("s3:ListBucket", "arn:aws:s3:::prodstack-input", nil), true},
		{topo.RoleName(bus.Planner), rq("sns:Publish", topic(bus.JobFinished), nil), false},
		{topo.RoleName(bus.Planner), rq("sqs:ReceiveMessage", queue(topo.QueueName(bus.Reaper, bus.JobFinished)), nil), false},
		{topo.RoleName(bus.Planner), rq("sqs:DeleteQueue", queue(topo.QueueName(bus.Planner, bus.JobSubmitted)), nil), false},
		{topo.RoleName(bus.Planner), rq("ec2:RunInstances", "arn:aws:ec2:"+R+":"+A+":instance/*", map[string][]string{"aws:RequestTag/sortie:stack": {topo.Prefix}}), false},
		{topo.RoleName(bus.Planner), rq("s3:GetObject", "arn:aws:s3:::"+topo.SecretsBucketName()+"/keys/sortie-dev.pem", nil), false},

		{topo.RoleName(bus.Provisioner), rq("ec2:RunInstances", "arn:aws:ec2:"+R+":"+A+":instance/*", map[string][]string{"aws:RequestTag/sortie:stack": {topo.Prefix}}), true},
		{topo.RoleName(bus.Provisioner), rq("ec2:RunInstances", "arn:aws:ec2:"+R+":"+A+":instance/*", map[string][]string{"aws:RequestTag/sortie:stack": {"otherstack"}}), false},
		{topo.RoleName(bus.Provisioner), rq("ec2:RunInstances", "arn:aws:ec2:"+R+":"+A+":instance/*", nil), false},
		{topo.RoleName(bus.Provisioner), rq("ec2:RunInstances", "arn:aws:ec2:"+R+"::image/ami-1", nil), true},
		{topo.RoleName(bus.Provisioner), rq("iam:PassRole", "arn:aws:iam::"+A+":role/"+topo.WorkerRoleName(), map[string][]string{"iam:PassedToService": {"ec2.amazonaws.com"}}), true},
		{topo.RoleName(bus.Provisioner), rq("iam:PassRole", "arn:aws:iam::"+A+":role/"+topo.RoleName(bus.Reaper), map[string][]string{"iam:PassedToService": {"ec2.amazonaws.com"}}), false},
		{topo.RoleName(bus.Provisioner), rq("iam:PassRole", "arn:aws:iam::"+A+":role/"+topo.WorkerRoleName(), map[string][]string{"iam:PassedToService": {"lambda.amazonaws.com"}}), false},
		{topo.RoleName(bus.Provisioner), rq("ec2:TerminateInstances", inst, other), false},
		{topo.RoleName(bus.Provisioner), rq("secretsmanager:GetSecretValue", "arn:aws:secretsmanager:"+R+":"+A+":secret:"+topo.HostKeySecretName()+"-AbCdEf", nil), false},

		{topo.RoleName(bus.Bootstrapper), rq("s3:GetObject", "arn:aws:s3:::"+topo.SecretsBucketName()+"/keys/sortie-dev.pem", nil), true},
		{topo.RoleName(bus.Bootstrapper), rq("s3:GetObject", "arn:aws:s3:::prodstack-tools/bin/tool", nil), true},
		{topo.RoleName(bus.Bootstrapper), rq("s3:GetObject", "arn:aws:s3:::"+topo.SecretsBucketName()+"/keys/other.pem", nil), false},
		{topo.RoleName(bus.Bootstrapper), rq("s3:GetObject", "arn:aws:s3:::someone-elses-bucket/x", nil), false},
		{topo.RoleName(bus.Bootstrapper), rq("ec2:CreateTags", inst, stage), true},
		{topo.RoleName(bus.Bootstrapper), rq("ec2:CreateTags", inst, restack), false},
		{topo.RoleName(bus.Bootstrapper), rq("ec2:TerminateInstances", inst, own), false},

		{topo.RoleName(bus.Monitor), rq("cloudwatch:PutMetricData", "*", map[string][]string{"cloudwatch:namespace": {metrics.Namespace}}), true},
		{topo.RoleName(bus.Monitor), rq("cloudwatch:PutMetricData", "*", map[string][]string{"cloudwatch:namespace": {"AWS/EC2"}}), false},
		{topo.RoleName(bus.Monitor), rq("ec2:CreateTags", inst, map[string][]string{"aws:ResourceTag/sortie:stack": {"otherstack"}, "aws:TagKeys": {"sortie:stage"}}), false},
		{topo.RoleName(bus.Monitor), rq("sqs:SendMessage", queue(topo.TimerQueueName(bus.Monitor)), nil), true},
		{topo.RoleName(bus.Monitor), rq("sqs:SendMessage", queue(topo.TimerQueueName(bus.Reaper)), nil), false},
		{topo.RoleName(bus.Monitor), rq("sns:Publish", topic(bus.JobFinished), nil), true},
		// EC2's notices: the monitor reads them, dead-letters what it cannot read, and
		// publishes InstanceLost; the planner and reaper read their InstanceLost queues.
		{topo.RoleName(bus.Monitor), rq("sqs:ReceiveMessage", queue(topo.EC2EventsQueueName()), nil), true},
		{topo.RoleName(bus.Monitor), rq("sqs:DeleteMessage", queue(topo.EC2EventsQueueName()), nil), true},
		{topo.RoleName(bus.Monitor), rq("sqs:ChangeMessageVisibility", queue(topo.EC2EventsQueueName()), nil), true},
		{topo.RoleName(bus.Monitor), rq("sqs:GetQueueAttributes", queue(topo.EC2EventsQueueName()), nil), true},
		{topo.RoleName(bus.Monitor), rq("sqs:GetQueueUrl", queue(topo.EC2EventsQueueName()), nil), true},
		{topo.RoleName(bus.Monitor), rq("sqs:SendMessage", queue(bus.DLQName(topo.EC2EventsQueueName())), nil), true},
		{topo.RoleName(bus.Monitor), rq("sqs:SendMessage", queue(topo.EC2EventsQueueName()), nil), false},
		{topo.RoleName(bus.Monitor), rq("sns:Publish", topic(bus.InstanceLost), nil), true},
		{topo.RoleName(bus.Planner), rq("sqs:ReceiveMessage", queue(topo.EC2EventsQueueName()), nil), false},
		{topo.RoleName(bus.Reaper), rq("sqs:ReceiveMessage", queue(topo.EC2EventsQueueName()), nil), false},
		{topo.RoleName(bus.Planner), rq("sns:Publish", topic(bus.InstanceLost), nil), false},
		{topo.RoleName(bus.Planner), rq("sqs:ReceiveMessage", queue(topo.QueueName(bus.Planner, bus.InstanceLost)), nil), true},
		{topo.RoleName(bus.Planner), rq("sqs:SendMessage", queue(bus.DLQName(topo.QueueName(bus.Planner, bus.InstanceLost))), nil), true},
		{topo.RoleName(bus.Reaper), rq("sqs:ReceiveMessage", queue(topo.QueueName(bus.Reaper, bus.InstanceLost)), nil), true},
		{topo.RoleName(bus.Reaper), rq("sqs:DeleteMessage", queue(topo.QueueName(bus.Reaper, bus.InstanceLost)), nil), true},
		{topo.RoleName(bus.Reaper), rq("sqs:ReceiveMessage", queue(topo.QueueName(bus.Planner, bus.InstanceLost)), nil), false},

		{topo.RoleName(bus.Reaper), rq("ec2:TerminateInstances", inst, own), true},
		{topo.RoleName(bus.Reaper), rq("ec2:TerminateInstances", inst, other), false},
		{topo.RoleName(bus.Reaper), rq("ec2:CreateTags", inst, stage), false},
		{topo.RoleName(bus.Reaper), rq("ec2:GetConsoleOutput", inst, own), true},
		{topo.RoleName(bus.Provisioner), rq("ec2:GetConsoleOutput", inst, own), false},
		{topo.RoleName(bus.Reaper), rq("ec2:TerminateInstances", inst, nil), false},
		{topo.RoleName(bus.Reaper), rq("s3:PutObject", "arn:aws:s3:::"+topo.BucketName()+"/logs/job/i-1.tar.gz", nil), true},
		{topo.RoleName(bus.Reaper), rq("s3:PutObject", "arn:aws:s3:::"+topo.SecretsBucketName()+"/keys/sortie-dev.pem", nil), false},
		{topo.RoleName(bus.Reaper), rq("s3:DeleteObject", "arn:aws:s3:::"+topo.BucketName()+"/logs/job/i-1.tar.gz", nil), false},
		// InstanceLost: the reaper and the planner each read their own queue (and dead-letter
		// into its DLQ); neither reads the other's.
		{topo.RoleName(bus.Reaper), rq("sqs:ReceiveMessage", queue(topo.QueueName(bus.Reaper, bus.InstanceLost)), nil), true},
		{topo.RoleName(bus.Reaper), rq("sqs:SendMessage", queue(bus.DLQName(topo.QueueName(bus.Reaper, bus.InstanceLost))), nil), true},
		{topo.RoleName(bus.Planner), rq("sqs:ReceiveMessage", queue(topo.QueueName(bus.Planner, bus.InstanceLost)), nil), true},
		{topo.RoleName(bus.Planner), rq("sqs:ReceiveMessage", queue(topo.QueueName(bus.Reaper, bus.InstanceLost)), nil), false},
		{topo.RoleName(bus.Monitor), rq("sqs:ReceiveMessage", queue(topo.QueueName(bus.Reaper, bus.InstanceLost)), nil), false},
		{topo.RoleName(bus.Monitor), rq("sns:Publish", topic(bus.InstanceLost), nil), true},
		{topo.RoleName(bus.Reaper), rq("sns:Publish", topic(bus.InstanceLost), nil), false},

		{topo.WorkerRoleName(), rq("sns:Publish", topic(bus.TaskReported), nil), true},
		{topo.WorkerRoleName(), rq("sns:Publish", topic(bus.JobFinished), nil), false},
		{topo.WorkerRoleName(), rq("s3:GetObject", "arn:aws:s3:::prodstack-tools/bin/tool", nil), true},
		{topo.WorkerRoleName(), rq("s3:GetObject", "arn:aws:s3:::"+topo.SecretsBucketName()+"/keys/sortie-dev.pem", nil), false},
		{topo.WorkerRoleName(), rq("s3:PutObject", "arn:aws:s3:::prodstack-input/results/job/x.json", nil), true},
		{topo.WorkerRoleName(), rq("s3:PutObject", "arn:aws:s3:::prodstack-input/x", nil), false},
		{topo.WorkerRoleName(), rq("ec2:TerminateInstances", inst, own), false},

		{topo.UpstreamRoleName(), rq("sns:Publish", topic(bus.JobSubmitted), nil), true},
		{topo.UpstreamRoleName(), rq("sns:Publish", topic(bus.FleetPlanned), nil), false},

		{topo.ExecutionRoleName(), rq("secretsmanager:GetSecretValue", "arn:aws:secretsmanager:"+R+":"+A+":secret:"+topo.HostKeySecretName()+"-AbCdEf", nil), true},
		{topo.ExecutionRoleName(), rq("logs:PutLogEvents", "arn:aws:logs:"+R+":"+A+":log-group:"+topo.LogGroupName(bus.Reaper)+":log-stream:x", nil), true},
		{topo.ExecutionRoleName(), rq("logs:PutLogEvents", "arn:aws:logs:"+R+":"+A+":log-group:/other:log-stream:x", nil), false},
	} {
		p, ok := ps[c.role]
		if !ok {
			t.Errorf("no policy for role %s", c.role)
			continue
		}
		if d := p.Decide(c.req); d.Allowed != c.allowed {
			t.Errorf("%s %s on %s (%v): allowed %v, want %v", c.role, c.req.Action, c.req.Resource, c.req.Context, d.Allowed, c.allowed)
		}
	}
}

// Every task definition names a declared task role, the execution role, a declared log
// group, a health check, a stop timeout covering the drain, and secrets that are declared.
func TestTerraformTaskDefinitions(t *testing.T) {
	topo := bus.Topology{Prefix: "prodstack"}
	m := loadStack(t, topo.Prefix, nil)
	tds := m.Instances("aws_ecs_task_definition", "service")
	if len(tds) != 5 {
		t.Fatalf("%d task definitions, want 5", len(tds))
	}
	roleARNs := map[string]bool{}
	for _, r := range m.ResourcesOf("aws_iam_role") {
		roleARNs["arn:aws:iam::"+tfAccount+":role/"+str(t, r, "name")] = true
	}
	secretARNs := map[string]bool{}
	for _, s := range m.ResourcesOf("aws_secretsmanager_secret") {
		secretARNs[str(t, s, "arn")] = true
	}
	for _, td := range tds {
		svc := td.Key
		if r := str(t, td, "task_role_arn"); !roleARNs[r] || !strings.HasSuffix(r, ":role/"+topo.RoleName(svc)) {
			t.Errorf("%s: task role %s, want the declared %s", svc, r, topo.RoleName(svc))
		}
		if r := str(t, td, "execution_role_arn"); !roleARNs[r] || !strings.HasSuffix(r, ":role/"+topo.ExecutionRoleName()) {
			t.Errorf("%s: execution role %s, want the declared %s", svc, r, topo.ExecutionRoleName())
		}
		var containers []struct {
			Name        string
			Image       string
			User        string
			StopTimeout int
			HealthCheck *struct{ Command []string }
			Environment []struct{ Name, Value string }
			Secrets     []struct{ Name, ValueFrom string }
			LogConfig   struct {
				LogDriver string
				Options   map[string]string
			} `json:"logConfiguration"`
		}
		if err := json.Unmarshal([]byte(str(t, td, "container_definitions")), &containers); err != nil || len(containers) != 1 {
			t.Fatalf("%s container_definitions: %v (%d containers)", svc, err, len(containers))
		}
		c := containers[0]
		if c.HealthCheck == nil || !slices.Equal(c.HealthCheck.Command, []string{"CMD", "/" + svc, "healthcheck"}) {
			t.Errorf("%s: health check %+v, want the binary's healthcheck", svc, c.HealthCheck)
		}
		if g := c.LogConfig.Options["awslogs-group"]; c.LogConfig.LogDriver != "awslogs" || g != topo.LogGroupName(svc) || !m.Declared("aws_cloudwatch_log_group", "name", g) {
			t.Errorf("%s: logs %+v, want awslogs to the declared %s", svc, c.LogConfig, topo.LogGroupName(svc))
		}
		if drain := int(bus.DefaultCloseTimeout.Seconds()); c.StopTimeout <= drain || c.StopTimeout > 120 {
			t.Errorf("%s: stopTimeout %d, want more than the %d s drain and at most Fargate's 120", svc, c.StopTimeout, drain)
		}
		if c.User != "65532:65532" {
			t.Errorf("%s: user %q", svc, c.User)
		}
		if !strings.HasSuffix(c.Image, "/sortie-"+svc+":v1") {
			t.Errorf("%s: image %s", svc, c.Image)
		}
		env := map[string]string{}
		for _, e := range c.Environment {
			env[e.Name] = e.Value
		}
		if env["SORTIE_PREFIX"] != topo.Prefix || env["SORTIE_HTTP_ADDR"] == "" {
			t.Errorf("%s: environment %v", svc, env)
		}
		if k, ok := env["SORTIE_SSH_KEY"]; ok {
			if !strings.HasPrefix(k, "s3://"+topo.SecretsBucketName()+"/keys/") || !m.Declared("aws_s3_bucket", "bucket", topo.SecretsBucketName()) {
				t.Errorf("%s: SORTIE_SSH_KEY %s outside the declared secrets bucket", svc, k)
			}
		} else if svc == bus.Bootstrapper || svc == bus.Monitor || svc == bus.Reaper {
			t.Errorf("%s: no SORTIE_SSH_KEY", svc)
		}
		var secrets []string
		for _, s := range c.Secrets {
			secrets = append(secrets, s.Name)
			if !secretARNs[s.ValueFrom] {
				t.Errorf("%s: secret %s from %s, which is not declared", svc, s.Name, s.ValueFrom)
			}
		}
		if want := svc == bus.Provisioner; slices.Contains(secrets, "SORTIE_HOSTKEY_SECRET") != want {
			t.Errorf("%s: secrets %v (SORTIE_HOSTKEY_SECRET only for the provisioner)", svc, secrets)
		}
	}
	// Each service runs, scales between 1 and max_replicas on its queues' age.
	targets := map[string]tfmodule.Instance{}
	for _, tg := range m.Instances("aws_appautoscaling_target", "service") {
		targets[tg.Key] = tg
		if str(t, tg, "min_capacity") != "1" || str(t, tg, "max_capacity") != "4" {
			t.Errorf("%s: capacity %s..%s, want 1..max_replicas (4)", tg.Key, str(t, tg, "min_capacity"), str(t, tg, "max_capacity"))
		}
	}
	scaled := map[string]bool{}
	for _, p := range m.Instances("aws_appautoscaling_policy", "queue_age") {
		q := str(t, p.Blocks("target_tracking_scaling_policy_configuration")[0].Blocks("customized_metric_specification")[0].Blocks("dimensions")[0], "value")
		for svc, tg := range targets {
			if str(t, p, "resource_id") == str(t, tg, "resource_id") {
				scaled[svc] = true
				if !slices.Contains(topo.ServiceQueues(svc), q) {
					t.Errorf("%s scales on %s, which it does not consume", svc, q)
				}
			}
		}
	}
	if len(scaled) != 5 {
		t.Errorf("services scaled on their queues: %v, want all five", slices.Sorted(maps.Keys(scaled)))
	}
}

// TestTerraformBucketsHardened: both of the stack's buckets (logs, secrets) get SSE-KMS with
// their own rotating key, a full public access block and pkg/infra's BucketPolicy (TLS only,
// SSE-KMS uploads only), from the same for_each resources.
func TestTerraformBucketsHardened(t *testing.T) {
	m := loadStack(t, "sortie", nil)
	topo := bus.Topology{Prefix: "sortie"}
	str := func(t *testing.T, i tfmodule.Instance, attr string) string {
		t.Helper()
		s, err := i.String(attr)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	boolean := func(t *testing.T, i tfmodule.Instance, attr string) bool {
		t.Helper()
		v, err := i.Value(attr)
		if err != nil || v.Type() != cty.Bool {
			t.Fatalf("%v.%s: %v (%s)", i, attr, err, v.GoString())
		}
		return v.True()
	}
	keyed := func(t *testing.T, typ, name, key string) tfmodule.Instance {
		t.Helper()
		for _, i := range m.Instances(typ, name) {
			if i.Key == key {
				return i
			}
		}
		t.Fatalf("no %s.%s[%q]", typ, name, key)
		return tfmodule.Instance{}
	}
	one := func(t *testing.T, typ, name string) tfmodule.Instance {
		t.Helper()
		is := m.Instances(typ, name)
		if len(is) != 1 {
			t.Fatalf("%s.%s: %d instances, want 1", typ, name, len(is))
		}
		return is[0]
	}
	for _, bt := range []struct{ key, name string }{{"logs", topo.BucketName()}, {"secrets", topo.SecretsBucketName()}} {
		t.Run(bt.key, func(t *testing.T) {
			b := one(t, "aws_s3_bucket", bt.key)
			if got := str(t, b, "bucket"); got != bt.name {
				t.Errorf("bucket %s, want %s", got, bt.name)
			}
			if boolean(t, b, "force_destroy") {
				t.Error("force_destroy would delete the bucket's objects")
			}
			want, err := BucketPolicy(bt.name)
			if err != nil {
				t.Fatal(err)
			}
			if p := str(t, keyed(t, "aws_s3_bucket_policy", "hardened", bt.key), "policy"); !sameJSON(p, string(want)) {
				t.Errorf("bucket policy:\n%s\nwant\n%s", p, want)
			}
			enc := keyed(t, "aws_s3_bucket_server_side_encryption_configuration", "hardened", bt.key)
			if got := str(t, enc, "bucket"); got != bt.name {
				t.Errorf("encryption of bucket %s, want %s", got, bt.name)
			}
			rules := enc.Blocks("rule")
			if len(rules) != 1 {
				t.Fatalf("%d encryption rules", len(rules))
			}
			def := rules[0].Blocks("apply_server_side_encryption_by_default")
			if len(def) != 1 || str(t, def[0], "sse_algorithm") != "aws:kms" || !boolean(t, rules[0], "bucket_key_enabled") {
				t.Fatalf("encryption rule is not SSE-KMS with a bucket key")
			}
			key := one(t, "aws_kms_key", bt.key)
			if got, want := str(t, def[0], "kms_master_key_id"), str(t, key, "arn"); got != want {
				t.Errorf("kms_master_key_id %s, want the bucket's own key %s", got, want)
			}
			if !boolean(t, key, "enable_key_rotation") {
				t.Error("KMS key rotation off")
			}
			if a := str(t, one(t, "aws_kms_alias", bt.key), "name"); a != "alias/"+bt.name {
				t.Errorf("KMS alias %s", a)
			}
			pab := keyed(t, "aws_s3_bucket_public_access_block", "hardened", bt.key)
			for _, a := range []string{"block_public_acls", "ignore_public_acls", "block_public_policy", "restrict_public_buckets"} {
				if !boolean(t, pab, a) {
					t.Errorf("public access block %s off", a)
				}
			}
		})
	}
}
