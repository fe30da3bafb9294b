package audit

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
)

// StackRoles are the IAM roles of a stack the audit reads: the five services' task roles,
// the worker instance profile's role, the upstream role and the ECS execution role.
func StackRoles(topo bus.Topology) []string {
	var out []string
	for _, svc := range []string{bus.Planner, bus.Provisioner, bus.Bootstrapper, bus.Monitor, bus.Reaper} {
		out = append(out, topo.RoleName(svc))
	}
	return append(out, topo.WorkerRoleName(), topo.UpstreamRoleName(), topo.ExecutionRoleName())
}

// roles checks the policies of every role of the stack. A role that does not exist is
// NOT_APPLICABLE (`infra up` creates no roles; the Terraform does).
func (a *auditor) roles(ctx context.Context, t Target) error {
	if a.c.IAM == nil {
		return nil
	}
	for _, role := range StackRoles(t.Topology) {
		docs, err := rolePolicies(ctx, a.c.IAM, role)
		if awsx.ErrorCode(err) == "NoSuchEntity" {
			a.add(TypeRole, role, Finding{RuleLeastPrivilege, NotApplicable, "role does not exist"})
			continue
		}
		if err != nil {
			return fmt.Errorf("auditing role %s: %w", role, err)
		}
		a.add(TypeRole, role, CheckRolePolicies(docs))
	}
	return nil
}

// PolicyDoc is one policy of a role: its name (inline) or ARN (attached), and its document.
type PolicyDoc struct {
	Name     string
	Document string
}

// rolePolicies reads every inline and attached policy of a role.
func rolePolicies(ctx context.Context, api IAMAPI, role string) ([]PolicyDoc, error) {
	var out []PolicyDoc
	inline := iam.NewListRolePoliciesPaginator(api, &iam.ListRolePoliciesInput{RoleName: aws.String(role)})
	for inline.HasMorePages() {
		page, err := inline.NextPage(ctx)
		if err != nil {
			return nil, err
		}
		for _, name := range page.PolicyNames {
			p, err := api.GetRolePolicy(ctx, &iam.GetRolePolicyInput{RoleName: aws.String(role), PolicyName: aws.String(name)})
			if err != nil {
				return nil, fmt.Errorf("reading inline policy %s: %w", name, err)
			}
			doc, err := decodeDocument(aws.ToString(p.PolicyDocument))
			if err != nil {
				return nil, fmt.Errorf("inline policy %s: %w", name, err)
			}
			out = append(out, PolicyDoc{Name: name, Document: doc})
		}
	}
	attached := iam.NewListAttachedRolePoliciesPaginator(api, &iam.ListAttachedRolePoliciesInput{RoleName: aws.String(role)})
	for attached.HasMorePages() {
		page, err := attached.NextPage(ctx)
		if err != nil {
			return nil, err
		}
		for _, ap := range page.AttachedPolicies {
			arn := aws.ToString(ap.PolicyArn)
			pol, err := api.GetPolicy(ctx, &iam.GetPolicyInput{PolicyArn: aws.String(arn)})
			if err != nil {
				return nil, fmt.Errorf("reading policy %s: %w", arn, err)
			}
			v, err := api.GetPolicyVersion(ctx, &iam.GetPolicyVersionInput{PolicyArn: aws.String(arn), VersionId: pol.Policy.DefaultVersionId})
			if err != nil {
				return nil, fmt.Errorf("reading policy %s: %w", arn, err)
			}
			doc, err := decodeDocument(aws.ToString(v.PolicyVersion.Document))
			if err != nil {
				return nil, fmt.Errorf("policy %s: %w", arn, err)
			}
			out = append(out, PolicyDoc{Name: arn, Document: doc})
		}
	}
	return out, nil
}

// decodeDocument undoes the URL encoding IAM applies to policy documents (RFC 3986; kumo
// returns them plain).
func decodeDocument(doc string) (string, error) {
	if strings.HasPrefix(strings.TrimSpace(doc), "{") {
		return doc, nil
	}
	d, err := url.QueryUnescape(doc)
	if err != nil {
		return "", fmt.Errorf("decoding policy document: %w", err)
	}
	return d, nil
}

// readOnlyVerbs start the names of actions that do not change anything.
var readOnlyVerbs = []string{"get", "list", "describe", "batchget", "query", "scan", "head", "lookup", "search", "select", "view"}

// scopingKeys are condition keys that narrow a statement on Resource "*" to the stack's
// resources: resource and request tags, and CloudWatch's namespace (PutMetricData takes
// no resource but "*").
func scoping(key string) bool {
	k := strings.ToLower(key)
	return strings.Contains(k, ":resourcetag/") || strings.Contains(k, ":requesttag/") || k == "cloudwatch:namespace"
}

// CheckRolePolicies checks RuleLeastPrivilege on a role's policies: no Allow statement
// may grant Action "*", every action of a service ("ec2:*"), NotAction, or a mutating
// action (one whose name does not start with Get, List, Describe, ...) on Resource "*" (or
// NotResource) without a condition on a resource or request tag.
func CheckRolePolicies(docs []PolicyDoc) Finding {
	var problems []string
	statements := 0
	for _, d := range docs {
		p, err := ParsePolicy(d.Document)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", d.Name, err))
			continue
		}
		for i, st := range p.Statement {
			if !strings.EqualFold(st.Effect, "Allow") {
				continue
			}
			statements++
			name := d.Name + "/" + statementName(st, i)
			if st.NotAction != nil {
				problems = append(problems, name+": NotAction allows every other action")
				continue
			}
			anyResource := st.NotResource != nil || slices.Contains(st.Resource, "*")
			scoped := false
			for _, keys := range st.Condition {
				for k := range keys {
					scoped = scoped || scoping(k)
				}
			}
			for _, action := range st.Action {
				svc, verb, _ := strings.Cut(strings.ToLower(action), ":")
				switch {
				case action == "*":
					problems = append(problems, name+": Action *")
				case verb == "*":
					problems = append(problems, fmt.Sprintf("%s: every %s action (%s)", name, svc, action))
				case anyResource && !scoped && !readOnly(verb):
					problems = append(problems, fmt.Sprintf("%s: %s on Resource * without a tag condition", name, action))
				}
			}
		}
	}
	if len(problems) > 0 {
		return Finding{RuleLeastPrivilege, NonCompliant, strings.Join(problems, "; ")}
	}
	policies := fmt.Sprintf("%d policies", len(docs))
	if len(docs) == 1 {
		policies = "1 policy"
	}
	return Finding{RuleLeastPrivilege, Compliant, fmt.Sprintf("%s, %s: no wildcard action, no untagged mutating action on Resource *",
		policies, plural(statements, "Allow statement"))}
}

// readOnly reports whether an action name (lower case, without the service) only reads.
func readOnly(verb string) bool {
	return slices.ContainsFunc(readOnlyVerbs, func(v string) bool { return strings.HasPrefix(verb, v) })
}
