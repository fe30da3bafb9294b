package audit

import (
	"context"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	iamtypes "github.com/aws/aws-sdk-go-v2/service/iam/types"
	"github.com/aws/smithy-go"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/infra"
	"github.com/sortie-fleet/sortie/pkg/tags"
)

const account = "123456789012"

func TestCheckTopicPolicy(t *testing.T) {
	topo := bus.Topology{Prefix: "sortie"}
	producers, err := infra.ProducerARNs(topo, bus.FleetPlanned, account)
	if err != nil {
		t.Fatal(err)
	}
	generated, err := infra.TopicPolicy(topo, bus.FleetPlanned, account)
	if err != nil {
		t.Fatal(err)
	}
	planner := producers[0]
	deny := `{"Sid":"DenyOthers","Effect":"Deny","Principal":"*","Action":"sns:Publish","Resource":"*","Condition":{"ArnNotEquals":{"aws:PrincipalArn":"` + planner + `"}}}`
	allow := func(principal string) string {
		return `{"Sid":"Allow","Effect":"Allow","Principal":` + principal + `,"Action":"sns:Publish","Resource":"*"}`
	}
	doc := func(sts ...string) string {
		return `{"Version":"2012-10-17","Statement":[` + strings.Join(sts, ",") + `]}`
	}
	tests := []struct {
		name   string
		doc    string
		want   Status
		reason string
	}{
		{"infra.TopicPolicy", string(generated), Compliant, "only " + planner + " may publish (others denied by DenyPublishByOthers)"},
		{"no policy", "", NonCompliant, defaultPolicyReason},
		{"SNS's default policy", `{"Version":"2008-10-17","Id":"__default_policy_ID","Statement":[{"Sid":"__default_statement_ID","Effect":"Allow","Principal":{"AWS":"*"},"Action":["SNS:Publish","SNS:Subscribe"],"Resource":"*","Condition":{"StringEquals":{"AWS:SourceOwner":"` + account + `"}}}]}`,
			NonCompliant, defaultPolicyReason},
		{"principal *", doc(allow(`"*"`), deny), NonCompliant, `Allow: lets any principal (*) publish`},
		{"AWS *", doc(allow(`{"AWS":"*"}`), deny), NonCompliant, `Allow: lets any principal (*) publish`},
		{"sns:* to everyone", doc(`{"Sid":"All","Effect":"Allow","Principal":"*","Action":"sns:*","Resource":"*"}`, deny), NonCompliant, `All: lets any principal (*) publish`},
		{"another role", doc(allow(`{"AWS":["`+planner+`","arn:aws:iam::`+account+`:role/intruder"]}`), deny), NonCompliant,
			`Allow: lets AWS arn:aws:iam::` + account + `:role/intruder publish`},
		{"a service", doc(allow(`{"Service":"events.amazonaws.com"}`), deny), NonCompliant, `Allow: lets Service events.amazonaws.com publish`},
		{"NotPrincipal", doc(`{"Sid":"NP","Effect":"Allow","NotPrincipal":{"AWS":"x"},"Action":"sns:Publish","Resource":"*"}`, deny), NonCompliant, "NP: NotPrincipal"},
		{"no deny", doc(allow(`{"AWS":"` + planner + `"}`)), NonCompliant, "no statement denies sns:Publish to principals other than " + planner},
		{"deny exempting another role", doc(allow(`{"AWS":"`+planner+`"}`), strings.Replace(deny, `"`+planner+`"`, `["`+planner+`","arn:aws:iam::`+account+`:role/intruder"]`, 1)),
			NonCompliant, "no statement denies"},
		{"deny on another topic", doc(allow(`{"AWS":"`+planner+`"}`), strings.Replace(deny, `"Resource":"*"`, `"Resource":"arn:aws:sns:eu-west-1:`+account+`:sortie-fleet-launched"`, 1)),
			NonCompliant, "no statement denies"},
		{"subscribe only to everyone", doc(`{"Sid":"Sub","Effect":"Allow","Principal":"*","Action":"sns:Subscribe","Resource":"*"}`, deny), Compliant, "others denied by DenyOthers"},
		{"unparsable", "{", NonCompliant, "parsing policy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := CheckTopicPolicy(tt.doc, "arn:aws:sns:eu-west-1:"+account+":sortie-fleet-planned", producers)
			if f.Rule != RuleProducersOnly || f.Status != tt.want || !strings.Contains(f.Reason, tt.reason) {
				t.Errorf("finding %+v, want %s containing %q", f, tt.want, tt.reason)
			}
		})
	}
}

