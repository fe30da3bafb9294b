package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	ebtypes "github.com/aws/aws-sdk-go-v2/service/eventbridge/types"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/sortie-fleet/sortie/pkg/audit"
	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/ec2events"
	"github.com/sortie-fleet/sortie/pkg/infra"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/tags"
)

// TestAudit runs `sortie audit` on a stack made by `infra up` on the local cloud (exit 0),
// then breaks one thing at a time: each must make it exit 1 naming the resource and rule.
func TestAudit(t *testing.T) {
	cloud := useCloud(t)
	ctx := t.Context()
	prefix := "au" + strings.ToLower(randomHex(3))
	topo := bus.Topology{Prefix: prefix}
	cfg := awsx.ForEndpoint(cloud.URL())
	s3c := s3.NewFromConfig(cfg, awsx.S3Options(cfg))
	snsc := sns.NewFromConfig(cfg)

	infraUp := func(t *testing.T) {
		t.Helper()
		if out, err := runCLI(t, "--prefix", prefix, "infra", "up"); err != nil {
			t.Fatalf("infra up: %v\n%s", err, out)
		}
	}
	// failsWith runs the audit and wants exit 1 with exactly one non-compliant resource,
	// and the finding's line.
	failsWith := func(t *testing.T, typ, resource string, rule audit.Rule, reason string, args ...string) string {
		t.Helper()
		out, err := runCLI(t, append([]string{"--prefix", prefix, "audit"}, args...)...)
		if err == nil || !strings.HasSuffix(err.Error(), ": "+typ+" "+resource) {
			t.Fatalf("audit: error %v, want one non-compliant %s %s\n%s", err, typ, resource, out)
		}
		if st, why := finding(out, typ, resource, rule); st != audit.NonCompliant || !strings.Contains(why, reason) {
			t.Errorf("%s %s %s: %s %q, want NON_COMPLIANT with %q\n%s", typ, resource, rule, st, why, reason, out)
		}
		return out
	}

	infraUp(t)
	t.Run("a stack made by infra up passes", func(t *testing.T) {
		out, err := runCLI(t, "--prefix", prefix, "audit")
		if err != nil {
			t.Fatalf("audit: %v\n%s", err, out)
		}
		for _, b := range []string{topo.BucketName(), topo.SecretsBucketName()} {
			for _, rule := range audit.Rules {
				if st, _ := finding(out, "bucket", b, rule); st != audit.Compliant {
					t.Errorf("bucket %s %s is %q, want COMPLIANT:\n%s", b, rule, st, out)
				}
			}
		}
		for _, et := range bus.EventTypes {
			if st, _ := finding(out, "topic", topo.TopicName(et), audit.RuleProducersOnly); st != audit.Compliant {
				t.Errorf("topic %s is %q, want COMPLIANT:\n%s", topo.TopicName(et), st, out)
			}
		}
		for _, role := range audit.StackRoles(topo) {
			if st, _ := finding(out, "role", role, audit.RuleLeastPrivilege); st != audit.NotApplicable {
				t.Errorf("role %s is %q, want NOT_APPLICABLE (infra up creates no roles):\n%s", role, st, out)
			}
		}
		for _, f := range []struct {
			typ, id string
			rule    audit.Rule
		}{
			{"rule", topo.EC2EventsRuleName(), audit.RuleEnabled}, {"rule", topo.EC2EventsRuleName(), audit.RuleEC2EventsPattern},
			{"rule", topo.EC2EventsRuleName(), audit.RuleTargetsQueue}, {"queue", topo.EC2EventsQueueName(), audit.RuleDeadLetterQueue},
			{"queue", topo.EC2EventsQueueName(), audit.RuleRuleSendsOnly},
		} {
			if st, _ := finding(out, f.typ, f.id, f.rule); st != audit.Compliant {
				t.Errorf("%s %s %s is %q, want COMPLIANT:\n%s", f.typ, f.id, f.rule, st, out)
			}
		}
		if strings.Contains(out, "NON_COMPLIANT") {
			t.Errorf("a fresh stack has a non-compliant finding:\n%s", out)
		}
	})

	t.Run("a bucket named on the command line that does not exist", func(t *testing.T) {
		nope := prefix + "-nope"
		failsWith(t, "bucket", nope, audit.RuleExists, "bucket does not exist", "--bucket", nope)

		var stdout, stderr bytes.Buffer
		err := run(ctx, []string{"--prefix", prefix, "audit", "--json", "--bucket", nope}, &stdout, &stderr)
		if err == nil {
			t.Fatal("--json: want an error for the missing bucket")
		}
		var r struct {
			Evaluations []struct {
				ConfigRuleName, ComplianceResourceType, ComplianceResourceId, ComplianceType, Annotation string
				OrderingTimestamp                                                                        time.Time
			}
		}
		if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
			t.Fatalf("stdout is not JSON: %v\n%s", err, stdout.String())
		}
		var bad []string
		for _, e := range r.Evaluations {
			if e.ComplianceType != "NON_COMPLIANT" {
				continue
			}
			bad = append(bad, e.ComplianceResourceId)
			if e.ComplianceResourceType != "AWS::S3::Bucket" || e.ComplianceResourceId != nope || e.ConfigRuleName != "exists" ||
				e.Annotation != "bucket does not exist" || time.Since(e.OrderingTimestamp) > time.Hour {
				t.Errorf("evaluation %+v, want the missing bucket NON_COMPLIANT", e)
			}
		}
		if len(bad) != 1 {
			t.Errorf("non-compliant %v, want only %s:\n%s", bad, nope, stdout.String())
		}
	})

	t.Run("the stack's secrets bucket does not exist", func(t *testing.T) {
		if _, err := s3c.DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: aws.String(topo.SecretsBucketName())}); err != nil {
			t.Fatal(err)
		}
		failsWith(t, "bucket", topo.SecretsBucketName(), audit.RuleExists, "bucket does not exist")
		infraUp(t)
	})

	topicARN := func(t *testing.T, et string) string {
		t.Helper()
		out, err := snsc.CreateTopic(ctx, &sns.CreateTopicInput{Name: aws.String(topo.TopicName(et))}) // idempotent: its ARN
		if err != nil {
			t.Fatal(err)
		}
		return aws.ToString(out.TopicArn)
	}
	t.Run("a topic anyone may publish to", func(t *testing.T) {
		open := `{"Version":"2012-10-17","Statement":[{"Sid":"Open","Effect":"Allow","Principal":{"AWS":"*"},"Action":"sns:Publish","Resource":"*"}]}`
		if _, err := snsc.SetTopicAttributes(ctx, &sns.SetTopicAttributesInput{
			TopicArn: aws.String(topicARN(t, bus.FleetLaunched)), AttributeName: aws.String("Policy"), AttributeValue: aws.String(open),
		}); err != nil {
			t.Fatal(err)
		}
		failsWith(t, "topic", topo.TopicName(bus.FleetLaunched), audit.RuleProducersOnly, "Open: lets any principal (*) publish")
		infraUp(t)
	})

	t.Run("a topic with the default policy", func(t *testing.T) {
		arn := topicARN(t, bus.TaskReported)
		if _, err := snsc.DeleteTopic(ctx, &sns.DeleteTopicInput{TopicArn: aws.String(arn)}); err != nil {
			t.Fatal(err)
		}
		failsWith(t, "topic", topo.TopicName(bus.TaskReported), audit.RuleExists, "topic does not exist")
		topicARN(t, bus.TaskReported) // back, with SNS's default policy
		failsWith(t, "topic", topo.TopicName(bus.TaskReported), audit.RuleProducersOnly, "default policy: any principal of the account may publish")
		infraUp(t)
	})

	eb, sqsc := eventbridge.NewFromConfig(cfg), sqs.NewFromConfig(cfg)
	rule, queue := topo.EC2EventsRuleName(), topo.EC2EventsQueueName()
	ruleARN := func(t *testing.T) string {
		t.Helper()
		out, err := eb.DescribeRule(ctx, &eventbridge.DescribeRuleInput{Name: aws.String(rule)})
		if err != nil {
			t.Fatal(err)
		}
		return aws.ToString(out.Arn)
	}
	removeTarget := func(t *testing.T) {
		t.Helper()
		if _, err := eb.RemoveTargets(ctx, &eventbridge.RemoveTargetsInput{Rule: aws.String(rule), Ids: []string{infra.EC2EventsTargetID}}); err != nil {
			t.Fatal(err)
		}
	}
	setQueuePolicy := func(t *testing.T, doc string) {
		t.Helper()
		u, err := sqsc.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String(queue)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sqsc.SetQueueAttributes(ctx, &sqs.SetQueueAttributesInput{QueueUrl: u.QueueUrl, Attributes: map[string]string{"Policy": doc}}); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("the EC2 events rule deleted", func(t *testing.T) {
		removeTarget(t) // AWS refuses to delete a rule with targets; kumo does not
		if _, err := eb.DeleteRule(ctx, &eventbridge.DeleteRuleInput{Name: aws.String(rule)}); err != nil {
			t.Fatal(err)
		}
		failsWith(t, "rule", rule, audit.RuleExists, "rule does not exist: EC2's notices reach no queue; the monitor will not hear of spot interruptions or lost instances (run `sortie infra up`")

		var stdout, stderr bytes.Buffer
		if err := run(ctx, []string{"--prefix", prefix, "audit", "--json"}, &stdout, &stderr); err == nil {
			t.Fatal("--json: want an error for the missing rule")
		}
		var r struct{ Evaluations []map[string]string }
		if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
			t.Fatalf("stdout is not JSON: %v\n%s", err, stdout.String())
		}
		var bad []map[string]string
		for _, e := range r.Evaluations {
			if e["ComplianceType"] == "NON_COMPLIANT" {
				bad = append(bad, e)
			}
		}
		if len(bad) != 1 || bad[0]["ComplianceResourceType"] != "AWS::Events::Rule" || bad[0]["ComplianceResourceId"] != rule || bad[0]["ConfigRuleName"] != "exists" {
			t.Errorf("--json: non-compliant %v, want only AWS::Events::Rule %s exists\n%s", bad, rule, stdout.String())
		}
		infraUp(t)
	})
	t.Run("the EC2 events rule disabled", func(t *testing.T) {
		// kumo has no DisableRule: PutRule with the state.
		if _, err := eb.PutRule(ctx, &eventbridge.PutRuleInput{Name: aws.String(rule), EventPattern: aws.String(ec2events.Pattern()), State: ebtypes.RuleStateDisabled}); err != nil {
			t.Fatal(err)
		}
		failsWith(t, "rule", rule, audit.RuleEnabled, "state DISABLED, want ENABLED")
		infraUp(t)
	})
	t.Run("the EC2 events rule without its target", func(t *testing.T) {
		removeTarget(t)
		failsWith(t, "rule", rule, audit.RuleTargetsQueue, "no targets: the monitor will not hear of spot interruptions")
		infraUp(t)
	})
	t.Run("the EC2 events queue open to anyone", func(t *testing.T) {
		setQueuePolicy(t, `{"Version":"2012-10-17","Statement":[{"Sid":"Open","Effect":"Allow","Principal":"*","Action":"sqs:SendMessage","Resource":"*"}]}`)
		failsWith(t, "queue", queue, audit.RuleRuleSendsOnly, "Open: lets any principal (*) send")
		infraUp(t)
	})
	t.Run("the EC2 events queue's policy without aws:SourceArn", func(t *testing.T) {
		setQueuePolicy(t, `{"Version":"2012-10-17","Statement":[{"Sid":"AnyRule","Effect":"Allow","Principal":{"Service":"events.amazonaws.com"},"Action":"sqs:SendMessage","Resource":"*"}]}`)
		failsWith(t, "queue", queue, audit.RuleRuleSendsOnly, "AnyRule: no condition aws:SourceArn = "+ruleARN(t))
		infraUp(t)
	})

	ec2c := ec2.NewFromConfig(cfg)
	t.Run("a template's security group open to SSH from anywhere", func(t *testing.T) {
		group := func(name string, open bool) string {
			t.Helper()
			g, err := ec2c.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{GroupName: aws.String(prefix + "-" + name), Description: aws.String(name)})
			if err != nil {
				t.Fatal(err)
			}
			perm := ec2types.IpPermission{IpProtocol: aws.String("tcp"), FromPort: aws.Int32(22), ToPort: aws.Int32(22),
				IpRanges: []ec2types.IpRange{{CidrIp: aws.String("10.0.0.0/8")}}}
			if open {
				perm.IpRanges = []ec2types.IpRange{{CidrIp: aws.String("0.0.0.0/0")}}
				perm.Ipv6Ranges = []ec2types.Ipv6Range{{CidrIpv6: aws.String("::/0")}}
			}
			if _, err := ec2c.AuthorizeSecurityGroupIngress(ctx, &ec2.AuthorizeSecurityGroupIngressInput{GroupId: g.GroupId, IpPermissions: []ec2types.IpPermission{perm}}); err != nil {
				t.Fatal(err)
			}
			return aws.ToString(g.GroupId)
		}
		closed, open := group("closed", false), group("open", true)
		config := func(groups ...string) string {
			t.Helper()
			yaml := strings.Replace(string(opsconfig.DefaultYAML()), "security_groups: [sg-0123456789abcdef0]", "security_groups: ["+strings.Join(groups, ", ")+"]", 1)
			path := filepath.Join(t.TempDir(), "ops.yaml")
			if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			return path
		}
		out, err := runCLI(t, "--prefix", prefix, "audit", "--config", config(closed))
		if st, why := finding(out, "security-group", closed, audit.RuleRestrictedSSH); err != nil || st != audit.Compliant {
			t.Errorf("SSH from 10.0.0.0/8 only: %v, %s %q\n%s", err, st, why, out)
		}
		failsWith(t, "security-group", open, audit.RuleRestrictedSSH, "port 22 open to 0.0.0.0/0 (tcp 22-22); port 22 open to ::/0 (tcp 22-22)",
			"--config", config(closed, open))
	})

	t.Run("an instance of the stack without IMDSv2", func(t *testing.T) {
		key := cloudtest.NewKeyPair(t, ec2c, prefix+"-key")
		launch := func(tokens ec2types.HttpTokensState) string {
			t.Helper()
			run, err := ec2c.RunInstances(ctx, &ec2.RunInstancesInput{
				ImageId: aws.String(cloudtest.Image), InstanceType: ec2types.InstanceTypeT3Micro, MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
				KeyName:         aws.String(key.Name),
				MetadataOptions: &ec2types.InstanceMetadataOptionsRequest{HttpTokens: tokens, HttpPutResponseHopLimit: aws.Int32(1)},
				TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance,
					Tags: []ec2types.Tag{{Key: aws.String(tags.Stack), Value: aws.String(prefix)}}}},
			})
			if err != nil {
				t.Fatal(err)
			}
			return aws.ToString(run.Instances[0].InstanceId)
		}
		v2, v1 := launch(ec2types.HttpTokensStateRequired), launch(ec2types.HttpTokensStateOptional)
		out := failsWith(t, "instance", v1, audit.RuleIMDSv2, "HttpTokens optional, want required: IMDSv1 answers")
		if st, why := finding(out, "instance", v2, audit.RuleIMDSv2); st != audit.Compliant || why != "HttpTokens required, hop limit 1" {
			t.Errorf("instance launched with IMDSv2: %s %q\n%s", st, why, out)
		}
		if _, err := ec2c.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{v1, v2}}); err != nil {
			t.Fatal(err)
		}
		cloudtest.Eventually(t, time.Minute, func() error {
			out, err := runCLI(t, "--prefix", prefix, "audit")
			if err != nil {
				return err
			}
			if strings.Contains(out, v1) || strings.Contains(out, v2) {
				return errors.New("a terminated instance is still audited")
			}
			return nil
		})
	})

	t.Run("a role of the stack with Action *", func(t *testing.T) {
		iamc := iam.NewFromConfig(cfg)
		role := topo.RoleName(bus.Reaper)
		if _, err := iamc.CreateRole(ctx, &iam.CreateRoleInput{RoleName: aws.String(role),
			AssumeRolePolicyDocument: aws.String(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ecs-tasks.amazonaws.com"},"Action":"sts:AssumeRole"}]}`),
		}); err != nil {
			t.Fatal(err)
		}
		if _, err := iamc.PutRolePolicy(ctx, &iam.PutRolePolicyInput{RoleName: aws.String(role), PolicyName: aws.String("everything"),
			PolicyDocument: aws.String(`{"Version":"2012-10-17","Statement":[{"Sid":"Admin","Effect":"Allow","Action":"*","Resource":"*"}]}`),
		}); err != nil {
			t.Fatal(err)
		}
		failsWith(t, "role", role, audit.RuleLeastPrivilege, "everything/Admin: Action *")
	})
}

// finding is the STATUS and REASON of the report line about a resource and rule.
func finding(report, typ, resource string, rule audit.Rule) (audit.Status, string) {
	for _, line := range strings.Split(report, "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[0] == typ && f[1] == resource && f[2] == string(rule) {
			return audit.Status(f[3]), strings.Join(f[4:], " ")
		}
	}
	return "", ""
}
