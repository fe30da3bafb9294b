// Package audit checks that a Sortie stack's AWS resources enforce Sortie's rules — buckets
// (TLS only, SSE-KMS, no public access), topics (only producers publish), the stack's IAM
// roles (no wildcard or untagged mutating grants), the templates' security groups (no SSH
// from the internet), the stack's instances (IMDSv2) and the routing of EC2's notices to
// the monitor (rule, target, queue, DLQ, queue policy) — for `sortie audit`.
package audit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
)

// S3API lists the S3 calls Audit makes: it only reads.
type S3API interface {
	HeadBucket(ctx context.Context, params *s3.HeadBucketInput, optFns ...func(*s3.Options)) (*s3.HeadBucketOutput, error)
	GetBucketPolicy(ctx context.Context, params *s3.GetBucketPolicyInput, optFns ...func(*s3.Options)) (*s3.GetBucketPolicyOutput, error)
	GetBucketEncryption(ctx context.Context, params *s3.GetBucketEncryptionInput, optFns ...func(*s3.Options)) (*s3.GetBucketEncryptionOutput, error)
	GetPublicAccessBlock(ctx context.Context, params *s3.GetPublicAccessBlockInput, optFns ...func(*s3.Options)) (*s3.GetPublicAccessBlockOutput, error)
}

// SNSAPI lists the SNS calls Audit makes.
type SNSAPI interface {
	ListTopics(ctx context.Context, params *sns.ListTopicsInput, optFns ...func(*sns.Options)) (*sns.ListTopicsOutput, error)
	GetTopicAttributes(ctx context.Context, params *sns.GetTopicAttributesInput, optFns ...func(*sns.Options)) (*sns.GetTopicAttributesOutput, error)
}

// IAMAPI lists the IAM calls Audit makes to read a role's inline and attached policies.
type IAMAPI interface {
	ListRolePolicies(ctx context.Context, params *iam.ListRolePoliciesInput, optFns ...func(*iam.Options)) (*iam.ListRolePoliciesOutput, error)
	GetRolePolicy(ctx context.Context, params *iam.GetRolePolicyInput, optFns ...func(*iam.Options)) (*iam.GetRolePolicyOutput, error)
	ListAttachedRolePolicies(ctx context.Context, params *iam.ListAttachedRolePoliciesInput, optFns ...func(*iam.Options)) (*iam.ListAttachedRolePoliciesOutput, error)
	GetPolicy(ctx context.Context, params *iam.GetPolicyInput, optFns ...func(*iam.Options)) (*iam.GetPolicyOutput, error)
	GetPolicyVersion(ctx context.Context, params *iam.GetPolicyVersionInput, optFns ...func(*iam.Options)) (*iam.GetPolicyVersionOutput, error)
}

// EC2API lists the EC2 calls Audit makes.
type EC2API interface {
	DescribeSecurityGroups(ctx context.Context, params *ec2.DescribeSecurityGroupsInput, optFns ...func(*ec2.Options)) (*ec2.DescribeSecurityGroupsOutput, error)
	DescribeInstances(ctx context.Context, params *ec2.DescribeInstancesInput, optFns ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error)
}

var (
	_ S3API  = (*s3.Client)(nil)
	_ SNSAPI = (*sns.Client)(nil)
	_ IAMAPI = (*iam.Client)(nil)
	_ EC2API = (*ec2.Client)(nil)
)

// Clients are the AWS clients Audit uses. A nil client leaves its resources out (tests
// of one kind of resource); `sortie audit` sets them all.
type Clients struct {
	S3  S3API
	SNS SNSAPI
	IAM IAMAPI
	EC2 EC2API
	// EventBridge and SQS read the routing of EC2's notices; both must be set for it to
	// be checked.
	EventBridge EventBridgeAPI
	SQS         SQSAPI
}

// NewClients builds the clients from cfg (S3 path-style when an endpoint override is set).
func NewClients(cfg aws.Config) Clients {
	return Clients{
		S3:  s3.NewFromConfig(cfg, awsx.S3Options(cfg)),
		SNS: sns.NewFromConfig(cfg),
		IAM: iam.NewFromConfig(cfg),
		EC2: ec2.NewFromConfig(cfg),

		EventBridge: eventbridge.NewFromConfig(cfg),
		SQS:         sqs.NewFromConfig(cfg),
	}
}

// Rule is one thing Sortie requires of a resource.
type Rule string

