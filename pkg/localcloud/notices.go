package localcloud

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	ebtypes "github.com/aws/aws-sdk-go-v2/service/eventbridge/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/google/uuid"

	"github.com/sortie-fleet/sortie/pkg/ec2events"
	"github.com/sortie-fleet/sortie/pkg/iampolicy"
)

// EC2's notices, delivered as AWS delivers them: when an instance moves to shutting-down
// or terminated, or a spot interruption is injected, the cloud builds the EventBridge
// envelope (pkg/ec2events) and sends it, as the body of an SQS message, to every SQS target
// of every enabled rule on kumo's default event bus whose pattern matches it.
//
// kumo's own PutEvents delivery is not used: it posts to http://localhost:4566, fixed when
// the package is initialised, which is not where an in-process kumo listens (and another
// process may own 4566). The cloud reads the rules and targets from kumo's EventBridge and
// sends through kumo's SQS at the in-process server's own URL.
//
// As on AWS, a queue gets a rule's notices only when its policy lets events.amazonaws.com
// send to it with aws:SourceArn the rule's ARN (evaluated with pkg/iampolicy; kumo stores
// queue policies without enforcing them): a queue without that policy gets nothing, and
// the refusal is logged.
//
// Delivery is asynchronous (a goroutine per notice, stopped by Close) and never blocks or
// fails the EC2 call that caused it; failures are logged. The notices of one instance are
// delivered in the order they happened.

// ruleReader lists the default bus's rules and a rule's targets.
type ruleReader interface {
	ListRules(ctx context.Context, params *eventbridge.ListRulesInput, optFns ...func(*eventbridge.Options)) (*eventbridge.ListRulesOutput, error)
	ListTargetsByRule(ctx context.Context, params *eventbridge.ListTargetsByRuleInput, optFns ...func(*eventbridge.Options)) (*eventbridge.ListTargetsByRuleOutput, error)
}

// queueSender sends a notice to a target queue whose policy admits it.
type queueSender interface {
	GetQueueUrl(ctx context.Context, params *sqs.GetQueueUrlInput, optFns ...func(*sqs.Options)) (*sqs.GetQueueUrlOutput, error)
	GetQueueAttributes(ctx context.Context, params *sqs.GetQueueAttributesInput, optFns ...func(*sqs.Options)) (*sqs.GetQueueAttributesOutput, error)
	SendMessage(ctx context.Context, params *sqs.SendMessageInput, optFns ...func(*sqs.Options)) (*sqs.SendMessageOutput, error)
}

var (
	_ ruleReader  = (*eventbridge.Client)(nil)
	_ queueSender = (*sqs.Client)(nil)
)

// where is the region and account of the cloud's notices and ARNs.
var where = ec2events.Where{Region: region, Account: ownerID}

// stateNoticeLocked sends the state-change notice of inst's current state.
func (c *Cloud) stateNoticeLocked(inst *instance) <-chan struct{} {
	return c.noticeLocked(inst, ec2events.StateChange(where, uuid.NewString(), inst.id, inst.state.Name, time.Now()))
}

// noticeLocked delivers env in a goroutine of its own, after inst's earlier notices. The
// channel closes when the delivery is over (done, failed, or cut short by Close). Once the
// cloud is closing nothing is sent.
func (c *Cloud) noticeLocked(inst *instance, env ec2events.Envelope) <-chan struct{} {
	done := make(chan struct{})
	if c.ctx.Err() != nil {
		close(done)
		return done
	}
	prev := inst.lastNotice
	inst.lastNotice = done
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer close(done)
		if prev != nil {
			select {
			case <-prev:
			case <-c.ctx.Done():
				return
			}
		}
		c.deliver(c.ctx, env)
	}()
	return done
}

