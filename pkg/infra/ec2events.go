package infra

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	ebtypes "github.com/aws/aws-sdk-go-v2/service/eventbridge/types"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/ec2events"
	"github.com/sortie-fleet/sortie/pkg/tags"
)

// EC2's notices reach the stack as AWS delivers them: an EventBridge rule on the default
// event bus (Topology.EC2EventsRuleName, pattern ec2events.Pattern) whose one target is the
// queue Topology.EC2EventsQueueName (with a DLQ, as every queue), and a queue policy that
// lets events.amazonaws.com send to it only for that rule. deployments/terraform/main.tf
// declares the same; TestTerraformEC2Events compares them.

// EC2EventsTargetID is the id of the rule's target (the queue), the same in the Terraform.
const EC2EventsTargetID = "sortie-ec2-events"

// ruleDescription says what the rule is for, in the console.
func ruleDescription(topo bus.Topology) string {
	return fmt.Sprintf("Sortie %s: EC2 spot interruption warnings and instance state changes to %s", topo.Prefix, topo.EC2EventsQueueName())
}

// ensureEC2Events makes the rule, the queue (and DLQ) whose policy admits the rule, and the
// rule's target.
func (u *upper) ensureEC2Events(ctx context.Context, topo bus.Topology) error {
	ruleARN, err := u.ensureRule(ctx, topo)
	if err != nil {
		return err
	}
	q := topo.EC2EventsQueueName()
	queueARN, err := u.ensureQueuePair(ctx, KindEventsQueue, q, bus.DLQName(q), func(queueARN string) ([]byte, error) {
		return RuleQueuePolicy(queueARN, ruleARN)
	})
	if err != nil {
		return err
	}
	return u.ensureTarget(ctx, topo.EC2EventsRuleName(), q, queueARN)
}

// ensureRule creates the rule with its stack tag, or claims an existing one and puts back
// its pattern and state when they differ. It returns the rule's ARN, as EventBridge gives
// it (kumo's differ from AWS's for the default bus: never build it).
func (u *upper) ensureRule(ctx context.Context, topo bus.Topology) (string, error) {
	name := topo.EC2EventsRuleName()
	in := &eventbridge.PutRuleInput{
		Name:         aws.String(name),
		EventPattern: aws.String(ec2events.Pattern()),
		State:        ebtypes.RuleStateEnabled,
		Description:  aws.String(ruleDescription(topo)),
	}
	have, err := u.c.EventBridge.DescribeRule(ctx, &eventbridge.DescribeRuleInput{Name: aws.String(name)})
	if awsx.IsNotFound(err) {
		in.Tags = u.tagger.eventBridgeTags()
		out, err := u.c.EventBridge.PutRule(ctx, in)
		if err != nil {
			return "", fmt.Errorf("creating rule %s: %w", name, err)
		}
		u.report.add(Created, KindRule, name, "")
		return aws.ToString(out.RuleArn), nil
	}
	if err != nil {
		return "", fmt.Errorf("reading rule %s: %w", name, err)
	}
	arn := aws.ToString(have.Arn)
	if err := u.tagger.claimRule(ctx, &u.report, name, arn); err != nil {
		return "", err
	}
	var drift []string
	if !samePattern(aws.ToString(have.EventPattern), ec2events.Pattern()) {
		drift = append(drift, "EventPattern changed")
	}
	if have.State != ebtypes.RuleStateEnabled {
		drift = append(drift, fmt.Sprintf("State %s→%s", orNone(string(have.State)), ebtypes.RuleStateEnabled))
	}
	if len(drift) == 0 {
		u.report.add(Exists, KindRule, name, "")
		return arn, nil
	}
	// PutRule on an existing rule replaces its settings and leaves its tags alone.
	if _, err := u.c.EventBridge.PutRule(ctx, in); err != nil {
		return "", fmt.Errorf("updating rule %s: %w", name, err)
	}
	u.report.add(Updated, KindRule, name, strings.Join(drift, "; "))
	return arn, nil
}

// ensureTarget points the rule's target EC2EventsTargetID at the queue; other targets of
// the rule are left alone.
func (u *upper) ensureTarget(ctx context.Context, rule, queue, queueARN string) error {
	name := rule + " -> " + queue
	targets, err := listTargets(ctx, u.c.EventBridge, rule)
	if err != nil {
		return err
	}
	action, detail := Created, ""
	for _, t := range targets {
		if aws.ToString(t.Id) != EC2EventsTargetID {
			continue
		}
		if aws.ToString(t.Arn) == queueARN && t.Input == nil && t.InputPath == nil && t.InputTransformer == nil {
			u.report.add(Exists, KindRuleTarget, name, "")
			return nil
		}
		action, detail = Updated, fmt.Sprintf("target %s→%s", orNone(aws.ToString(t.Arn)), queueARN)
	}
	out, err := u.c.EventBridge.PutTargets(ctx, &eventbridge.PutTargetsInput{
		Rule:    aws.String(rule),
		Targets: []ebtypes.Target{{Id: aws.String(EC2EventsTargetID), Arn: aws.String(queueARN)}},
	})
	if err == nil && out.FailedEntryCount > 0 {
		e := out.FailedEntries[0]
		err = fmt.Errorf("%s: %s", aws.ToString(e.ErrorCode), aws.ToString(e.ErrorMessage))
	}
	if err != nil {
		return fmt.Errorf("putting target %s: %w", name, err)
	}
	u.report.add(action, KindRuleTarget, name, detail)
	return nil
}

