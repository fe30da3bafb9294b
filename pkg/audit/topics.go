package audit

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sns"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/infra"
)

// topics checks every topic of the stack: it exists, and only its producers may publish.
func (a *auditor) topics(ctx context.Context, t Target) error {
	if a.c.SNS == nil {
		return nil
	}
	arns := map[string]string{}
	pages := sns.NewListTopicsPaginator(a.c.SNS, &sns.ListTopicsInput{})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("auditing topics: listing: %w", err)
		}
		for _, tp := range page.Topics {
			arn := aws.ToString(tp.TopicArn)
			arns[arn[strings.LastIndex(arn, ":")+1:]] = arn
		}
	}
	for _, et := range bus.EventTypes {
		name := t.Topology.TopicName(et)
		arn, ok := arns[name]
		if !ok {
			a.add(TypeTopic, name, Finding{RuleExists, NonCompliant, "topic does not exist"})
			continue
		}
		out, err := a.c.SNS.GetTopicAttributes(ctx, &sns.GetTopicAttributesInput{TopicArn: aws.String(arn)})
		if awsx.IsNotFound(err) {
			a.add(TypeTopic, name, Finding{RuleExists, NonCompliant, "topic does not exist"})
			continue
		}
		if err != nil {
			return fmt.Errorf("auditing topic %s: %w", name, err)
		}
		parts := strings.Split(arn, ":")
		if len(parts) != 6 {
			return fmt.Errorf("auditing topic %s: ARN %q", name, arn)
		}
		producers, err := infra.ProducerARNs(t.Topology, et, parts[4])
		if err != nil {
			return fmt.Errorf("auditing topic %s: %w", name, err)
		}
		a.add(TypeTopic, name, CheckTopicPolicy(out.Attributes["Policy"], arn, producers))
	}
	return nil
}

// defaultPolicyReason is the finding on a topic that kept SNS's default policy (or has none).
const defaultPolicyReason = "default policy: any principal of the account may publish"

// publish is the action the rule is about, in lower case as covers compares it.
const publish = "sns:publish"

// CheckTopicPolicy checks RuleProducersOnly on the policy document of the topic topicARN
// ("" when it has none) against the ARNs of the roles that may publish. It is compliant
// when no statement allows sns:Publish to anyone but those roles (no "*" principal, no
// other principal, no NotPrincipal) and a statement on the topic denies sns:Publish to
// every principal whose aws:PrincipalArn is not one of them (ArnNotEquals / ArnNotLike /
// StringNotEquals / StringNotLike): without that Deny, any identity policy of the account
// granting sns:Publish would let its holder publish.
func CheckTopicPolicy(doc, topicARN string, producers []string) Finding {
	bad := func(format string, args ...any) Finding {
		return Finding{RuleProducersOnly, NonCompliant, fmt.Sprintf(format, args...)}
	}
	if strings.TrimSpace(doc) == "" || strings.Contains(doc, "__default_policy_ID") {
		return bad(defaultPolicyReason)
	}
	p, err := ParsePolicy(doc)
	if err != nil {
		return bad("%v", err)
	}
	var problems, denyBy []string
	for i, st := range p.Statement {
		name := statementName(st, i)
		if !mayApply(st, publish) {
			continue
		}
		switch {
		case strings.EqualFold(st.Effect, "Allow"):
			problems = append(problems, allowedPublishers(name, st, producers)...)
		case strings.EqualFold(st.Effect, "Deny") && deniesOthers(st, topicARN, producers):
			denyBy = append(denyBy, name)
		}
	}
	if len(denyBy) == 0 {
		problems = append(problems, "no statement denies sns:Publish to principals other than "+strings.Join(producers, ", ")+
			" (an identity policy of the account could grant it)")
	}
	if len(problems) > 0 {
		return bad("%s", strings.Join(problems, "; "))
	}
	return Finding{RuleProducersOnly, Compliant, "only " + strings.Join(producers, ", ") + " may publish (others denied by " + strings.Join(denyBy, ", ") + ")"}
}

// statementName is the statement's Sid, or its position.
func statementName(st Statement, i int) string {
	if st.Sid != "" {
		return st.Sid
	}
	return fmt.Sprintf("statement %d", i+1)
}

// mayApply reports whether st may be about action (lower case): its Action covers it, or
// its NotAction does not exclude it.
func mayApply(st Statement, action string) bool {
	if st.NotAction != nil {
		return !slices.ContainsFunc(st.NotAction, func(a string) bool { return covers(strings.ToLower(a), action) })
	}
	return slices.ContainsFunc(st.Action, func(a string) bool { return covers(strings.ToLower(a), action) })
}

// allowedPublishers lists why an Allow statement about sns:Publish admits more than the
// producers.
func allowedPublishers(name string, st Statement, producers []string) []string {
	switch {
	case st.NotPrincipal != nil && string(st.NotPrincipal) != "null":
		return []string{name + ": NotPrincipal lets every other principal publish"}
	case st.Principal.everyone():
		return []string{name + ": lets any principal (*) publish"}
	case st.Principal == nil:
		return []string{name + ": no principal"}
	}
	var out []string
	for _, kind := range sortedKeys(st.Principal.Kinds) {
		for _, v := range st.Principal.Kinds[kind] {
			if kind != "AWS" || !slices.Contains(producers, v) {
				out = append(out, fmt.Sprintf("%s: lets %s %s publish", name, kind, v))
			}
		}
	}
	return out
}

// deniesOthers reports whether a Deny statement refuses sns:Publish on the topic to every
// principal but the producers: principal *, Action covering sns:Publish, Resource covering
// the topic, and a single condition on aws:PrincipalArn exempting only producers.
func deniesOthers(st Statement, topicARN string, producers []string) bool {
	if !st.Principal.everyone() || (st.NotPrincipal != nil && string(st.NotPrincipal) != "null") || st.NotAction != nil || st.NotResource != nil {
		return false
	}
	if !slices.ContainsFunc(st.Resource, func(r string) bool { return covers(normalizePartition(r), normalizePartition(topicARN)) }) {
		return false
	}
	if len(st.Condition) != 1 {
		return false
	}
	for op, keys := range st.Condition {
		if !anyFold(op, "ArnNotEquals", "ArnNotLike", "StringNotEquals", "StringNotLike") || len(keys) != 1 {
			return false
		}
		for key, values := range keys {
			if !strings.EqualFold(key, "aws:PrincipalArn") || len(values) == 0 {
				return false
			}
			for _, v := range values {
				if !slices.Contains(producers, v) {
					return false
				}
			}
		}
	}
	return true
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
