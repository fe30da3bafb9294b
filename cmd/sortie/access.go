package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
)

// loginFlags are how the commands that log in to instances (ssh, ssh-config, logs
// --follow) find them and their keys, as the services do.
type loginFlags struct {
	Key    string `help:"The instances' login key: a file or s3://BUCKET/KEY (default: s3://<prefix>-secrets/keys/<the template's key_name>.pem, where the services read it)." env:"SORTIE_SSH_KEY" placeholder:"FILE|s3://BUCKET/KEY"`
	Local  bool   `help:"Local cloud: connect to the instances' sortie:ssh-endpoint tag (never honoured otherwise)." env:"SORTIE_LOCAL_MODE"`
	Config string `help:"The ops configuration (templates give the login user and address); default: the embedded one." env:"SORTIE_CONFIG" placeholder:"FILE"`
}

// ops loads the ops configuration the flags name.
func (f loginFlags) ops() (*opsconfig.Config, error) {
	if f.Config == "" {
		return opsconfig.Default(), nil
	}
	return opsconfig.Load(f.Config)
}

// keySource is where the login key is read: --key, or the secrets bucket's object for
// the key pair of the configuration's templates.
func (f loginFlags) keySource(topo bus.Topology, ops *opsconfig.Config) (string, error) {
	if f.Key != "" {
		return f.Key, nil
	}
	names := map[string]bool{}
	for _, t := range ops.Templates {
		names[t.KeyName] = true
	}
	if len(names) != 1 {
		return "", errors.New("no login key: give --key FILE or s3://BUCKET/KEY (or set SORTIE_SSH_KEY)")
	}
	for n := range names {
		return topo.LoginKey(n), nil
	}
	panic("unreachable")
}

// checkStack says, in one line, that the stack --prefix names does not exist at this
// endpoint: its log bucket is missing.
func checkStack(ctx context.Context, api interface {
	HeadBucket(ctx context.Context, params *s3.HeadBucketInput, optFns ...func(*s3.Options)) (*s3.HeadBucketOutput, error)
}, topo bus.Topology) error {
	_, err := api.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(topo.BucketName())})
	if err == nil {
		return nil
	}
	if awsx.IsNotFound(err) || awsx.ErrorCode(err) == "NotFound" {
		return fmt.Errorf("no Sortie stack %q at %s (its bucket %s does not exist): check --prefix (SORTIE_PREFIX) and AWS_ENDPOINT_URL, or create it with `sortie --prefix %s infra up`",
			topo.Prefix, endpoint(), topo.BucketName(), topo.Prefix)
	}
	return err
}

// endpoint names the AWS endpoint the CLI talks to.
func endpoint() string {
	if e := os.Getenv("AWS_ENDPOINT_URL"); e != "" {
		return e
	}
	return "AWS (AWS_ENDPOINT_URL unset)"
}

// explain turns the errors an operator meets first (no credentials, an endpoint that does
// not answer) into one line saying what is wrong and what to try; others are returned as
// they are.
func explain(err error) error {
	if err == nil {
		return nil
	}
	var signing *v4.SigningError
	msg := err.Error()
	if errors.As(err, &signing) || strings.Contains(msg, "failed to retrieve credentials") ||
		strings.Contains(msg, "get credentials: ") || strings.Contains(msg, "failed to refresh cached credentials") {
		return errors.New("no AWS credentials found: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (test/test for the local cloud), or SORTIE_ROLE_ARN")
	}
	var dns *net.DNSError
	var send *smithyhttp.RequestSendError
	if errors.Is(err, syscall.ECONNREFUSED) || errors.As(err, &dns) || errors.As(err, &send) {
		return fmt.Errorf("cannot reach %s: is it up (`sortie localcloud` for the local cloud)? check AWS_ENDPOINT_URL and AWS_REGION (%v)", endpoint(), rootCause(err))
	}
	return err
}

// rootCause is the innermost error of a chain of single wraps.
func rootCause(err error) error {
	for {
		next := errors.Unwrap(err)
		if next == nil {
			return err
		}
		err = next
	}
}