// The rules, in the order a report lists them.
const (
	// RuleSSLOnly is AWS Config's s3-bucket-ssl-requests-only: the policy denies every
	// request without TLS (Bool aws:SecureTransport false), by everyone, on s3:*, to the
	// bucket and its objects.
	RuleSSLOnly Rule = "ssl-requests-only"
	// RuleSSEKMS is AWS Config's s3-bucket-server-side-encryption-enabled, as Sortie reads
	// it: default encryption is aws:kms (SSE-S3's AES256 is not enough).
	RuleSSEKMS Rule = "sse-kms"
	// RuleDenyUnencryptedPuts is Sortie's own: the policy denies s3:PutObject on the
	// objects both with an SSE header other than aws:kms (StringNotEquals) and without one
	// (Null true).
	RuleDenyUnencryptedPuts Rule = "deny-unencrypted-puts"
	// RulePublicAccessBlock: the bucket's public access block has all four settings on.
	RulePublicAccessBlock Rule = "public-access-block"
	// RuleExists is the one finding about a bucket, topic, rule or queue the stack uses that does not
	// exist: NON_COMPLIANT.
	RuleExists Rule = "exists"
	// RuleProducersOnly: the topic's policy lets only the event type's producers publish
	// (see CheckTopicPolicy).
	RuleProducersOnly Rule = "producers-only"
	// RuleLeastPrivilege: no statement of the role's policies allows every action, every
	// action of a service, or a mutating action on Resource "*" without a tag condition
	// (see CheckRolePolicies).
	RuleLeastPrivilege Rule = "least-privilege"
	// RuleRestrictedSSH is AWS Config's restricted-ssh: no ingress rule opens port 22 to
	// 0.0.0.0/0 or ::/0.
	RuleRestrictedSSH Rule = "restricted-ssh"
	// RuleIMDSv2 is AWS Config's ec2-imdsv2-check: the instance's metadata service
	// requires session tokens (HttpTokens required).
	RuleIMDSv2 Rule = "ec2-imdsv2-check"
)

// Rules are the rules every existing bucket is checked against.
var Rules = []Rule{RuleSSLOnly, RuleSSEKMS, RuleDenyUnencryptedPuts, RulePublicAccessBlock}

// Target is what Audit checks.
type Target struct {
	// Topology names the stack's buckets (log and secrets), topics and roles, and tags
	// its instances.
	Topology bus.Topology
	// Buckets are more buckets to check (`--bucket`).
	Buckets []string
	// SecurityGroups are the security groups of the ops config's templates.
	SecurityGroups []string
	// Now stamps the evaluations (OrderingTimestamp); zero means time.Now().
	Now time.Time
}

// Audit checks the target's resources and returns one evaluation per resource and rule: the
// stack's log and secrets buckets and the target's other buckets (a bucket that does not
// exist is NON_COMPLIANT), the stack's topics, its roles, the templates' security groups,
// the stack's instances and the EC2 events rule and queue. An error means something could not be read (access denied,
// network, an unparsable answer); the report then holds what was checked before it.
func Audit(ctx context.Context, c Clients, t Target) (Report, error) {
	if err := t.Topology.Validate(); err != nil {
		return Report{}, fmt.Errorf("auditing: %w", err)
	}
	now := t.Now
	if now.IsZero() {
		now = time.Now()
	}
	a := auditor{c: c, now: now}
	steps := []func(context.Context, Target) error{a.buckets, a.topics, a.roles, a.securityGroups, a.instances, a.ec2Events}
	for _, step := range steps {
		if err := step(ctx, t); err != nil {
			return a.report, err
		}
	}
	return a.report, nil
}

// auditor accumulates a report.
type auditor struct {
	c      Clients
	now    time.Time
	report Report
}

func (a *auditor) add(t ResourceType, id string, fs ...Finding) { a.report.add(t, id, a.now, fs...) }

// buckets checks the stack's buckets and the target's, in that order, each once.
func (a *auditor) buckets(ctx context.Context, t Target) error {
	if a.c.S3 == nil {
		return nil
	}
	seen := make(map[string]bool)
	for _, b := range append([]string{t.Topology.BucketName(), t.Topology.SecretsBucketName()}, t.Buckets...) {
		if b == "" {
			return errors.New("auditing: empty bucket name")
		}
		if seen[b] {
			continue
		}
		seen[b] = true
		fs, err := auditBucket(ctx, a.c.S3, b)
		if err != nil {
			return fmt.Errorf("auditing bucket %s: %w", b, err)
		}
		a.add(TypeBucket, b, fs...)
	}
	return nil
}

