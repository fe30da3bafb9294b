package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/ec2events"
	"github.com/sortie-fleet/sortie/pkg/infra"
)

// Third-party clients against `sortie localcloud`: Debian's aws CLI (v2.9, which speaks
// SQS's Query protocol and ignores AWS_ENDPOINT_URL) and Ansible's amazon.aws collection
// (boto3). Both are Debian packages CI installs (.ci/run).

// startLocalcloud runs `sortie localcloud` on a free port until the test ends and returns
// its URL.
func startLocalcloud(t *testing.T) string {
	t.Helper()
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"localcloud", "--addr", "127.0.0.1:0", "--boot-delay", "50ms", "--shutdown-delay", "50ms",
			"--data-dir", t.TempDir()}, pw, io.Discard)
		pw.Close()
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("sortie localcloud: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("sortie localcloud did not stop")
		}
	})
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	url := strings.TrimSpace(strings.TrimPrefix(line, "local cloud serving on "))
	if !strings.HasPrefix(url, "http://127.0.0.1:") {
		t.Fatalf("unexpected first line %q", line)
	}
	return url
}

// clientEnv is the environment of a third-party client: test credentials, the region, no
// pager, no configuration or metadata service of the machine's, a home of its own.
func clientEnv(t *testing.T, endpoint string) []string {
	home := t.TempDir()
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AWS_") && !strings.HasPrefix(kv, "ANSIBLE_") && !strings.HasPrefix(kv, "HOME=") {
			env = append(env, kv)
		}
	}
	return append(env,
		"HOME="+home,
		"AWS_ENDPOINT_URL="+endpoint,
		"AWS_ACCESS_KEY_ID=test", "AWS_SECRET_ACCESS_KEY=test",
		"AWS_REGION=us-east-1", "AWS_DEFAULT_REGION=us-east-1",
		"AWS_CONFIG_FILE="+filepath.Join(home, "no-config"), "AWS_SHARED_CREDENTIALS_FILE="+filepath.Join(home, "no-credentials"),
		"AWS_PAGER=", "AWS_EC2_METADATA_DISABLED=true",
	)
}

// awsCLI returns Debian's aws CLI (/usr/bin/aws) if installed, else the aws on PATH.
func awsCLI(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("/usr/bin/aws"); err == nil {
		return "/usr/bin/aws"
	}
	path, err := exec.LookPath("aws")
	if err != nil {
		cloudtest.MissingTool(t, "the aws CLI is not installed (apt-get install awscli)")
	}
	return path
}

type cli struct {
	t        *testing.T
	bin      string
	endpoint string
	env      []string
}