func TestCheckRolePolicies(t *testing.T) {
	doc := func(sts ...string) []PolicyDoc {
		return []PolicyDoc{{Name: "p", Document: `{"Version":"2012-10-17","Statement":[` + strings.Join(sts, ",") + `]}`}}
	}
	tests := []struct {
		name   string
		docs   []PolicyDoc
		want   Status
		reason string
	}{
		{"least privilege", doc(
			`{"Sid":"Read","Effect":"Allow","Action":["ec2:DescribeInstances","s3:GetObject"],"Resource":"*"}`,
			`{"Sid":"Terminate","Effect":"Allow","Action":"ec2:TerminateInstances","Resource":"*","Condition":{"StringEquals":{"aws:ResourceTag/sortie:stack":"sortie"}}}`,
			`{"Sid":"Launch","Effect":"Allow","Action":["ec2:RunInstances","ec2:CreateTags"],"Resource":"*","Condition":{"StringEquals":{"aws:RequestTag/sortie:stack":"sortie"}}}`,
			`{"Sid":"Metrics","Effect":"Allow","Action":"cloudwatch:PutMetricData","Resource":"*","Condition":{"StringEquals":{"cloudwatch:namespace":"Sortie"}}}`,
			`{"Sid":"Queue","Effect":"Allow","Action":"sqs:SendMessage","Resource":"arn:aws:sqs:us-east-1:1:sortie-x"}`,
			`{"Sid":"NoAll","Effect":"Deny","Action":"*","Resource":"*"}`),
			Compliant, "1 policy, 5 Allow statements"},
		{"no policies", nil, Compliant, "0 policies"},
		{"Action *", doc(`{"Sid":"Admin","Effect":"Allow","Action":"*","Resource":"*"}`), NonCompliant, "p/Admin: Action *"},
		{"service:*", doc(`{"Sid":"EC2","Effect":"Allow","Action":"ec2:*","Resource":"arn:aws:ec2:*:*:instance/*"}`), NonCompliant, "p/EC2: every ec2 action (ec2:*)"},
		{"mutating on *", doc(`{"Effect":"Allow","Action":["ec2:DescribeInstances","ec2:TerminateInstances"],"Resource":"*"}`), NonCompliant,
			"p/statement 1: ec2:TerminateInstances on Resource * without a tag condition"},
		{"wildcard verb on *", doc(`{"Effect":"Allow","Action":"s3:Put*","Resource":"*"}`), NonCompliant, "s3:Put* on Resource *"},
		{"condition that is not a tag", doc(`{"Effect":"Allow","Action":"sns:Publish","Resource":"*","Condition":{"Bool":{"aws:SecureTransport":"true"}}}`), NonCompliant, "sns:Publish on Resource *"},
		{"NotAction", doc(`{"Sid":"NA","Effect":"Allow","NotAction":"iam:*","Resource":"*"}`), NonCompliant, "p/NA: NotAction"},
		{"NotResource", doc(`{"Sid":"NR","Effect":"Allow","Action":"s3:DeleteObject","NotResource":"arn:aws:s3:::x/*"}`), NonCompliant, "s3:DeleteObject on Resource *"},
		{"unparsable", []PolicyDoc{{Name: "bad", Document: "{"}}, NonCompliant, "bad: parsing policy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := CheckRolePolicies(tt.docs)
			if f.Rule != RuleLeastPrivilege || f.Status != tt.want || !strings.Contains(f.Reason, tt.reason) {
				t.Errorf("finding %+v, want %s containing %q", f, tt.want, tt.reason)
			}
		})
	}
}

