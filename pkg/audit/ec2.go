package audit

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/tags"
)

// securityGroups checks the templates' security groups, one call each (AWS fails a whole
// DescribeSecurityGroups on one unknown id). One that does not exist is NOT_APPLICABLE:
// nothing can launch with it.
func (a *auditor) securityGroups(ctx context.Context, t Target) error {
	if a.c.EC2 == nil {
		return nil
	}
	ids := slices.Clone(t.SecurityGroups)
	slices.Sort(ids)
	for _, id := range slices.Compact(ids) {
		out, err := a.c.EC2.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{GroupIds: []string{id}})
		if err != nil && !awsx.IsNotFound(err) {
			return fmt.Errorf("auditing security group %s: %w", id, err)
		}
		if err != nil || len(out.SecurityGroups) == 0 {
			a.add(TypeSecurityGroup, id, Finding{RuleRestrictedSSH, NotApplicable, "security group does not exist"})
			continue
		}
		a.add(TypeSecurityGroup, id, CheckSSH(out.SecurityGroups[0]))
	}
	return nil
}

// CheckSSH checks RuleRestrictedSSH on a security group: no ingress permission covering
// TCP port 22 (all protocols included) from 0.0.0.0/0 or ::/0.
func CheckSSH(g ec2types.SecurityGroup) Finding {
	var open []string
	for _, p := range g.IpPermissions {
		proto := aws.ToString(p.IpProtocol)
		from, to := aws.ToInt32(p.FromPort), aws.ToInt32(p.ToPort)
		var reaches bool
		switch proto {
		case "-1", "all":
			reaches = true
		case "tcp", "6":
			reaches = p.FromPort == nil || p.ToPort == nil || from == -1 || (from <= 22 && 22 <= to)
		}
		if !reaches {
			continue
		}
		var cidrs []string
		for _, r := range p.IpRanges {
			cidrs = append(cidrs, aws.ToString(r.CidrIp))
		}
		for _, r := range p.Ipv6Ranges {
			cidrs = append(cidrs, aws.ToString(r.CidrIpv6))
		}
		for _, c := range cidrs {
			if pr, err := netip.ParsePrefix(c); err == nil && pr.Bits() == 0 {
				what := "all traffic"
				if proto != "-1" && proto != "all" {
					what = fmt.Sprintf("tcp %d-%d", from, to)
				}
				open = append(open, fmt.Sprintf("port 22 open to %s (%s)", c, what))
			}
		}
	}
	if len(open) > 0 {
		return Finding{RuleRestrictedSSH, NonCompliant, strings.Join(open, "; ")}
	}
	return Finding{RuleRestrictedSSH, Compliant, "port 22 not open to 0.0.0.0/0 or ::/0"}
}

// liveStates are the instance states the audit checks: not terminated or on the way.
var liveStates = []string{"pending", "running", "stopping", "stopped"}

// instances checks every live instance of the stack (tagged sortie:stack = prefix).
func (a *auditor) instances(ctx context.Context, t Target) error {
	if a.c.EC2 == nil {
		return nil
	}
	pages := ec2.NewDescribeInstancesPaginator(a.c.EC2, &ec2.DescribeInstancesInput{Filters: []ec2types.Filter{
		{Name: aws.String("tag:" + tags.Stack), Values: []string{t.Topology.Prefix}},
		{Name: aws.String("instance-state-name"), Values: liveStates},
	}})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("auditing instances: %w", err)
		}
		for _, r := range page.Reservations {
			for _, in := range r.Instances {
				// Filters are the server's job; an instance of another stack is never reported.
				if !slices.ContainsFunc(in.Tags, func(tg ec2types.Tag) bool {
					return aws.ToString(tg.Key) == tags.Stack && aws.ToString(tg.Value) == t.Topology.Prefix
				}) {
					continue
				}
				a.add(TypeInstance, aws.ToString(in.InstanceId), CheckIMDS(in))
			}
		}
	}
	return nil
}

// CheckIMDS checks RuleIMDSv2 on an instance: its metadata options require tokens (or the
// metadata service is off).
func CheckIMDS(in ec2types.Instance) Finding {
	m := in.MetadataOptions
	switch {
	case m == nil:
		return Finding{RuleIMDSv2, NonCompliant, "no metadata options reported: IMDSv1 may answer"}
	case m.HttpEndpoint == ec2types.InstanceMetadataEndpointStateDisabled:
		return Finding{RuleIMDSv2, Compliant, "instance metadata service disabled"}
	case m.HttpTokens != ec2types.HttpTokensStateRequired:
		tokens := string(m.HttpTokens)
		if tokens == "" {
			tokens = "(unset)"
		}
		return Finding{RuleIMDSv2, NonCompliant, "HttpTokens " + tokens + ", want required: IMDSv1 answers"}
	}
	return Finding{RuleIMDSv2, Compliant, fmt.Sprintf("HttpTokens required, hop limit %d", aws.ToInt32(m.HttpPutResponseHopLimit))}
}
