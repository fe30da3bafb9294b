// Package audit checks that the S3 buckets a Sortie stack uses enforce Sortie's rules (TLS
// only, SSE-KMS by default and on every upload, no public access): `sortie audit`.
package audit

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/sortie-fleet/sortie/pkg/awsx"
)

// S3API lists the S3 calls Audit makes: it only reads.
type S3API interface {
	HeadBucket(ctx context.Context, params *s3.HeadBucketInput, optFns ...func(*s3.Options)) (*s3.HeadBucketOutput, error)
	GetBucketPolicy(ctx context.Context, params *s3.GetBucketPolicyInput, optFns ...func(*s3.Options)) (*s3.GetBucketPolicyOutput, error)
	GetBucketEncryption(ctx context.Context, params *s3.GetBucketEncryptionInput, optFns ...func(*s3.Options)) (*s3.GetBucketEncryptionOutput, error)
	GetPublicAccessBlock(ctx context.Context, params *s3.GetPublicAccessBlockInput, optFns ...func(*s3.Options)) (*s3.GetPublicAccessBlockOutput, error)
}

var _ S3API = (*s3.Client)(nil)

// Clients are the AWS clients Audit uses.
type Clients struct {
	S3 S3API
}

// NewClients builds the clients from cfg (S3 path-style when an endpoint override is set).
func NewClients(cfg aws.Config) Clients {
	return Clients{S3: s3.NewFromConfig(cfg, awsx.S3Options(cfg))}
}

// Rule is one thing Sortie requires of a bucket.
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
	// RuleExists is the one finding about a bucket that does not exist.
	RuleExists Rule = "exists"
)

// Rules are the rules every existing bucket is checked against.
var Rules = []Rule{RuleSSLOnly, RuleSSEKMS, RuleDenyUnencryptedPuts, RulePublicAccessBlock}

// Audit checks every bucket against Rules, in the order given (a repeated name once). A
// bucket that does not exist gets one MISSING finding, not an error; an error means a
// bucket could not be read (access denied, network), and the report holds the buckets
// checked before it.
func Audit(ctx context.Context, c Clients, buckets []string) (Report, error) {
	var r Report
	seen := make(map[string]bool)
	for _, b := range buckets {
		if b == "" {
			return r, fmt.Errorf("auditing: empty bucket name")
		}
		if seen[b] {
			continue
		}
		seen[b] = true
		br, err := auditBucket(ctx, c.S3, b)
		if err != nil {
			return r, fmt.Errorf("auditing bucket %s: %w", b, err)
		}
		r.Buckets = append(r.Buckets, br)
	}
	return r, nil
}

func auditBucket(ctx context.Context, api S3API, bucket string) (BucketReport, error) {
	missing := BucketReport{Bucket: bucket, Findings: []Finding{{RuleExists, Missing, "bucket does not exist"}}}
	in := aws.String(bucket)
	if _, err := api.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: in}); awsx.IsNotFound(err) {
		return missing, nil
	} else if err != nil {
		return BucketReport{}, err
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
		return BucketReport{}, fmt.Errorf("reading policy: %w", err)
	}

	var enc *s3types.ServerSideEncryptionConfiguration
	encOut, err := api.GetBucketEncryption(ctx, &s3.GetBucketEncryptionInput{Bucket: in})
	switch code := awsx.ErrorCode(err); {
	case err == nil:
		enc = encOut.ServerSideEncryptionConfiguration
	case code == "NoSuchBucket":
		return missing, nil
	case code != "ServerSideEncryptionConfigurationNotFoundError":
		return BucketReport{}, fmt.Errorf("reading default encryption: %w", err)
	}

	var pab *s3types.PublicAccessBlockConfiguration
	pabOut, err := api.GetPublicAccessBlock(ctx, &s3.GetPublicAccessBlockInput{Bucket: in})
	switch code := awsx.ErrorCode(err); {
	case err == nil:
		pab = pabOut.PublicAccessBlockConfiguration
	case code == "NoSuchBucket":
		return missing, nil
	case code != "NoSuchPublicAccessBlockConfiguration":
		return BucketReport{}, fmt.Errorf("reading public access block: %w", err)
	}

	return BucketReport{Bucket: bucket, Findings: []Finding{
		policyFinding(RuleSSLOnly, policy, policyErr, insecureTransport(bucket)),
		CheckEncryption(enc),
		policyFinding(RuleDenyUnencryptedPuts, policy, policyErr, wrongEncryptionHeader(bucket), noEncryptionHeader(bucket)),
		CheckPublicAccessBlock(pab),
	}}, nil
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