// run runs `aws <args> --endpoint-url … --output json` and returns stdout, failing the test
// on a non-zero exit.
func (c cli) run(args ...string) []byte {
	c.t.Helper()
	out, stderr, err := c.try(args...)
	if err != nil {
		c.t.Fatalf("aws %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	return out
}

func (c cli) try(args ...string) ([]byte, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, append(args, "--endpoint-url", c.endpoint, "--output", "json", "--no-cli-pager")...)
	cmd.Env = c.env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.Bytes(), stderr.String(), err
}

// on returns the client reporting to t (a subtest).
func (c cli) on(t *testing.T) cli {
	c.t = t
	return c
}

func (c cli) json(v any, args ...string) {
	c.t.Helper()
	out := c.run(args...)
	if err := json.Unmarshal(out, v); err != nil {
		c.t.Fatalf("aws %s: decoding %s: %v", strings.Join(args, " "), out, err)
	}
}

func TestAWSCLIAgainstLocalcloud(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: runs the aws CLI")
	}
	bin := awsCLI(t)
	endpoint := startLocalcloud(t)
	aws := cli{t: t, bin: bin, endpoint: endpoint, env: clientEnv(t, endpoint)}
	version, _, _ := aws.try("--version")
	t.Logf("using %s: %s", bin, bytes.TrimSpace(version))
	ec2c := ec2.NewFromConfig(awsx.ForEndpoint(endpoint))

	t.Run("network", func(t *testing.T) {
		aws := aws.on(t)
		var vpcs struct{ Vpcs []struct{ VpcId string } }
		aws.json(&vpcs, "ec2", "describe-vpcs", "--filters", "Name=isDefault,Values=true")
		if len(vpcs.Vpcs) != 1 {
			t.Fatalf("default VPCs: %+v", vpcs)
		}
		var subnets struct {
			Subnets []struct{ SubnetId, AvailabilityZone string }
		}
		aws.json(&subnets, "ec2", "describe-subnets", "--filters", "Name=vpc-id,Values="+vpcs.Vpcs[0].VpcId, "Name=default-for-az,Values=true")
		if len(subnets.Subnets) != 3 {
			t.Errorf("default subnets: %+v", subnets)
		}
		var groups struct {
			SecurityGroups []struct{ GroupId, GroupName string }
		}
		aws.json(&groups, "ec2", "describe-security-groups", "--filters", "Name=group-name,Values=default", "Name=vpc-id,Values="+vpcs.Vpcs[0].VpcId)
		if len(groups.SecurityGroups) != 1 {
			t.Errorf("default security group: %+v", groups)
		}
		var created struct{ GroupId string }
		aws.json(&created, "ec2", "create-security-group", "--group-name", "cli-ssh", "--description", "ssh from anywhere")
		aws.run("ec2", "authorize-security-group-ingress", "--group-id", created.GroupId, "--protocol", "tcp", "--port", "22", "--cidr", "0.0.0.0/0")
		aws.json(&groups, "ec2", "describe-security-groups", "--filters", "Name=ip-permission.from-port,Values=22", "Name=ip-permission.cidr,Values=0.0.0.0/0")
		if len(groups.SecurityGroups) != 1 || groups.SecurityGroups[0].GroupId != created.GroupId {
			t.Errorf("groups open to the world on 22: %+v", groups)
		}
		aws.run("ec2", "delete-security-group", "--group-id", created.GroupId)
	})

	t.Run("instances", func(t *testing.T) {
		aws := aws.on(t)
		launch := []string{"ec2", "run-instances", "--image-id", "ami-0123456789abcdef0", "--instance-type", "t3.micro", "--count", "2",
			"--client-token", "cli-token-1", "--tag-specifications", "ResourceType=instance,Tags=[{Key=team,Value=cli}]"}
		type reservation struct {
			Instances []struct{ InstanceId, SubnetId, VpcId string }
		}
		var first, second reservation
		aws.json(&first, launch...)
		aws.json(&second, launch...)
		ids := func(r reservation) []string {
			var out []string
			for _, i := range r.Instances {
				out = append(out, i.InstanceId)
			}
			slices.Sort(out)
			return out
		}
		if len(first.Instances) != 2 || !slices.Equal(ids(first), ids(second)) {
			t.Fatalf("run-instances with one client token twice: %v then %v", ids(first), ids(second))
		}
		if first.Instances[0].SubnetId == "" || first.Instances[0].VpcId == "" {
			t.Errorf("instance without a subnet or VPC: %+v", first.Instances[0])
		}
		var described struct {
			Reservations []reservation
		}
		aws.json(&described, "ec2", "describe-instances", "--filters", "Name=tag:team,Values=cli", "Name=instance-state-name,Values=pending,running")
		if n := len(described.Reservations); n != 1 || len(described.Reservations[0].Instances) != 2 {
			t.Fatalf("describe-instances by tag: %+v", described)
		}
		args := append([]string{"ec2", "wait", "instance-running", "--instance-ids"}, ids(first)...)
		aws.run(args...)
		var status struct {
			InstanceStatuses []struct{ InstanceStatus struct{ Status string } }
		}
		aws.json(&status, append([]string{"ec2", "describe-instance-status", "--instance-ids"}, ids(first)...)...)
		if len(status.InstanceStatuses) != 2 || status.InstanceStatuses[0].InstanceStatus.Status != "ok" {
			t.Errorf("describe-instance-status: %+v", status)
		}
		aws.run(append([]string{"ec2", "terminate-instances", "--instance-ids"}, ids(first)...)...)
		aws.run(append([]string{"ec2", "wait", "instance-terminated", "--instance-ids"}, ids(first)...)...)
		out, err := ec2c.DescribeInstances(context.Background(), &ec2.DescribeInstancesInput{InstanceIds: ids(first)})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range out.Reservations {
			for _, i := range r.Instances {
				if i.State.Name != ec2types.InstanceStateNameTerminated {
					t.Errorf("%s is %s after the CLI's wait instance-terminated", *i.InstanceId, i.State.Name)
				}
			}
		}
		_, stderr, err := aws.try("ec2", "allocate-address")
		if err == nil || !strings.Contains(stderr, "InvalidAction") {
			t.Errorf("an action the local cloud lacks: %v %s", err, stderr)
		}
	})

	// EC2's notices as a stack's EventBridge rule routes them, with the rule, its target and
	// the queue policy set up by the aws CLI: an instance the CLI terminates is announced on
	// the queue, read back with the CLI.
	t.Run("ec2 notices through an eventbridge rule", func(t *testing.T) {
		aws := aws.on(t)
		name := cloudtest.Unique("cli-notices-")
		var q struct{ QueueUrl string }
		aws.json(&q, "sqs", "create-queue", "--queue-name", name)
		var qa struct{ Attributes map[string]string }
		aws.json(&qa, "sqs", "get-queue-attributes", "--queue-url", q.QueueUrl, "--attribute-names", "QueueArn")
		var rule struct{ RuleArn string }
		aws.json(&rule, "events", "put-rule", "--name", name, "--event-pattern", ec2events.Pattern())
		policy, err := infra.RuleQueuePolicy(qa.Attributes["QueueArn"], rule.RuleArn)
		if err != nil {
			t.Fatal(err)
		}
		attrs, err := json.Marshal(map[string]string{"Policy": string(policy)})
		if err != nil {
			t.Fatal(err)
		}
		aws.run("sqs", "set-queue-attributes", "--queue-url", q.QueueUrl, "--attributes", string(attrs))
		aws.run("events", "put-targets", "--rule", name, "--targets", "Id=queue,Arn="+qa.Attributes["QueueArn"])

		var launched struct{ Instances []struct{ InstanceId string } }
		aws.json(&launched, "ec2", "run-instances", "--image-id", "ami-0123456789abcdef0", "--instance-type", "t3.micro", "--count", "1")
		id := launched.Instances[0].InstanceId
		aws.run("ec2", "wait", "instance-running", "--instance-ids", id)
		aws.run("ec2", "terminate-instances", "--instance-ids", id)
		var states []string
		for deadline := time.Now().Add(30 * time.Second); len(states) < 2 && time.Now().Before(deadline); {
			var got struct {
				Messages []struct{ Body, ReceiptHandle string }
			}
			aws.json(&got, "sqs", "receive-message", "--queue-url", q.QueueUrl, "--wait-time-seconds", "2", "--max-number-of-messages", "10")
			for _, m := range got.Messages {
				n, err := ec2events.Parse([]byte(m.Body))
				if err != nil {
					t.Fatalf("not an EC2 notice: %v\n%s", err, m.Body)
				}
				if n.InstanceID == id {
					states = append(states, n.State)
				}
				aws.run("sqs", "delete-message", "--queue-url", q.QueueUrl, "--receipt-handle", m.ReceiptHandle)
			}
		}
		if !slices.Equal(states, []string{"shutting-down", "terminated"}) {
			t.Errorf("notices of %s: %v, want shutting-down then terminated", id, states)
		}
		aws.run("events", "remove-targets", "--rule", name, "--ids", "queue")
		aws.run("events", "delete-rule", "--name", name)
	})

	t.Run("sqs", func(t *testing.T) {
		aws := aws.on(t)
		name := cloudtest.Unique("cli-")
		var q struct{ QueueUrl string }
		aws.json(&q, "sqs", "create-queue", "--queue-name", name)
		aws.json(&q, "sqs", "get-queue-url", "--queue-name", name)
		body := `{"job_id":"cli"}`
		var sent struct{ MD5OfMessageBody, MD5OfMessageAttributes, MessageId string }
		aws.json(&sent, "sqs", "send-message", "--queue-url", q.QueueUrl, "--message-body", body,
			"--message-attributes", `{"sortie_event":{"DataType":"String","StringValue":"JobSubmitted"}}`)
		sum := md5.Sum([]byte(body))
		if sent.MD5OfMessageBody != hex.EncodeToString(sum[:]) || sent.MD5OfMessageAttributes == "" {
			t.Errorf("send-message: %+v", sent)
		}
		var got struct {
			Messages []struct {
				MessageId, ReceiptHandle, Body, MD5OfBody, MD5OfMessageAttributes string
				MessageAttributes                                                 map[string]struct{ StringValue string }
			}
		}
		aws.json(&got, "sqs", "receive-message", "--queue-url", q.QueueUrl, "--wait-time-seconds", "5",
			"--attribute-names", "All", "--message-attribute-names", "All")
		if len(got.Messages) != 1 {
			t.Fatalf("receive-message: %+v", got)
		}
		m := got.Messages[0]
		if m.Body != body || m.MessageId != sent.MessageId || m.MD5OfBody != sent.MD5OfMessageBody ||
			m.MD5OfMessageAttributes != sent.MD5OfMessageAttributes || m.MessageAttributes["sortie_event"].StringValue != "JobSubmitted" {
			t.Errorf("received %+v, sent %+v", m, sent)
		}
		aws.run("sqs", "delete-message", "--queue-url", q.QueueUrl, "--receipt-handle", m.ReceiptHandle)
		var attrs struct{ Attributes map[string]string }
		aws.json(&attrs, "sqs", "get-queue-attributes", "--queue-url", q.QueueUrl, "--attribute-names", "All")
		if attrs.Attributes["ApproximateNumberOfMessages"] != "0" || attrs.Attributes["ApproximateNumberOfMessagesNotVisible"] != "0" {
			t.Errorf("after delete-message: %v", attrs.Attributes)
		}
		_, stderr, err := aws.try("sqs", "get-queue-url", "--queue-name", name+"-missing")
		if err == nil || !strings.Contains(stderr, "NonExistentQueue") {
			t.Errorf("get-queue-url of a missing queue: %v %s", err, stderr)
		}
	})
}

