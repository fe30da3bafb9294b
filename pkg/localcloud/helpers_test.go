package localcloud

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"
	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/awsx"
)

// testImage is a well-formed AMI id; the local cloud runs any image the same way.
const testImage = "ami-0123456789abcdef0"

// newCloud starts a local cloud on a free port with a fast boot; Close runs at cleanup.
func newCloud(t testing.TB, opts Options) *Cloud {
	t.Helper()
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if opts.BootDelay == 0 {
		opts.BootDelay = 50 * time.Millisecond
	}
	if opts.ShutdownDelay == 0 {
		opts.ShutdownDelay = 20 * time.Millisecond
	}
	if opts.DataDir == "" {
		opts.DataDir = t.TempDir()
	}
	c, err := New(opts)
	if err != nil {
		t.Fatalf("starting local cloud: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("closing local cloud: %v", err)
		}
	})
	return c
}

// countingClient counts the HTTP requests (attempts, retries included) the SDK sends.
type countingClient struct {
	n     atomic.Int64
	inner *http.Client
}

func (c *countingClient) Do(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return c.inner.Do(r)
}

// noBackoff keeps the SDK's standard retryer (its retryable checks, its attempt limit) but
// retries at once, so tests that exercise retries stay fast.
func noBackoff(o *retry.StandardOptions) {
	o.Backoff = retry.BackoffDelayerFunc(func(int, error) (time.Duration, error) { return time.Millisecond, nil })
}

// ec2Client returns the real SDK client for the cloud and the counter of its HTTP requests.
func ec2Client(t testing.TB, c *Cloud) (*ec2.Client, *countingClient) {
	t.Helper()
	return newEC2Client(c.URL())
}

func newEC2Client(endpoint string) (*ec2.Client, *countingClient) {
	counter := &countingClient{inner: &http.Client{}}
	cfg := awsx.ForEndpoint(endpoint)
	cfg.HTTPClient = counter
	client := ec2.NewFromConfig(cfg, func(o *ec2.Options) {
		o.Retryer = retry.NewStandard(noBackoff)
	})
	return client, counter
}

func ctxT(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// wantCode fails unless err carries the API error code.
func wantCode(t testing.TB, err error, code string) {
	t.Helper()
	var apiErr smithy.APIError
	if !errors.As(err, &apiErr) {
		t.Fatalf("error = %v, want API error %s", err, code)
	}
	if apiErr.ErrorCode() != code {
		t.Fatalf("error code = %s (%v), want %s", apiErr.ErrorCode(), err, code)
	}
}

type launch struct {
	count        int32
	instanceType types.InstanceType
	tags         map[string]string
	keyName      string
	userData     string
	token        string
}

// run launches instances and returns their ids.
func run(t testing.TB, client *ec2.Client, l launch) []string {
	t.Helper()
	out, err := client.RunInstances(ctxT(t), runInput(l))
	if err != nil {
		t.Fatalf("RunInstances: %v", err)
	}
	return instanceIDs(out.Instances)
}

func runInput(l launch) *ec2.RunInstancesInput {
	if l.count == 0 {
		l.count = 1
	}
	if l.instanceType == "" {
		l.instanceType = types.InstanceTypeT3Micro
	}
	in := &ec2.RunInstancesInput{
		ImageId:      aws.String(testImage),
		InstanceType: l.instanceType,
		MinCount:     aws.Int32(l.count),
		MaxCount:     aws.Int32(l.count),
	}
	if l.keyName != "" {
		in.KeyName = aws.String(l.keyName)
	}
	if l.userData != "" {
		in.UserData = aws.String(base64.StdEncoding.EncodeToString([]byte(l.userData)))
	}
	if l.token != "" {
		in.ClientToken = aws.String(l.token)
	}
	if len(l.tags) > 0 {
		spec := types.TagSpecification{ResourceType: types.ResourceTypeInstance}
		for k, v := range l.tags {
			spec.Tags = append(spec.Tags, types.Tag{Key: aws.String(k), Value: aws.String(v)})
		}
		in.TagSpecifications = []types.TagSpecification{spec}
	}
	return in
}

func instanceIDs(insts []types.Instance) []string {
	ids := make([]string, 0, len(insts))
	for _, i := range insts {
		ids = append(ids, aws.ToString(i.InstanceId))
	}
	slices.Sort(ids)
	return ids
}

// describe returns every instance DescribeInstances reports for the input, sorted by id.
func describe(t testing.TB, client *ec2.Client, in *ec2.DescribeInstancesInput) []types.Instance {
	t.Helper()
	out, err := client.DescribeInstances(ctxT(t), in)
	if err != nil {
		t.Fatalf("DescribeInstances: %v", err)
	}
	var insts []types.Instance
	for _, r := range out.Reservations {
		insts = append(insts, r.Instances...)
	}
	slices.SortFunc(insts, func(a, b types.Instance) int { return strings.Compare(*a.InstanceId, *b.InstanceId) })
	return insts
}

func waitRunning(t testing.TB, client *ec2.Client, ids []string) {
	t.Helper()
	w := ec2.NewInstanceRunningWaiter(client, func(o *ec2.InstanceRunningWaiterOptions) {
		o.MinDelay, o.MaxDelay = 20*time.Millisecond, 50*time.Millisecond
	})
	if err := w.Wait(ctxT(t), &ec2.DescribeInstancesInput{InstanceIds: ids}, 20*time.Second); err != nil {
		t.Fatalf("waiting for %v to run: %v", ids, err)
	}
}

func waitTerminated(t testing.TB, client *ec2.Client, ids []string) {
	t.Helper()
	w := ec2.NewInstanceTerminatedWaiter(client, func(o *ec2.InstanceTerminatedWaiterOptions) {
		o.MinDelay, o.MaxDelay = 20*time.Millisecond, 50*time.Millisecond
	})
	if err := w.Wait(ctxT(t), &ec2.DescribeInstancesInput{InstanceIds: ids}, 20*time.Second); err != nil {
		t.Fatalf("waiting for %v to terminate: %v", ids, err)
	}
}

func tagValue(inst types.Instance, key string) (string, bool) {
	for _, tag := range inst.Tags {
		if aws.ToString(tag.Key) == key {
			return aws.ToString(tag.Value), true
		}
	}
	return "", false
}

// newEd25519 returns a fresh key as a signer and as the OpenSSH PEM cloud-init takes.
func newEd25519(t testing.TB) (ssh.Signer, string) {
	t.Helper()
	signer, pemText, err := genEd25519()
	if err != nil {
		t.Fatal(err)
	}
	return signer, pemText
}

func genEd25519() (ssh.Signer, string, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, "", err
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, "", err
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return nil, "", err
	}
	return signer, string(pem.EncodeToMemory(block)), nil
}

// cloudConfigWithHostKey is the user data a provisioner sends to pin an instance's host key.
func cloudConfigWithHostKey(hostKeyPEM string) string {
	var b strings.Builder
	b.WriteString("#cloud-config\nssh_keys:\n  ed25519_private: |\n")
	for _, line := range strings.Split(strings.TrimSpace(hostKeyPEM), "\n") {
		fmt.Fprintf(&b, "    %s\n", line)
	}
	return b.String()
}
