package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	ebtypes "github.com/aws/aws-sdk-go-v2/service/eventbridge/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/ec2events"
)

// EventBridgeAPI lists the EventBridge calls Audit makes: it reads the EC2 events rule.
type EventBridgeAPI interface {
	DescribeRule(ctx context.Context, params *eventbridge.DescribeRuleInput, optFns ...func(*eventbridge.Options)) (*eventbridge.DescribeRuleOutput, error)
	ListTargetsByRule(ctx context.Context, params *eventbridge.ListTargetsByRuleInput, optFns ...func(*eventbridge.Options)) (*eventbridge.ListTargetsByRuleOutput, error)
}

// SQSAPI lists the SQS calls Audit makes: it reads the EC2 events queue and its DLQ.
type SQSAPI interface {
	GetQueueUrl(ctx context.Context, params *sqs.GetQueueUrlInput, optFns ...func(*sqs.Options)) (*sqs.GetQueueUrlOutput, error)
	GetQueueAttributes(ctx context.Context, params *sqs.GetQueueAttributesInput, optFns ...func(*sqs.Options)) (*sqs.GetQueueAttributesOutput, error)
}

var (
	_ EventBridgeAPI = (*eventbridge.Client)(nil)
	_ SQSAPI         = (*sqs.Client)(nil)
)

// The rules about the routing of EC2's notices to the monitor (see ec2Events).
const (
	// RuleEnabled: the EC2 events rule is enabled.
	RuleEnabled Rule = "rule-enabled"
	// RuleEC2EventsPattern: the rule's event pattern admits both of EC2's notices, source
	// aws.ec2 (see CheckEventPattern).
	RuleEC2EventsPattern Rule = "ec2-events-pattern"
	// RuleTargetsQueue: one of the rule's targets is the EC2 events queue, delivering the
	// event as it is (no Input, InputPath or InputTransformer).
	RuleTargetsQueue Rule = "targets-queue"
	// RuleDeadLetterQueue: the queue's redrive policy sends to its DLQ, which exists.
	RuleDeadLetterQueue Rule = "dead-letter-queue"
	// RuleRuleSendsOnly: the queue's policy lets only events.amazonaws.com send, and only
	// for the rule (see CheckRuleQueuePolicy).
	RuleRuleSendsOnly Rule = "rule-sends-only"
)

// notHeard is what a broken routing means, and what mends it.
const notHeard = "the monitor will not hear of spot interruptions or lost instances (run `sortie infra up`, or apply the Terraform)"

// ec2Events checks the routing of EC2's notices: the rule Topology.EC2EventsRuleName
// (exists, enabled, pattern, target) and the queue Topology.EC2EventsQueueName (exists,
// DLQ, policy). What cannot be judged because the other half is missing is NOT_APPLICABLE;
// the missing half is the finding.
func (a *auditor) ec2Events(ctx context.Context, t Target) error {
	if a.c.EventBridge == nil || a.c.SQS == nil {
		return nil
	}
	ruleName, queue := t.Topology.EC2EventsRuleName(), t.Topology.EC2EventsQueueName()

	rule, err := a.c.EventBridge.DescribeRule(ctx, &eventbridge.DescribeRuleInput{Name: aws.String(ruleName)})
	if awsx.IsNotFound(err) {
		rule = nil
	} else if err != nil {
		return fmt.Errorf("auditing rule %s: %w", ruleName, err)
	}
	var ruleARN string
	if rule != nil {
		ruleARN = aws.ToString(rule.Arn) // as EventBridge says it: kumo's differs from AWS's
	}

	queueARN, attrs, err := readQueue(ctx, a.c.SQS, queue, sqstypes.QueueAttributeNamePolicy, sqstypes.QueueAttributeNameRedrivePolicy)
	if err != nil {
		return fmt.Errorf("auditing queue %s: %w", queue, err)
	}

	if rule == nil {
		a.add(TypeRule, ruleName, Finding{RuleExists, NonCompliant, "rule does not exist: EC2's notices reach no queue; " + notHeard})
	} else {
		fs := []Finding{CheckRuleState(rule.State), CheckEventPattern(aws.ToString(rule.EventPattern))}
		if queueARN == "" {
			fs = append(fs, Finding{RuleTargetsQueue, NotApplicable, "queue " + queue + " does not exist"})
		} else {
			targets, err := listTargets(ctx, a.c.EventBridge, ruleName)
			if err != nil {
				return fmt.Errorf("auditing rule %s: %w", ruleName, err)
			}
			fs = append(fs, CheckTargets(targets, queueARN))
		}
		a.add(TypeRule, ruleName, fs...)
	}

	if queueARN == "" {
		a.add(TypeQueue, queue, Finding{RuleExists, NonCompliant, "queue does not exist: " + notHeard})
		return nil
	}
	dlq := bus.DLQName(queue)
	dlqARN, _, err := readQueue(ctx, a.c.SQS, dlq)
	if err != nil {
		return fmt.Errorf("auditing queue %s: %w", dlq, err)
	}
	policy := Finding{RuleRuleSendsOnly, NotApplicable, "rule " + ruleName + " does not exist"}
	if rule != nil {
		policy = CheckRuleQueuePolicy(attrs[string(sqstypes.QueueAttributeNamePolicy)], ruleARN)
	}
	a.add(TypeQueue, queue, CheckRedrive(attrs[string(sqstypes.QueueAttributeNameRedrivePolicy)], dlq, dlqARN), policy)
	return nil
}

