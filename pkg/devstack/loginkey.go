package devstack

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/infra"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
)

// KeyPairAPI is the EC2 call creating the templates' login key pair makes.
type KeyPairAPI interface {
	CreateKeyPair(ctx context.Context, params *ec2.CreateKeyPairInput, optFns ...func(*ec2.Options)) (*ec2.CreateKeyPairOutput, error)
}

// LoginKeyS3API is the S3 calls storing the login key make: securing its bucket, and
// storing and finding the key.
type LoginKeyS3API interface {
	infra.BucketAPI
	PutObject(ctx context.Context, params *s3.PutObjectInput, optFns ...func(*s3.Options)) (*s3.PutObjectOutput, error)
	HeadObject(ctx context.Context, params *s3.HeadObjectInput, optFns ...func(*s3.Options)) (*s3.HeadObjectOutput, error)
}

var (
	_ KeyPairAPI    = (*ec2.Client)(nil)
	_ LoginKeyS3API = (*s3.Client)(nil)
)

// SecretsBucket is the bucket holding the stack's login keys: <prefix>-secrets.
func SecretsBucket(prefix string) string { return bus.Topology{Prefix: prefix}.SecretsBucketName() }

// CreateLoginKeys creates the key pair the ops templates log in with and keeps its private
// key in s3://<prefix>-secrets/keys/<name>.pem (SSE-KMS), where the services read it. It
// returns that location, the services' SORTIE_SSH_KEY. The bucket is secured as the log
// bucket is (infra.SecureBucket: default SSE-KMS, public access block, a policy denying
// non-TLS requests and uploads without aws:kms), so `sortie audit` finds it compliant. It
// can run again: the bucket's settings are corrected only where they differ, and a key
// pair that already exists is kept when its private key is in the bucket (EC2 hands out a
// private key only once, so without the stored copy nothing could log in, and it says so).
func CreateLoginKeys(ctx context.Context, ec2c KeyPairAPI, s3c LoginKeyS3API, prefix string, ops *opsconfig.Config) (string, error) {
	bucket := SecretsBucket(prefix)
	var names []string
	for _, t := range ops.Templates {
		names = append(names, t.KeyName)
	}
	sort.Strings(names)
	names = slices.Compact(names)
	if len(names) != 1 {
		return "", fmt.Errorf("want every template to use one key pair (the services read one SORTIE_SSH_KEY), got %d: %v", len(names), names)
	}
	name := names[0]
	if _, err := infra.SecureBucket(ctx, s3c, regionOf(s3c), bucket, ""); err != nil {
		return "", fmt.Errorf("securing the secrets bucket: %w", err)
	}
	key := (bus.Topology{Prefix: prefix}).LoginKeyObject(name)
	loc := "s3://" + bucket + "/" + key
	out, err := ec2c.CreateKeyPair(ctx, &ec2.CreateKeyPairInput{KeyName: aws.String(name), KeyType: "ed25519"})
	if awsx.ErrorCode(err) == "InvalidKeyPair.Duplicate" {
		if _, herr := s3c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)}); herr != nil {
			return "", fmt.Errorf("key pair %s exists but its private key is not at %s (%v): delete the key pair or start a fresh local cloud", name, loc, herr)
		}
		return loc, nil
	}
	if err != nil {
		return "", fmt.Errorf("creating key pair %s: %w", name, err)
	}
	if _, err := s3c.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(bucket), Key: aws.String(key), Body: strings.NewReader(aws.ToString(out.KeyMaterial)),
		ServerSideEncryption: s3types.ServerSideEncryptionAwsKms,
	}); err != nil {
		return "", fmt.Errorf("storing key pair %s: %w", name, err)
	}
	return loc, nil
}

// regionOf is the region an S3 client sends to, where a new bucket must be created ("" when
// the client does not say, as a test double may not: us-east-1).
func regionOf(s3c LoginKeyS3API) string {
	if c, ok := s3c.(interface{ Options() s3.Options }); ok {
		return c.Options().Region
	}
	return ""
}
