// Package awsx builds aws.Config for Sortie's services and classifies AWS errors.
package awsx

import (
	"context"
	"fmt"
	"os"
	"regexp"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/credentials/stscreds"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sts"
)

// Environment variables read by Load in addition to the SDK's own (AWS_REGION,
// AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_<SERVICE>, AWS_PROFILE, ...).
const (
	// EnvRoleARN names the IAM role every client assumes. Unset: the default chain's
	// credentials are used as they are.
	EnvRoleARN = "SORTIE_ROLE_ARN"
	// EnvRoleExternalID is the optional external id passed with AssumeRole.
	EnvRoleExternalID = "SORTIE_ROLE_EXTERNAL_ID"
)

// sessionNameRE is what STS accepts as a RoleSessionName.
var sessionNameRE = regexp.MustCompile(`^[\w+=,.@-]{2,64}$`)

// ForEndpoint returns a config that sends every client to one endpoint (the local cloud,
// kumo or LocalStack) with static test credentials in us-east-1. For tests and `sortie dev`.
func ForEndpoint(endpoint string) aws.Config {
	return aws.Config{
		Region:       "us-east-1",
		Credentials:  credentials.NewStaticCredentialsProvider("test", "test", ""),
		BaseEndpoint: aws.String(endpoint),
	}
}

// Load builds the config of one service from the SDK's default chain, so AWS_ENDPOINT_URL
// and AWS_ENDPOINT_URL_<SERVICE> are the only switch between AWS, LocalStack and the local
// cloud. With SORTIE_ROLE_ARN set, every client built from the config uses temporary
// credentials from STS AssumeRole (session name "sortie-<service>", external id from
// SORTIE_ROLE_EXTERNAL_ID when set), cached and refreshed before they expire.
//
// Only main calls Load; libraries take the aws.Config they are given.
func Load(ctx context.Context, service string) (aws.Config, error) {
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return aws.Config{}, fmt.Errorf("loading aws config for %s: %w", service, err)
	}
	if cfg, err = wrapFromEnv(cfg, service); err != nil {
		return aws.Config{}, err
	}
	roleARN := os.Getenv(EnvRoleARN)
	if roleARN == "" {
		return cfg, nil
	}
	session := "sortie-" + service
	if !sessionNameRE.MatchString(session) {
		return aws.Config{}, fmt.Errorf("loading aws config: role session name %q: want 2-64 characters of [A-Za-z0-9_+=,.@-]", session)
	}
	externalID := os.Getenv(EnvRoleExternalID)
	provider := stscreds.NewAssumeRoleProvider(sts.NewFromConfig(cfg), roleARN, func(o *stscreds.AssumeRoleOptions) {
		o.RoleSessionName = session
		if externalID != "" {
			o.ExternalID = aws.String(externalID)
		}
	})
	cfg.Credentials = aws.NewCredentialsCache(provider)
	return cfg, nil
}

// serviceEndpointSource is implemented by the SDK's config sources (environment and
// shared config) that know per-service endpoint overrides.
type serviceEndpointSource interface {
	GetServiceBaseEndpoint(ctx context.Context, sdkID string) (string, bool, error)
}

// ignoreEndpointsSource is implemented by config sources that can switch configured
// endpoints off (AWS_IGNORE_CONFIGURED_ENDPOINT_URLS).
type ignoreEndpointsSource interface {
	GetIgnoreConfiguredEndpoints(ctx context.Context) (bool, bool, error)
}

// S3Options returns the S3 client options for cfg: path-style addressing when an endpoint
// override (BaseEndpoint, AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_S3) is in force, which kumo
// and LocalStack need; virtual-hosted style on AWS.
//
//	client := s3.NewFromConfig(cfg, awsx.S3Options(cfg))
func S3Options(cfg aws.Config) func(*s3.Options) {
	override := cfg.BaseEndpoint != nil && *cfg.BaseEndpoint != ""
	if !override && !ignoresConfiguredEndpoints(cfg) {
		for _, src := range cfg.ConfigSources {
			if p, ok := src.(serviceEndpointSource); ok {
				if v, found, err := p.GetServiceBaseEndpoint(context.Background(), s3.ServiceID); err == nil && found && v != "" {
					override = true
					break
				}
			}
		}
	}
	return func(o *s3.Options) {
		if override {
			o.UsePathStyle = true
			// Emulators send no response checksums; the SDK would log a warning to stderr
			// for every GetObject (a workload's log fills with them).
			o.DisableLogOutputChecksumValidationSkipped = true
		}
	}
}

func ignoresConfiguredEndpoints(cfg aws.Config) bool {
	for _, src := range cfg.ConfigSources {
		if p, ok := src.(ignoreEndpointsSource); ok {
			if v, found, err := p.GetIgnoreConfiguredEndpoints(context.Background()); err == nil && found {
				return v
			}
		}
	}
	return false
}