func TestCheckSSH(t *testing.T) {
	perm := func(proto string, from, to int32, v4, v6 string) ec2types.IpPermission {
		p := ec2types.IpPermission{IpProtocol: aws.String(proto)}
		if proto != "-1" {
			p.FromPort, p.ToPort = aws.Int32(from), aws.Int32(to)
		}
		if v4 != "" {
			p.IpRanges = []ec2types.IpRange{{CidrIp: aws.String(v4)}}
		}
		if v6 != "" {
			p.Ipv6Ranges = []ec2types.Ipv6Range{{CidrIpv6: aws.String(v6)}}
		}
		return p
	}
	tests := []struct {
		name   string
		perms  []ec2types.IpPermission
		want   Status
		reason string
	}{
		{"no rules", nil, Compliant, "port 22 not open"},
		{"ssh from the VPC", []ec2types.IpPermission{perm("tcp", 22, 22, "10.0.0.0/16", "")}, Compliant, "port 22 not open"},
		{"https from anywhere", []ec2types.IpPermission{perm("tcp", 443, 443, "0.0.0.0/0", "::/0")}, Compliant, "port 22 not open"},
		{"ssh from anywhere", []ec2types.IpPermission{perm("tcp", 22, 22, "0.0.0.0/0", "")}, NonCompliant, "port 22 open to 0.0.0.0/0 (tcp 22-22)"},
		{"ssh from anywhere, IPv6", []ec2types.IpPermission{perm("tcp", 22, 22, "", "::/0")}, NonCompliant, "port 22 open to ::/0 (tcp 22-22)"},
		{"a range of ports", []ec2types.IpPermission{perm("6", 0, 1024, "0.0.0.0/0", "")}, NonCompliant, "port 22 open to 0.0.0.0/0 (tcp 0-1024)"},
		{"all traffic", []ec2types.IpPermission{perm("-1", 0, 0, "0.0.0.0/0", "")}, NonCompliant, "port 22 open to 0.0.0.0/0 (all traffic)"},
		{"udp 22", []ec2types.IpPermission{perm("udp", 22, 22, "0.0.0.0/0", "")}, Compliant, "port 22 not open"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := CheckSSH(ec2types.SecurityGroup{GroupId: aws.String("sg-1"), IpPermissions: tt.perms})
			if f.Rule != RuleRestrictedSSH || f.Status != tt.want || !strings.Contains(f.Reason, tt.reason) {
				t.Errorf("finding %+v, want %s containing %q", f, tt.want, tt.reason)
			}
		})
	}
}

func TestCheckIMDS(t *testing.T) {
	tests := []struct {
		name   string
		opts   *ec2types.InstanceMetadataOptionsResponse
		want   Status
		reason string
	}{
		{"required", &ec2types.InstanceMetadataOptionsResponse{HttpTokens: ec2types.HttpTokensStateRequired, HttpPutResponseHopLimit: aws.Int32(1)}, Compliant, "HttpTokens required, hop limit 1"},
		{"optional", &ec2types.InstanceMetadataOptionsResponse{HttpTokens: ec2types.HttpTokensStateOptional}, NonCompliant, "HttpTokens optional, want required"},
		{"unset", &ec2types.InstanceMetadataOptionsResponse{}, NonCompliant, "HttpTokens (unset)"},
		{"not reported", nil, NonCompliant, "no metadata options reported"},
		{"metadata off", &ec2types.InstanceMetadataOptionsResponse{HttpEndpoint: ec2types.InstanceMetadataEndpointStateDisabled}, Compliant, "disabled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := CheckIMDS(ec2types.Instance{InstanceId: aws.String("i-1"), MetadataOptions: tt.opts})
			if f.Rule != RuleIMDSv2 || f.Status != tt.want || !strings.Contains(f.Reason, tt.reason) {
				t.Errorf("finding %+v, want %s containing %q", f, tt.want, tt.reason)
			}
		})
	}
}

// fakeEC2 serves security groups by id (an unknown id fails as on AWS) and instances,
// applying the tag filter as EC2 does.
type fakeEC2 struct {
	groups    map[string]ec2types.SecurityGroup
	instances []ec2types.Instance
	filters   []ec2types.Filter
}

func (f *fakeEC2) DescribeSecurityGroups(_ context.Context, in *ec2.DescribeSecurityGroupsInput, _ ...func(*ec2.Options)) (*ec2.DescribeSecurityGroupsOutput, error) {
	var out ec2.DescribeSecurityGroupsOutput
	for _, id := range in.GroupIds {
		g, ok := f.groups[id]
		if !ok {
			return nil, &smithy.GenericAPIError{Code: "InvalidGroup.NotFound", Message: "The security group '" + id + "' does not exist"}
		}
		out.SecurityGroups = append(out.SecurityGroups, g)
	}
	return &out, nil
}

func (f *fakeEC2) DescribeInstances(_ context.Context, in *ec2.DescribeInstancesInput, _ ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error) {
	f.filters = in.Filters
	return &ec2.DescribeInstancesOutput{Reservations: []ec2types.Reservation{{Instances: f.instances}}}, nil
}

var _ EC2API = (*fakeEC2)(nil)

// fakeIAM holds roles with inline and attached (managed) policies: kumo has no
// GetPolicyVersion, so attached policies are tested here.
type fakeIAM struct {
	inline   map[string]map[string]string // role → name → document
	attached map[string]map[string]string // role → policy ARN → document
}

func notFound(role string) error {
	return &smithy.GenericAPIError{Code: "NoSuchEntity", Message: "The role with name " + role + " cannot be found."}
}