// deliver sends env to the SQS targets of every enabled rule of the default bus whose
// pattern matches it.
func (c *Cloud) deliver(ctx context.Context, env ec2events.Envelope) {
	log := c.log.With("notice", env.DetailType, "event_id", env.ID, "resources", env.Resources)
	body, err := json.Marshal(env)
	if err != nil {
		log.Error("encoding EC2 notice", "err", err)
		return
	}
	rules, err := c.listRules(ctx)
	if err != nil {
		c.deliveryFailed(ctx, log, "listing EventBridge rules", err)
		return
	}
	sent := 0
	for _, r := range rules {
		if ctx.Err() != nil { // closing: the rest would fail as well
			return
		}
		name := aws.ToString(r.Name)
		if r.State != ebtypes.RuleStateEnabled || aws.ToString(r.EventPattern) == "" {
			continue
		}
		ok, err := matchPattern([]byte(aws.ToString(r.EventPattern)), body)
		if err != nil {
			log.Warn("EventBridge rule's pattern not understood by the local cloud: treated as no match", "rule", name, "err", err)
			continue
		}
		if !ok {
			continue
		}
		targets, err := c.listTargets(ctx, name)
		if err != nil {
			c.deliveryFailed(ctx, log.With("rule", name), "listing the rule's targets", err)
			continue
		}
		for _, t := range targets {
			if err := c.sendToTarget(ctx, aws.ToString(r.Arn), t, body); err != nil {
				c.deliveryFailed(ctx, log.With("rule", name, "target", aws.ToString(t.Arn)), "delivering EC2 notice", err)
				continue
			}
			sent++
		}
	}
	log.Debug("EC2 notice delivered", "targets", sent)
}

// deliveryFailed logs a failure, unless the cloud is closing (then the failure is Close's
// doing).
func (c *Cloud) deliveryFailed(ctx context.Context, log *slog.Logger, what string, err error) {
	if ctx.Err() != nil {
		return
	}
	log.Warn(what, "err", err)
}

// listRules lists the default bus's rules. kumo returns at most Limit rules (ten by
// default) in no order and never a NextToken, so the cloud asks for all of them at once.
func (c *Cloud) listRules(ctx context.Context) ([]ebtypes.Rule, error) {
	var out []ebtypes.Rule
	in := &eventbridge.ListRulesInput{EventBusName: aws.String("default"), Limit: aws.Int32(math.MaxInt32)}
	for {
		page, err := c.rules.ListRules(ctx, in)
		if err != nil {
			return nil, err
		}
		out = append(out, page.Rules...)
		if aws.ToString(page.NextToken) == "" {
			return out, nil
		}
		in.NextToken = page.NextToken
	}
}

func (c *Cloud) listTargets(ctx context.Context, rule string) ([]ebtypes.Target, error) {
	var out []ebtypes.Target
	in := &eventbridge.ListTargetsByRuleInput{Rule: aws.String(rule), Limit: aws.Int32(math.MaxInt32)}
	for {
		page, err := c.rules.ListTargetsByRule(ctx, in)
		if err != nil {
			return nil, err
		}
		out = append(out, page.Targets...)
		if aws.ToString(page.NextToken) == "" {
			return out, nil
		}
		in.NextToken = page.NextToken
	}
}

// errUnsupportedTarget marks a target the local cloud does not deliver to.
var errUnsupportedTarget = errors.New("not delivered by the local cloud")

// sendToTarget sends body (or the target's constant Input) to an SQS target in the cloud's
// region and account whose policy admits the rule ruleARN.
func (c *Cloud) sendToTarget(ctx context.Context, ruleARN string, t ebtypes.Target, body []byte) error {
	arn := aws.ToString(t.Arn)
	parts := strings.Split(arn, ":")
	if len(parts) != 6 || parts[0] != "arn" || parts[2] != "sqs" {
		return fmt.Errorf("target %s is not an SQS queue: %w", arn, errUnsupportedTarget)
	}
	if parts[3] != region || parts[4] != ownerID {
		return fmt.Errorf("queue %s is not in %s, account %s: %w", arn, region, ownerID, errUnsupportedTarget)
	}
	if t.InputPath != nil || t.InputTransformer != nil {
		return fmt.Errorf("target %s transforms its input: %w", arn, errUnsupportedTarget)
	}
	msg := string(body)
	if t.Input != nil {
		msg = aws.ToString(t.Input)
	}
	url, err := c.queues.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String(parts[5])})
	if err != nil {
		return fmt.Errorf("looking up queue %s: %w", parts[5], err)
	}
	attrs, err := c.queues.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{
		QueueUrl: url.QueueUrl, AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNamePolicy},
	})
	if err != nil {
		return fmt.Errorf("reading the policy of queue %s: %w", parts[5], err)
	}
	if err := admitsRule(attrs.Attributes[string(sqstypes.QueueAttributeNamePolicy)], arn, ruleARN); err != nil {
		return fmt.Errorf("queue %s: %w: not delivered, as on AWS", parts[5], err)
	}
	if _, err := c.queues.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: url.QueueUrl, MessageBody: aws.String(msg)}); err != nil {
		return fmt.Errorf("sending to queue %s: %w", parts[5], err)
	}
	return nil
}

