package localcloud_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	ebtypes "github.com/aws/aws-sdk-go-v2/service/eventbridge/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/ec2events"
	"github.com/sortie-fleet/sortie/pkg/infra"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
)

// noticeTimeout bounds how long a test waits for notices: generous, for a loaded machine.
const noticeTimeout = 30 * time.Second

// kinds renders notices as "spot-interruption-warning", "shutting-down", ...
func kinds(ns []cloudtest.ReceivedNotice) []string {
	var out []string
	for _, n := range ns {
		out = append(out, n.String())
	}
	return out
}

// onlyInstance describes one instance.
func onlyInstance(t *testing.T, client *ec2.Client, id string) ec2types.Instance {
	t.Helper()
	got := cloudtest.DescribeInstances(t, client, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
	if len(got) != 1 {
		t.Fatalf("DescribeInstances %s: %d instances", id, len(got))
	}
	return got[0]
}

// An injected spot interruption, after `infra up`: the stack's EC2 events queue gets the
// warning, then, once the notice has passed, the instance is terminated as EC2 does on
// interruption and the queue gets its state changes, in order.
func TestInterruptSpotDeliversNotices(t *testing.T) {
	t.Parallel()
	cloud := cloudtest.NewCloud(t, localcloud.Options{})
	s := cloudtest.NewStack(t, cloud)
	queue := cloudtest.QueueURL(t, s.SQS, s.Topology.EC2EventsQueueName())
	id := cloudtest.Launch(t, s.EC2, 1, cloudtest.LaunchSpec{Spot: true})[0].ID

	const notice = 2 * time.Second
	start := time.Now()
	if err := cloud.InterruptSpot(id, notice); err != nil {
		t.Fatalf("InterruptSpot: %v", err)
	}
	got := cloudtest.EC2Notices(t, s.SQS, queue, noticeTimeout, cloudtest.HasNotices(3, id))[id]
	if want := []string{ec2events.KindSpotWarning, "shutting-down", "terminated"}; !slices.Equal(kinds(got), want) {
		t.Fatalf("notices %v, want %v", kinds(got), want)
	}
	warning, shuttingDown, terminated := got[0], got[1], got[2]
	if warning.Action != "terminate" || !warning.Deadline().Equal(warning.Time.Add(ec2events.SpotNotice)) {
		t.Errorf("warning %+v: want instance-action terminate and a deadline two minutes on", warning.Notice)
	}
	// The warning was in the queue before the instance went, which it did no sooner than
	// the notice after the interruption.
	if !warning.Sent.Before(shuttingDown.Sent) || shuttingDown.Sent.After(terminated.Sent) {
		t.Errorf("sent at %v, %v, %v: want the warning, then shutting-down, then terminated",
			warning.Sent, shuttingDown.Sent, terminated.Sent)
	}
	if early := shuttingDown.Sent.Sub(start); early < notice-10*time.Millisecond { // SentTimestamp has ms
		t.Errorf("the instance was shutting down %v after the interruption, before its %v notice", early, notice)
	}

	in := onlyInstance(t, s.EC2, id)
	if in.State.Name != ec2types.InstanceStateNameTerminated || in.StateReason == nil ||
		aws.ToString(in.StateReason.Code) != "Server.SpotInstanceTermination" ||
		aws.ToString(in.StateReason.Message) != "Server.SpotInstanceTermination: Spot instance termination" {
		t.Errorf("instance %s, state reason %+v; want terminated by Server.SpotInstanceTermination", in.State.Name, in.StateReason)
	}
}

// A plain TerminateInstances, and an instance lost to someone else, give the state
// changes, without a warning.
func TestTerminationDeliversStateChanges(t *testing.T) {
	t.Parallel()
	cloud := cloudtest.NewCloud(t, localcloud.Options{})
	s := cloudtest.NewStack(t, cloud)
	queue := cloudtest.QueueURL(t, s.SQS, s.Topology.EC2EventsQueueName())
	insts := cloudtest.Launch(t, s.EC2, 2, cloudtest.LaunchSpec{})
	terminated, lost := insts[0].ID, insts[1].ID

	if _, err := s.EC2.TerminateInstances(t.Context(), &ec2.TerminateInstancesInput{InstanceIds: []string{terminated}}); err != nil {
		t.Fatal(err)
	}
	if err := cloud.LoseInstance(lost); err != nil {
		t.Fatalf("LoseInstance: %v", err)
	}
	all := cloudtest.EC2Notices(t, s.SQS, queue, noticeTimeout, cloudtest.HasNotices(2, terminated, lost))
	for _, id := range []string{terminated, lost} {
		got := all[id]
		if want := []string{"shutting-down", "terminated"}; !slices.Equal(kinds(got), want) {
			t.Errorf("%s: notices %v, want %v", id, kinds(got), want)
		}
		for _, n := range got {
			if !n.Lost() {
				t.Errorf("%s: %v does not say the instance is lost", id, n)
			}
		}
		if in := onlyInstance(t, s.EC2, id); aws.ToString(in.StateReason.Code) != "Client.UserInitiatedShutdown" {
			t.Errorf("%s: state reason %+v", id, in.StateReason)
		}
	}
}

// ruleToQueue makes a rule with pattern on the default bus whose one target is a new queue,
// with, when withPolicy, the policy infra gives the EC2 events queue (admitting the rule).
// It returns the queue's name; the rule goes at cleanup.
func ruleToQueue(t *testing.T, s *cloudtest.Stack, pattern string, withPolicy bool) string {
	t.Helper()
	ctx := t.Context()
	eb := eventbridge.NewFromConfig(s.AWS)
	name := cloudtest.Unique("t")
	q, err := s.SQS.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(name)})
	if err != nil {
		t.Fatal(err)
	}
	attrs, err := s.SQS.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: q.QueueUrl, AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameQueueArn}})
	if err != nil {
		t.Fatal(err)
	}
	queueARN := attrs.Attributes[string(sqstypes.QueueAttributeNameQueueArn)]
	rule, err := eb.PutRule(ctx, &eventbridge.PutRuleInput{Name: aws.String(name), EventPattern: aws.String(pattern)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := eb.PutTargets(ctx, &eventbridge.PutTargetsInput{Rule: aws.String(name), Targets: []ebtypes.Target{
		{Id: aws.String("q"), Arn: aws.String(queueARN)},
	}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		_, _ = eb.RemoveTargets(ctx, &eventbridge.RemoveTargetsInput{Rule: aws.String(name), Ids: []string{"q"}})
		_, _ = eb.DeleteRule(ctx, &eventbridge.DeleteRuleInput{Name: aws.String(name)})
	})
	if withPolicy {
		policy, err := infra.RuleQueuePolicy(queueARN, aws.ToString(rule.RuleArn))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.SQS.SetQueueAttributes(ctx, &sqs.SetQueueAttributesInput{QueueUrl: q.QueueUrl, Attributes: map[string]string{"Policy": string(policy)}}); err != nil {
			t.Fatal(err)
		}
	}
	return name
}

// Only matching rules get notices, and only into queues that let them in: a rule of
// another source gets none, a matching rule whose queue has no policy admitting it gets
// none (as on AWS), a stack whose rule is gone gets none, while the termination itself goes
// on as usual.
func TestNoticesOnlyForMatchingRules(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	cloud := cloudtest.NewCloud(t, localcloud.Options{})
	s := cloudtest.NewStack(t, cloud)
	eb := eventbridge.NewFromConfig(s.AWS)

	otherSource := ruleToQueue(t, s, `{"source":["aws.s3"]}`, true)
	noPolicy := ruleToQueue(t, s, ec2events.Pattern(), false)
	admitted := ruleToQueue(t, s, ec2events.Pattern(), true)

	// A second stack whose rule was taken away: its queue is nobody's target.
	ruleless := bus.Topology{Prefix: cloudtest.Unique("t")}
	if _, err := infra.Up(ctx, infra.NewClients(s.AWS), ruleless); err != nil {
		t.Fatal(err)
	}
	if _, err := eb.RemoveTargets(ctx, &eventbridge.RemoveTargetsInput{Rule: aws.String(ruleless.EC2EventsRuleName()), Ids: []string{infra.EC2EventsTargetID}}); err != nil {
		t.Fatal(err)
	}
	if _, err := eb.DeleteRule(ctx, &eventbridge.DeleteRuleInput{Name: aws.String(ruleless.EC2EventsRuleName())}); err != nil {
		t.Fatal(err)
	}

	id := cloudtest.Launch(t, s.EC2, 1, cloudtest.LaunchSpec{})[0].ID
	if _, err := s.EC2.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{id}}); err != nil {
		t.Fatalf("TerminateInstances: %v", err)
	}
	// The stack with the rule, and the queue admitting its matching rule, get both notices.
	// A notice goes to every target before the instance's next one is sent, so by then
	// shutting-down reached every queue it would.
	for _, q := range []string{s.Topology.EC2EventsQueueName(), admitted} {
		got := cloudtest.EC2Notices(t, s.SQS, cloudtest.QueueURL(t, s.SQS, q), noticeTimeout, cloudtest.HasNotices(2, id))[id]
		if want := []string{"shutting-down", "terminated"}; !slices.Equal(kinds(got), want) {
			t.Fatalf("%s: notices %v, want %v", q, kinds(got), want)
		}
	}
	for _, queue := range []string{otherSource, noPolicy, ruleless.EC2EventsQueueName()} {
		if n := cloudtest.QueueDepth(t, s.SQS, queue); n != 0 {
			t.Errorf("queue %s holds %d messages, want none", queue, n)
		}
	}
	if in := onlyInstance(t, s.EC2, id); in.State.Name != ec2types.InstanceStateNameTerminated {
		t.Errorf("instance %s, want terminated", in.State.Name)
	}
}