// ansiblePlaybook is what the test runs: the default VPC, an SQS queue (community.aws, whose
// boto3 speaks SQS's Query protocol), a security group with SSH open to the world, two
// instances launched with count and wait, exact_count holding then shrinking them,
// ec2_instance_info with filters, and state: absent by filter.
const ansiblePlaybook = `- hosts: localhost
  connection: local
  gather_facts: false
  module_defaults:
    group/amazon.aws.aws:
      endpoint_url: "{{ lookup('env', 'AWS_ENDPOINT_URL') }}"
      region: us-east-1
      aws_access_key: test
      aws_secret_key: test
  vars:
    team: "{{ lookup('env', 'SORTIE_TEST_TEAM') }}"
    image: ami-0123456789abcdef0
  tasks:
    - name: the default VPC
      amazon.aws.ec2_vpc_net_info:
        filters: {isDefault: "true"}
      register: vpcs
    - assert:
        that: [vpcs.vpcs | length == 1]
    - name: a queue, through boto3's SQS Query protocol
      community.aws.sqs_queue:
        name: "{{ team }}"
        default_visibility_timeout: 7
        endpoint_url: "{{ lookup('env', 'AWS_ENDPOINT_URL') }}"
        region: us-east-1
        aws_access_key: test
        aws_secret_key: test
      register: queue
    - assert:
        that: [queue.changed]
    - name: security group
      amazon.aws.ec2_security_group:
        name: "ssh-{{ team }}"
        description: ssh from anywhere
        rules:
          - {proto: tcp, ports: [22], cidr_ip: 0.0.0.0/0}
      register: sg
    - name: launch two
      amazon.aws.ec2_instance:
        name: "{{ team }}"
        image_id: "{{ image }}"
        instance_type: t3.micro
        security_group: "{{ sg.group_id }}"
        count: 2
        wait: true
        tags: {team: "{{ team }}"}
      register: launched
    - assert:
        that:
          - launched.changed
          - launched.instance_ids | length == 2
    - name: exactly two is what there is
      amazon.aws.ec2_instance:
        name: "{{ team }}"
        image_id: "{{ image }}"
        instance_type: t3.micro
        security_group: "{{ sg.group_id }}"
        exact_count: 2
        wait: true
      register: again
    - assert:
        that: [not again.changed]
    - name: down to one
      amazon.aws.ec2_instance:
        name: "{{ team }}"
        image_id: "{{ image }}"
        instance_type: t3.micro
        exact_count: 1
        wait: true
      register: one
    - assert:
        that: [one.changed]
    - name: info
      amazon.aws.ec2_instance_info:
        filters:
          "tag:team": "{{ team }}"
          instance-state-name: running
      register: info
    - assert:
        that:
          - info.instances | length == 1
          - info.instances[0].vpc_id | length > 0
          - info.instances[0].subnet_id | length > 0
          - info.instances[0].security_groups[0].group_id == sg.group_id
    - name: absent
      amazon.aws.ec2_instance:
        state: absent
        filters:
          "tag:team": "{{ team }}"
        wait: true
      register: gone
    - assert:
        that: [gone.changed]
`