// readQueue returns the queue's ARN and the attributes asked for, or "" when the queue
// does not exist.
func readQueue(ctx context.Context, api SQSAPI, name string, names ...sqstypes.QueueAttributeName) (string, map[string]string, error) {
	u, err := api.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String(name)})
	if awsx.IsNotFound(err) {
		return "", nil, nil
	}
	if err != nil {
		return "", nil, fmt.Errorf("looking up: %w", err)
	}
	out, err := api.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{
		QueueUrl: u.QueueUrl, AttributeNames: append([]sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameQueueArn}, names...),
	})
	if awsx.IsNotFound(err) { // deleted meanwhile
		return "", nil, nil
	}
	if err != nil {
		return "", nil, fmt.Errorf("reading attributes: %w", err)
	}
	arn := out.Attributes[string(sqstypes.QueueAttributeNameQueueArn)]
	if arn == "" {
		return "", nil, fmt.Errorf("reading attributes: no QueueArn")
	}
	return arn, out.Attributes, nil
}

// listTargets reads every target of the rule. kumo ignores NextToken (and caps a page at
// Limit): a token seen twice ends the listing rather than looping.
func listTargets(ctx context.Context, api EventBridgeAPI, rule string) ([]ebtypes.Target, error) {
	var out []ebtypes.Target
	seen := map[string]bool{}
	in := &eventbridge.ListTargetsByRuleInput{Rule: aws.String(rule)}
	for {
		page, err := api.ListTargetsByRule(ctx, in)
		if err != nil {
			return nil, fmt.Errorf("listing targets: %w", err)
		}
		out = append(out, page.Targets...)
		next := aws.ToString(page.NextToken)
		if next == "" || seen[next] {
			return out, nil
		}
		seen[next] = true
		in.NextToken = page.NextToken
	}
}

// CheckRuleState checks RuleEnabled.
func CheckRuleState(s ebtypes.RuleState) Finding {
	switch s {
	case ebtypes.RuleStateEnabled, ebtypes.RuleStateEnabledWithAllCloudtrailManagementEvents:
		return Finding{RuleEnabled, Compliant, "state " + string(s)}
	}
	return Finding{RuleEnabled, NonCompliant, fmt.Sprintf("state %s, want ENABLED: %s", orNone(string(s)), notHeard)}
}