func (f *fakeIAM) ListRolePolicies(_ context.Context, in *iam.ListRolePoliciesInput, _ ...func(*iam.Options)) (*iam.ListRolePoliciesOutput, error) {
	p, ok := f.inline[*in.RoleName]
	if !ok {
		return nil, notFound(*in.RoleName)
	}
	return &iam.ListRolePoliciesOutput{PolicyNames: sortedKeys(p)}, nil
}

func (f *fakeIAM) GetRolePolicy(_ context.Context, in *iam.GetRolePolicyInput, _ ...func(*iam.Options)) (*iam.GetRolePolicyOutput, error) {
	// IAM answers with the document URL-encoded.
	return &iam.GetRolePolicyOutput{PolicyDocument: aws.String(urlEncode(f.inline[*in.RoleName][*in.PolicyName]))}, nil
}

func (f *fakeIAM) ListAttachedRolePolicies(_ context.Context, in *iam.ListAttachedRolePoliciesInput, _ ...func(*iam.Options)) (*iam.ListAttachedRolePoliciesOutput, error) {
	var out iam.ListAttachedRolePoliciesOutput
	for _, arn := range sortedKeys(f.attached[*in.RoleName]) {
		out.AttachedPolicies = append(out.AttachedPolicies, iamtypes.AttachedPolicy{PolicyArn: aws.String(arn)})
	}
	return &out, nil
}

func (f *fakeIAM) GetPolicy(_ context.Context, in *iam.GetPolicyInput, _ ...func(*iam.Options)) (*iam.GetPolicyOutput, error) {
	return &iam.GetPolicyOutput{Policy: &iamtypes.Policy{Arn: in.PolicyArn, DefaultVersionId: aws.String("v3")}}, nil
}

func (f *fakeIAM) GetPolicyVersion(_ context.Context, in *iam.GetPolicyVersionInput, _ ...func(*iam.Options)) (*iam.GetPolicyVersionOutput, error) {
	for _, byARN := range f.attached {
		if d, ok := byARN[*in.PolicyArn]; ok && aws.ToString(in.VersionId) == "v3" {
			return &iam.GetPolicyVersionOutput{PolicyVersion: &iamtypes.PolicyVersion{Document: aws.String(urlEncode(d))}}, nil
		}
	}
	return nil, &smithy.GenericAPIError{Code: "NoSuchEntity"}
}

var _ IAMAPI = (*fakeIAM)(nil)

func urlEncode(s string) string {
	return strings.NewReplacer("{", "%7B", "}", "%7D", `"`, "%22", ":", "%3A", " ", "%20", "*", "%2A", ",", "%2C", "[", "%5B", "]", "%5D", "/", "%2F").Replace(s)
}