func listTargets(ctx context.Context, api EventBridgeAPI, rule string) ([]ebtypes.Target, error) {
	var out []ebtypes.Target
	in := &eventbridge.ListTargetsByRuleInput{Rule: aws.String(rule)}
	for {
		page, err := api.ListTargetsByRule(ctx, in)
		if err != nil {
			return nil, fmt.Errorf("listing targets of rule %s: %w", rule, err)
		}
		out = append(out, page.Targets...)
		if aws.ToString(page.NextToken) == "" {
			return out, nil
		}
		in.NextToken = page.NextToken
	}
}

// deleteEC2EventsRule removes the rule's targets, then the rule, when it carries the
// stack's tag (EventBridge refuses to delete a rule that has targets).
func (d *downer) deleteEC2EventsRule(ctx context.Context, topo bus.Topology) error {
	rule, queue := topo.EC2EventsRuleName(), topo.EC2EventsQueueName()
	target := rule + " -> " + queue
	have, err := d.c.EventBridge.DescribeRule(ctx, &eventbridge.DescribeRuleInput{Name: aws.String(rule)})
	if awsx.IsNotFound(err) {
		d.report.add(Absent, KindRuleTarget, target, "")
		d.report.add(Absent, KindRule, rule, "")
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading rule %s: %w", rule, err)
	}
	ours, err := d.tagger.ours(&d.report, KindRule, rule, func() (owner, error) { return d.tagger.ruleOwner(ctx, aws.ToString(have.Arn)) })
	if err != nil || !ours {
		return err
	}
	targets, err := listTargets(ctx, d.c.EventBridge, rule)
	if err != nil {
		return err
	}
	var ids []string
	action := Absent
	for _, t := range targets {
		ids = append(ids, aws.ToString(t.Id))
		if aws.ToString(t.Id) == EC2EventsTargetID {
			action = Deleted
		}
	}
	if len(ids) > 0 {
		out, err := d.c.EventBridge.RemoveTargets(ctx, &eventbridge.RemoveTargetsInput{Rule: aws.String(rule), Ids: ids})
		if err == nil && out.FailedEntryCount > 0 {
			e := out.FailedEntries[0]
			err = fmt.Errorf("%s: %s", aws.ToString(e.ErrorCode), aws.ToString(e.ErrorMessage))
		}
		if err != nil {
			return fmt.Errorf("removing targets of rule %s: %w", rule, err)
		}
	}
	d.report.add(action, KindRuleTarget, target, "")
	_, err = d.c.EventBridge.DeleteRule(ctx, &eventbridge.DeleteRuleInput{Name: aws.String(rule)})
	switch {
	case awsx.IsNotFound(err):
		d.report.add(Absent, KindRule, rule, "")
	case err != nil:
		return fmt.Errorf("deleting rule %s: %w", rule, err)
	default:
		d.report.add(Deleted, KindRule, rule, "")
	}
	return nil
}

// samePattern compares two event patterns by meaning: key order and whitespace do not
// matter, but unlike policies a one-element list is not its element (EventBridge wants
// lists).
func samePattern(a, b string) bool {
	var va, vb any
	if json.Unmarshal([]byte(a), &va) != nil || json.Unmarshal([]byte(b), &vb) != nil {
		return false
	}
	return reflect.DeepEqual(va, vb)
}

func (t stackTagger) ruleOwner(ctx context.Context, arn string) (owner, error) {
	out, err := t.c.EventBridge.ListTagsForResource(ctx, &eventbridge.ListTagsForResourceInput{ResourceARN: aws.String(arn)})
	if err != nil {
		return owner{}, fmt.Errorf("reading tags of rule %s: %w", arn, err)
	}
	for _, tg := range out.Tags {
		if aws.ToString(tg.Key) == tags.Stack {
			return owner{stack: aws.ToString(tg.Value), tagged: true}, nil
		}
	}
	return owner{}, nil
}

func (t stackTagger) claimRule(ctx context.Context, r *Report, name, arn string) error {
	return t.claim(r, KindRule, name, false, func() (owner, error) { return t.ruleOwner(ctx, arn) }, func() error {
		_, err := t.c.EventBridge.TagResource(ctx, &eventbridge.TagResourceInput{ResourceARN: aws.String(arn), Tags: t.eventBridgeTags()})
		return err
	})
}

func (t stackTagger) eventBridgeTags() []ebtypes.Tag {
	return []ebtypes.Tag{{Key: aws.String(tags.Stack), Value: aws.String(t.stack)}}
}