// CheckEventPattern checks RuleEC2EventsPattern: the pattern admits events of source
// aws.ec2 with either detail type of ec2events.Pattern. It reads only the source and
// detail-type lists: an absent field matches anything, a list admits a value it names
// exactly; a content filter ({"prefix": ...}) in place of the value, or a "$or", cannot
// be judged and is NON_COMPLIANT. Filters on other fields (detail, region, ...) are left
// alone and named in the reason.
func CheckEventPattern(doc string) Finding {
	bad := func(format string, args ...any) Finding {
		return Finding{RuleEC2EventsPattern, NonCompliant, fmt.Sprintf(format, args...)}
	}
	var p map[string]json.RawMessage
	if err := json.Unmarshal([]byte(doc), &p); err != nil || p == nil {
		return bad("event pattern %q is not a JSON object", doc)
	}
	var problems, others []string
	for _, field := range sortedKeys(p) {
		if strings.HasPrefix(field, "$") {
			problems = append(problems, fmt.Sprintf("cannot judge %s", field))
		} else if field != "source" && field != "detail-type" {
			others = append(others, field)
		}
	}
	for _, want := range []struct {
		field  string
		values []string
	}{
		{"source", []string{ec2events.Source}},
		{"detail-type", []string{ec2events.DetailTypeSpotWarning, ec2events.DetailTypeStateChange}},
	} {
		raw, ok := p[want.field]
		if !ok {
			continue // matches every value
		}
		admitted, filters, err := patternValues(raw)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", want.field, err))
			continue
		}
		for _, v := range want.values {
			switch {
			case slices.Contains(admitted, v):
			case len(filters) > 0:
				problems = append(problems, fmt.Sprintf("%s %q: cannot judge whether %s admits it", want.field, v, strings.Join(filters, ", ")))
			default:
				problems = append(problems, fmt.Sprintf("%s does not admit %q", want.field, v))
			}
		}
	}
	if len(problems) > 0 {
		return bad("%s: %s", strings.Join(problems, "; "), notHeard)
	}
	reason := fmt.Sprintf("admits source %s with detail types %q and %q", ec2events.Source, ec2events.DetailTypeSpotWarning, ec2events.DetailTypeStateChange)
	if len(others) > 0 {
		reason += " (filters on " + strings.Join(others, ", ") + " not judged)"
	}
	return Finding{RuleEC2EventsPattern, Compliant, reason}
}

// patternValues reads a pattern field's list: the exact strings it admits, and its content
// filters (objects) as text.
func patternValues(raw json.RawMessage) (admitted, filters []string, err error) {
	var list []json.RawMessage
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, nil, fmt.Errorf("want a list, got %s", bytes.TrimSpace(raw))
	}
	for _, e := range list {
		var s string
		if json.Unmarshal(e, &s) == nil {
			admitted = append(admitted, s)
			continue
		}
		filters = append(filters, string(bytes.TrimSpace(e)))
	}
	return admitted, filters, nil
}

// CheckTargets checks RuleTargetsQueue: a target is the queue queueARN, with the event as
// its body (the monitor reads the EventBridge envelope).
func CheckTargets(targets []ebtypes.Target, queueARN string) Finding {
	var others, rewritten []string
	for _, t := range targets {
		id, arn := aws.ToString(t.Id), aws.ToString(t.Arn)
		switch {
		case arn != queueARN:
			others = append(others, id+" → "+orNone(arn))
		case t.Input != nil || t.InputPath != nil || t.InputTransformer != nil:
			rewritten = append(rewritten, id)
		default:
			return Finding{RuleTargetsQueue, Compliant, "target " + id + " → " + queueARN}
		}
	}
	var reason string
	switch {
	case len(rewritten) > 0:
		reason = fmt.Sprintf("target %s to %s rewrites the event (Input, InputPath or InputTransformer): the monitor reads the EventBridge envelope", strings.Join(rewritten, ", "), queueARN)
	case len(others) > 0:
		reason = fmt.Sprintf("no target is %s (targets: %s)", queueARN, strings.Join(others, ", "))
	default:
		reason = "no targets"
	}
	return Finding{RuleTargetsQueue, NonCompliant, reason + ": " + notHeard}
}

// CheckRedrive checks RuleDeadLetterQueue on the queue's RedrivePolicy ("" when it has
// none) against its DLQ dlq, whose ARN is dlqARN ("" when it does not exist).
func CheckRedrive(doc, dlq, dlqARN string) Finding {
	bad := func(format string, args ...any) Finding {
		return Finding{RuleDeadLetterQueue, NonCompliant, fmt.Sprintf(format, args...)}
	}
	if dlqARN == "" {
		return bad("DLQ %s does not exist (run `sortie infra up`)", dlq)
	}
	if strings.TrimSpace(doc) == "" {
		return bad("no redrive policy: a notice the monitor cannot handle is received forever")
	}
	var p struct {
		DeadLetterTargetArn string          `json:"deadLetterTargetArn"`
		MaxReceiveCount     json.RawMessage `json:"maxReceiveCount"`
	}
	if err := json.Unmarshal([]byte(doc), &p); err != nil {
		return bad("redrive policy %q: %v", doc, err)
	}
	if p.DeadLetterTargetArn != dlqARN {
		return bad("redrive policy sends to %s, want %s", orNone(p.DeadLetterTargetArn), dlqARN)
	}
	return Finding{RuleDeadLetterQueue, Compliant, fmt.Sprintf("dead letters go to %s after %s receives", dlq, strings.Trim(string(p.MaxReceiveCount), `"`))}
}