// TestAuditRolesGroupsInstances runs Audit's role, security group and instance checks
// against fakes of IAM and EC2 (the local cloud serves neither managed policy versions
// nor, yet, security groups and metadata options as AWS does).
func TestAuditRolesGroupsInstances(t *testing.T) {
	topo := bus.Topology{Prefix: "st"}
	admin := `{"Version":"2012-10-17","Statement":[{"Sid":"Admin","Effect":"Allow","Action":"*","Resource":"*"}]}`
	scoped := `{"Version":"2012-10-17","Statement":[{"Sid":"Terminate","Effect":"Allow","Action":"ec2:TerminateInstances","Resource":"*","Condition":{"StringEquals":{"aws:ResourceTag/sortie:stack":"st"}}}]}`
	fi := &fakeIAM{
		inline: map[string]map[string]string{
			topo.RoleName(bus.Reaper):      {"reap": scoped},
			topo.RoleName(bus.Planner):     {},
			topo.WorkerRoleName():          {},
			topo.RoleName(bus.Monitor):     {"tags": scoped},
			topo.RoleName(bus.Provisioner): {},
		},
		attached: map[string]map[string]string{
			topo.RoleName(bus.Planner):     {"arn:aws:iam::aws:policy/AdministratorAccess": admin},
			topo.RoleName(bus.Provisioner): {"arn:aws:iam::" + account + ":policy/st-launch": scoped},
		},
	}
	open := ec2types.SecurityGroup{GroupId: aws.String("sg-0000000000000000a"), IpPermissions: []ec2types.IpPermission{{
		IpProtocol: aws.String("tcp"), FromPort: aws.Int32(22), ToPort: aws.Int32(22), IpRanges: []ec2types.IpRange{{CidrIp: aws.String("0.0.0.0/0")}},
	}}}
	closed := ec2types.SecurityGroup{GroupId: aws.String("sg-0000000000000000b")}
	stackTag := []ec2types.Tag{{Key: aws.String(tags.Stack), Value: aws.String("st")}}
	fe := &fakeEC2{
		groups: map[string]ec2types.SecurityGroup{*open.GroupId: open, *closed.GroupId: closed},
		instances: []ec2types.Instance{
			{InstanceId: aws.String("i-v2"), Tags: stackTag, MetadataOptions: &ec2types.InstanceMetadataOptionsResponse{HttpTokens: ec2types.HttpTokensStateRequired, HttpPutResponseHopLimit: aws.Int32(1)}},
			{InstanceId: aws.String("i-v1"), Tags: stackTag, MetadataOptions: &ec2types.InstanceMetadataOptionsResponse{HttpTokens: ec2types.HttpTokensStateOptional}},
			{InstanceId: aws.String("i-other-stack"), Tags: []ec2types.Tag{{Key: aws.String(tags.Stack), Value: aws.String("other")}}},
		},
	}
	r, err := Audit(context.Background(), Clients{IAM: fi, EC2: fe}, Target{
		Topology: topo, Now: auditTime,
		SecurityGroups: []string{"sg-0000000000000000b", "sg-0000000000000000a", "sg-0000000000000000c", "sg-0000000000000000a"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("report:\n%s", r)
	want := map[ResourceType]map[string]Finding{
		TypeRole: {
			topo.RoleName(bus.Planner):      {RuleLeastPrivilege, NonCompliant, "arn:aws:iam::aws:policy/AdministratorAccess/Admin: Action *"},
			topo.RoleName(bus.Provisioner):  {RuleLeastPrivilege, Compliant, "1 policy, 1 Allow statement: no wildcard action, no untagged mutating action on Resource *"},
			topo.RoleName(bus.Bootstrapper): {RuleLeastPrivilege, NotApplicable, "role does not exist"},
			topo.RoleName(bus.Monitor):      {RuleLeastPrivilege, Compliant, "1 policy, 1 Allow statement: no wildcard action, no untagged mutating action on Resource *"},
			topo.RoleName(bus.Reaper):       {RuleLeastPrivilege, Compliant, "1 policy, 1 Allow statement: no wildcard action, no untagged mutating action on Resource *"},
			topo.WorkerRoleName():           {RuleLeastPrivilege, Compliant, "0 policies, 0 Allow statements: no wildcard action, no untagged mutating action on Resource *"},
			topo.UpstreamRoleName():         {RuleLeastPrivilege, NotApplicable, "role does not exist"},
			topo.ExecutionRoleName():        {RuleLeastPrivilege, NotApplicable, "role does not exist"},
		},
		TypeSecurityGroup: {
			"sg-0000000000000000a": {RuleRestrictedSSH, NonCompliant, "port 22 open to 0.0.0.0/0 (tcp 22-22)"},
			"sg-0000000000000000b": {RuleRestrictedSSH, Compliant, "port 22 not open to 0.0.0.0/0 or ::/0"},
			"sg-0000000000000000c": {RuleRestrictedSSH, NotApplicable, "security group does not exist"},
		},
		TypeInstance: {
			"i-v2": {RuleIMDSv2, Compliant, "HttpTokens required, hop limit 1"},
			"i-v1": {RuleIMDSv2, NonCompliant, "HttpTokens optional, want required: IMDSv1 answers"},
		},
	}
	n := 0
	for typ, byID := range want {
		for id, f := range byID {
			n++
			got := r.Findings(typ, id)
			if len(got) != 1 || got[f.Rule] != f {
				t.Errorf("%s %s: %+v, want %+v", typ, id, got, f)
			}
		}
	}
	if len(r.Evaluations) != n {
		t.Errorf("%d evaluations, want %d (each group once, no other stack's instance)", len(r.Evaluations), n)
	}
	if r.NonCompliant() != 3 {
		t.Errorf("NonCompliant() = %d, want 3", r.NonCompliant())
	}
	wantFilter := map[string]string{"tag:" + tags.Stack: "st", "instance-state-name": "pending running stopping stopped"}
	for _, f := range fe.filters {
		if got := strings.Join(f.Values, " "); wantFilter[aws.ToString(f.Name)] != got {
			t.Errorf("DescribeInstances filter %s = %q", aws.ToString(f.Name), got)
		}
	}
	if len(fe.filters) != 2 {
		t.Errorf("DescribeInstances filters %+v, want the stack tag and live states", fe.filters)
	}
}