func auditBucket(ctx context.Context, api S3API, bucket string) ([]Finding, error) {
	missing := []Finding{{RuleExists, NonCompliant, "bucket does not exist"}}
	in := aws.String(bucket)
	if _, err := api.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: in}); awsx.IsNotFound(err) {
		return missing, nil
	} else if err != nil {
		return nil, err
	}

	// Each setting may be unset (its own error code); a bucket deleted meanwhile says
	// NoSuchBucket instead.
	var policy *Policy
	var policyErr error
	pol, err := api.GetBucketPolicy(ctx, &s3.GetBucketPolicyInput{Bucket: in})
	switch code := awsx.ErrorCode(err); {
	case err == nil:
		policy, policyErr = ParsePolicy(aws.ToString(pol.Policy))
	case code == "NoSuchBucket":
		return missing, nil
	case code != "NoSuchBucketPolicy":
		return nil, fmt.Errorf("reading policy: %w", err)
	}

	var enc *s3types.ServerSideEncryptionConfiguration
	encOut, err := api.GetBucketEncryption(ctx, &s3.GetBucketEncryptionInput{Bucket: in})
	switch code := awsx.ErrorCode(err); {
	case err == nil:
		enc = encOut.ServerSideEncryptionConfiguration
	case code == "NoSuchBucket":
		return missing, nil
	case code != "ServerSideEncryptionConfigurationNotFoundError":
		return nil, fmt.Errorf("reading default encryption: %w", err)
	}

	var pab *s3types.PublicAccessBlockConfiguration
	pabOut, err := api.GetPublicAccessBlock(ctx, &s3.GetPublicAccessBlockInput{Bucket: in})
	switch code := awsx.ErrorCode(err); {
	case err == nil:
		pab = pabOut.PublicAccessBlockConfiguration
	case code == "NoSuchBucket":
		return missing, nil
	case code != "NoSuchPublicAccessBlockConfiguration":
		return nil, fmt.Errorf("reading public access block: %w", err)
	}

	return []Finding{
		policyFinding(RuleSSLOnly, policy, policyErr, insecureTransport(bucket)),
		CheckEncryption(enc),
		policyFinding(RuleDenyUnencryptedPuts, policy, policyErr, wrongEncryptionHeader(bucket), noEncryptionHeader(bucket)),
		CheckPublicAccessBlock(pab),
	}, nil
}

// CheckSSLOnly checks RuleSSLOnly on a bucket's policy (nil: the bucket has none).
func CheckSSLOnly(p *Policy, bucket string) Finding {
	return policyFinding(RuleSSLOnly, p, nil, insecureTransport(bucket))
}

// CheckDenyUnencryptedPuts checks RuleDenyUnencryptedPuts on a bucket's policy (nil: the
// bucket has none).
func CheckDenyUnencryptedPuts(p *Policy, bucket string) Finding {
	return policyFinding(RuleDenyUnencryptedPuts, p, nil, wrongEncryptionHeader(bucket), noEncryptionHeader(bucket))
}

// policyFinding is rule's finding: compliant when p denies every one of the classes.
func policyFinding(rule Rule, p *Policy, parseErr error, classes ...denial) Finding {
	switch {
	case parseErr != nil:
		return Finding{rule, NonCompliant, parseErr.Error()}
	case p == nil:
		return Finding{rule, NonCompliant, "no bucket policy"}
	}
	var ok, bad []string
	for i, d := range classes {
		siblings := slices.Concat(classes[:i], classes[i+1:])
		if yes, reason := check(p, d, siblings...); yes {
			ok = append(ok, reason)
		} else {
			bad = append(bad, reason)
		}
	}
	if len(bad) > 0 {
		return Finding{rule, NonCompliant, strings.Join(bad, "; ")}
	}
	return Finding{rule, Compliant, strings.Join(ok, "; ")}
}

// CheckEncryption checks RuleSSEKMS on a bucket's default encryption (nil: none).
func CheckEncryption(cfg *s3types.ServerSideEncryptionConfiguration) Finding {
	if cfg == nil || len(cfg.Rules) == 0 {
		return Finding{RuleSSEKMS, NonCompliant, "no default encryption"}
	}
	var algs []string
	for _, r := range cfg.Rules {
		d := r.ApplyServerSideEncryptionByDefault
		if d == nil {
			continue
		}
		if d.SSEAlgorithm == s3types.ServerSideEncryptionAwsKms {
			key := aws.ToString(d.KMSMasterKeyID)
			if key == "" {
				key = "the AWS managed key aws/s3"
			}
			return Finding{RuleSSEKMS, Compliant, "default encryption aws:kms with " + key}
		}
		algs = append(algs, string(d.SSEAlgorithm))
	}
	if len(algs) == 0 {
		return Finding{RuleSSEKMS, NonCompliant, "no default encryption"}
	}
	alg := strings.Join(algs, ", ")
	if alg == string(s3types.ServerSideEncryptionAes256) {
		alg += " (SSE-S3)"
	}
	return Finding{RuleSSEKMS, NonCompliant, "default encryption " + alg + ", want aws:kms"}
}

// CheckPublicAccessBlock checks RulePublicAccessBlock (nil: the bucket has none).
func CheckPublicAccessBlock(cfg *s3types.PublicAccessBlockConfiguration) Finding {
	if cfg == nil {
		return Finding{RulePublicAccessBlock, NonCompliant, "no public access block"}
	}
	var off []string
	for _, f := range []struct {
		name string
		on   *bool
	}{
		{"BlockPublicAcls", cfg.BlockPublicAcls},
		{"IgnorePublicAcls", cfg.IgnorePublicAcls},
		{"BlockPublicPolicy", cfg.BlockPublicPolicy},
		{"RestrictPublicBuckets", cfg.RestrictPublicBuckets},
	} {
		if !aws.ToBool(f.on) {
			off = append(off, f.name)
		}
	}
	if len(off) > 0 {
		return Finding{RulePublicAccessBlock, NonCompliant, strings.Join(off, ", ") + " off"}
	}
	return Finding{RulePublicAccessBlock, Compliant, "all four settings on"}
}