// Fault injection refuses what EC2 could not do.
func TestInterruptSpotRefuses(t *testing.T) {
	t.Parallel()
	cloud := cloudtest.NewCloud(t, localcloud.Options{})
	s := cloudtest.NewStack(t, cloud)
	onDemand := cloudtest.Launch(t, s.EC2, 1, cloudtest.LaunchSpec{})[0].ID
	spot := cloudtest.Launch(t, s.EC2, 2, cloudtest.LaunchSpec{Spot: true})
	if err := cloud.InterruptSpot(spot[1].ID, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := cloud.LoseInstance(spot[0].ID); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		err  error
		want error // nil: any error
	}{
		{"unknown id", cloud.InterruptSpot("i-0123456789abcdef0", time.Second), localcloud.ErrUnknownInstance},
		{"on-demand", cloud.InterruptSpot(onDemand, time.Second), localcloud.ErrNotSpot},
		{"terminated", cloud.InterruptSpot(spot[0].ID, time.Second), localcloud.ErrNotRunning},
		{"already interrupted", cloud.InterruptSpot(spot[1].ID, time.Second), nil},
		{"lose unknown", cloud.LoseInstance("i-0123456789abcdef0"), localcloud.ErrUnknownInstance},
		{"lose twice", cloud.LoseInstance(spot[0].ID), localcloud.ErrNotRunning},
	}
	for _, tt := range tests {
		if tt.err == nil || tt.want != nil && !errors.Is(tt.err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, tt.err, tt.want)
		}
	}
	if in := onlyInstance(t, s.EC2, spot[1].ID); in.State.Name != ec2types.InstanceStateNameRunning {
		t.Errorf("an interruption an hour away took the instance: %s", in.State.Name)
	}
	if in := onlyInstance(t, s.EC2, onDemand); !strings.HasPrefix(string(in.State.Name), "running") {
		t.Errorf("the on-demand instance is %s", in.State.Name)
	}
}