// eventsPrincipal is the one principal that may send to the EC2 events queue.
const eventsPrincipal = "events.amazonaws.com"

// sendMessage is the action the rule is about, in lower case as covers compares it.
const sendMessage = "sqs:sendmessage"

// CheckRuleQueuePolicy checks RuleRuleSendsOnly on the queue's policy document ("" when it
// has none) against the rule's ARN, as DescribeRule returns it. Every Allow statement that
// may grant sqs:SendMessage must name only the principal {"Service":
// "events.amazonaws.com"} and carry a condition ArnEquals (or StringEquals, or ArnLike /
// StringLike without wildcards) aws:SourceArn naming only ruleARN; at least one such
// statement must exist, or EventBridge cannot deliver. Deny statements only narrow and are
// not read.
func CheckRuleQueuePolicy(doc, ruleARN string) Finding {
	bad := func(format string, args ...any) Finding {
		return Finding{RuleRuleSendsOnly, NonCompliant, fmt.Sprintf(format, args...)}
	}
	if strings.TrimSpace(doc) == "" {
		return bad("no queue policy: EventBridge may not send; %s", notHeard)
	}
	p, err := ParsePolicy(doc)
	if err != nil {
		return bad("%v", err)
	}
	var problems, by []string
	for i, st := range p.Statement {
		if !strings.EqualFold(st.Effect, "Allow") || !mayApply(st, sendMessage) {
			continue
		}
		name := statementName(st, i)
		bads := allowedSenders(name, st)
		if !limitsToRule(st, ruleARN) {
			bads = append(bads, fmt.Sprintf("%s: no condition aws:SourceArn = %s (any rule, of any account, could send)", name, ruleARN))
		}
		if len(bads) == 0 {
			by = append(by, name)
		}
		problems = append(problems, bads...)
	}
	if len(problems) > 0 {
		return bad("%s", strings.Join(problems, "; "))
	}
	if len(by) == 0 {
		return bad("no statement lets %s send for %s: %s", eventsPrincipal, ruleARN, notHeard)
	}
	return Finding{RuleRuleSendsOnly, Compliant, fmt.Sprintf("only %s may send, for %s (%s)", eventsPrincipal, ruleARN, strings.Join(by, ", "))}
}

// allowedSenders lists why an Allow statement about sqs:SendMessage admits a principal
// other than events.amazonaws.com.
func allowedSenders(name string, st Statement) []string {
	switch {
	case st.NotPrincipal != nil && string(st.NotPrincipal) != "null":
		return []string{name + ": NotPrincipal lets every other principal send"}
	case st.Principal.everyone():
		return []string{name + ": lets any principal (*) send"}
	case st.Principal == nil:
		return []string{name + ": no principal"}
	}
	var out []string
	for _, kind := range sortedKeys(st.Principal.Kinds) {
		for _, v := range st.Principal.Kinds[kind] {
			if kind != "Service" || v != eventsPrincipal {
				out = append(out, fmt.Sprintf("%s: lets %s %s send", name, kind, v))
			}
		}
	}
	return out
}

// limitsToRule reports whether the statement holds only for requests whose aws:SourceArn
// is ruleARN: a condition of an equality operator (not IfExists, which holds when the key
// is absent) on aws:SourceArn naming only ruleARN.
func limitsToRule(st Statement, ruleARN string) bool {
	for op, keys := range st.Condition {
		exact := anyFold(op, "ArnEquals", "StringEquals")
		like := anyFold(op, "ArnLike", "StringLike")
		if !exact && !like {
			continue
		}
		for key, values := range keys {
			if !strings.EqualFold(key, "aws:SourceArn") || len(values) == 0 {
				continue
			}
			if !slices.ContainsFunc(values, func(v string) bool { return v != ruleARN || (like && strings.ContainsAny(v, "*?")) }) {
				return true
			}
		}
	}
	return false
}