func TestAnsibleEC2InstanceAgainstLocalcloud(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: runs ansible-playbook")
	}
	playbook, err := exec.LookPath("ansible-playbook")
	if err != nil {
		cloudtest.MissingTool(t, "ansible-playbook is not installed (apt-get install ansible python3-boto3)")
	}
	galaxy, _ := exec.LookPath("ansible-galaxy")
	for _, collection := range []string{"amazon.aws", "community.aws"} {
		if out, err := exec.Command(galaxy, "collection", "list", collection).CombinedOutput(); err != nil || !bytes.Contains(out, []byte(collection)) {
			cloudtest.MissingTool(t, "the "+collection+" Ansible collection is not installed (Debian's ansible package ships it)")
		}
	}
	if err := exec.Command("python3", "-c", "import boto3").Run(); err != nil {
		cloudtest.MissingTool(t, "boto3 is not installed (apt-get install python3-boto3)")
	}
	endpoint := startLocalcloud(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "play.yml"), []byte(ansiblePlaybook), 0o644); err != nil {
		t.Fatal(err)
	}
	team := cloudtest.Unique("ansible-")

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, playbook, "-i", "localhost,", filepath.Join(dir, "play.yml"))
	cmd.Dir = dir
	cmd.Env = append(clientEnv(t, endpoint),
		"SORTIE_TEST_TEAM="+team,
		"ANSIBLE_LOCALHOST_WARNING=false", "ANSIBLE_INVENTORY_UNPARSED_WARNING=false", "ANSIBLE_NOCOLOR=1",
		"ANSIBLE_RETRY_FILES_ENABLED=false", "ANSIBLE_GATHERING=explicit", "ANSIBLE_HOST_KEY_CHECKING=false",
		"ANSIBLE_LOCAL_TEMP="+filepath.Join(dir, "tmp"), "ANSIBLE_HOME="+filepath.Join(dir, "home"),
		"ANSIBLE_PYTHON_INTERPRETER=auto_silent", "ANSIBLE_DEPRECATION_WARNINGS=false",
	)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("ansible-playbook: %v\n%s", err, out)
	}
	t.Logf("ansible-playbook:\n%s", out)

	// What Ansible left behind, seen through the SDK: the two instances launched under the
	// team's tag, all terminated; the group with SSH open to the world.
	ec2c := ec2.NewFromConfig(awsx.ForEndpoint(endpoint))
	insts := cloudtest.DescribeInstances(t, ec2c, &ec2.DescribeInstancesInput{Filters: []ec2types.Filter{{Name: aws.String("tag:team"), Values: []string{team}}}})
	if len(insts) != 2 {
		t.Errorf("instances tagged team=%s: %d, want the 2 launched", team, len(insts))
	}
	for _, i := range insts {
		if i.State.Name != ec2types.InstanceStateNameTerminated {
			t.Errorf("%s is %s after state: absent", aws.ToString(i.InstanceId), i.State.Name)
		}
	}
	sqsc := sqs.NewFromConfig(awsx.ForEndpoint(endpoint))
	attrs, err := sqsc.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{
		QueueUrl:       aws.String(cloudtest.QueueURL(t, sqsc, team)),
		AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameVisibilityTimeout},
	})
	if err != nil || attrs.Attributes["VisibilityTimeout"] != "7" {
		t.Errorf("the playbook's queue: %v %v, want VisibilityTimeout 7", err, attrs)
	}
	groups, err := ec2c.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{Filters: []ec2types.Filter{
		{Name: aws.String("group-name"), Values: []string{"ssh-" + team}},
		{Name: aws.String("ip-permission.from-port"), Values: []string{"22"}},
		{Name: aws.String("ip-permission.cidr"), Values: []string{"0.0.0.0/0"}},
	}})
	if err != nil || len(groups.SecurityGroups) != 1 {
		t.Errorf("the playbook's security group with 22 open: %v %+v", err, groups)
	}
}