// admitsRule checks that a queue's policy lets EventBridge send to queueARN on behalf of
// the rule ruleARN: an Allow of sqs:SendMessage whose principal admits
// events.amazonaws.com and whose conditions hold with aws:SourceArn = ruleARN (and
// aws:SourceAccount the cloud's), and no Deny that applies.
func admitsRule(policy, queueARN, ruleARN string) error {
	if policy == "" {
		return errors.New("no queue policy lets events.amazonaws.com send")
	}
	p, err := iampolicy.Parse([]byte(policy))
	if err != nil {
		return fmt.Errorf("queue policy: %w", err)
	}
	var forEvents iampolicy.Policy
	for _, st := range p.Statement {
		if admitsService(st.Principal, "events.amazonaws.com") {
			forEvents.Statement = append(forEvents.Statement, st)
		}
	}
	d := forEvents.Decide(iampolicy.Request{Action: "sqs:SendMessage", Resource: queueARN, Context: map[string][]string{
		"aws:SourceArn": {ruleARN}, "aws:SourceAccount": {ownerID},
	}})
	if !d.Allowed {
		return fmt.Errorf("the queue policy does not let events.amazonaws.com send for rule %s", ruleARN)
	}
	return nil
}

// admitsService reports whether a policy statement's Principal ("*", {"AWS": "*"} or
// {"Service": ...}) covers the AWS service principal service.
func admitsService(principal json.RawMessage, service string) bool {
	var one string
	if json.Unmarshal(principal, &one) == nil {
		return one == "*"
	}
	var p struct {
		AWS     iampolicy.Strings
		Service iampolicy.Strings
	}
	if json.Unmarshal(principal, &p) != nil {
		return false
	}
	return slices.Contains(p.AWS, "*") || slices.Contains(p.Service, service)
}

// matchPattern reports whether the event (a JSON object) matches the EventBridge event
// pattern. It understands the subset Sortie's rule and most rules use: every field of the
// pattern is either a list of exact string values, one of which the event's field must
// equal (or, for a list field such as resources, contain), or an object matched against
// the event's object field of that name (detail). Anything else — prefix, anything-but,
// numeric, exists, null or number values, empty lists — is an error: the rule is not
// matched, and the caller logs why.
func matchPattern(pattern, event []byte) (bool, error) {
	var p map[string]any
	if err := json.Unmarshal(pattern, &p); err != nil {
		return false, fmt.Errorf("pattern is not a JSON object: %w", err)
	}
	if err := checkPattern(p, ""); err != nil {
		return false, err
	}
	var e map[string]any
	if err := json.Unmarshal(event, &e); err != nil {
		return false, fmt.Errorf("event is not a JSON object: %w", err)
	}
	return matchObject(p, e), nil
}

// checkPattern rejects what matchObject does not understand.
func checkPattern(p map[string]any, path string) error {
	if len(p) == 0 {
		return fmt.Errorf("empty pattern object at %q", strings.TrimSuffix(path, "."))
	}
	for _, k := range slices.Sorted(maps.Keys(p)) {
		switch v := p[k].(type) {
		case map[string]any:
			if err := checkPattern(v, path+k+"."); err != nil {
				return err
			}
		case []any:
			if len(v) == 0 {
				return fmt.Errorf("%s%s: an empty list matches nothing", path, k)
			}
			for _, x := range v {
				if _, ok := x.(string); !ok {
					return fmt.Errorf("%s%s: only exact string values are supported, got %v", path, k, x)
				}
			}
		default:
			return fmt.Errorf("%s%s: want a list of values or an object, got %v", path, k, v)
		}
	}
	return nil
}

// matchObject matches a checked pattern object against an event object: every field must
// match.
func matchObject(p, e map[string]any) bool {
	for k, pv := range p {
		switch v := pv.(type) {
		case map[string]any:
			ev, ok := e[k].(map[string]any)
			if !ok || !matchObject(v, ev) {
				return false
			}
		case []any:
			if !matchValues(v, e[k]) {
				return false
			}
		}
	}
	return true
}

// matchValues reports whether the event's field equals one of the pattern's values, or,
// when the field is a list, whether one of its elements does.
func matchValues(values []any, field any) bool {
	switch f := field.(type) {
	case string:
		return slices.Contains(values, any(f))
	case []any:
		for _, x := range f {
			if s, ok := x.(string); ok && slices.Contains(values, any(s)) {
				return true
			}
		}
	}
	return false
}
