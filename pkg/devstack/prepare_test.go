package devstack

import (
	"context"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
)

type clients struct {
	ec2 *ec2.Client
	s3  *s3.Client
	sqs *sqs.Client
}

// newCloud starts a local cloud (EC2 key pairs, and kumo's S3 and SQS behind it).
func newCloud(t *testing.T) clients {
	t.Helper()
	cloud, err := localcloud.New(localcloud.Options{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cloud.Close() })
	cfg := awsx.ForEndpoint(cloud.URL())
	return clients{ec2: ec2.NewFromConfig(cfg), s3: s3.NewFromConfig(cfg, awsx.S3Options(cfg)), sqs: sqs.NewFromConfig(cfg)}
}

func getObject(t *testing.T, c clients, bucket, key string) (string, s3types.ServerSideEncryption) {
	t.Helper()
	out, err := c.s3.GetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		t.Fatalf("reading s3://%s/%s: %v", bucket, key, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(out.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), out.ServerSideEncryption
}

func TestCreateLoginKeysStoresTheKeyOnceAndReusesIt(t *testing.T) {
	c := newCloud(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	prefix := "lk" + randomHex(3)
	ops := opsconfig.Default()

	loc, err := CreateLoginKeys(ctx, c.ec2, c.s3, prefix, ops)
	if err != nil {
		t.Fatal(err)
	}
	keyName := ops.Templates["demo"].KeyName
	if want := "s3://" + prefix + "-secrets/keys/" + keyName + ".pem"; loc != want {
		t.Fatalf("location = %q, want %q", loc, want)
	}
	pem, sse := getObject(t, c, prefix+"-secrets", "keys/"+keyName+".pem")
	if sse != s3types.ServerSideEncryptionAwsKms {
		t.Errorf("private key stored with SSE %q, want aws:kms", sse)
	}
	signer, err := ssh.ParsePrivateKey([]byte(pem))
	if err != nil {
		t.Fatalf("stored object is not a private key: %v", err)
	}
	pairs, err := c.ec2.DescribeKeyPairs(ctx, &ec2.DescribeKeyPairsInput{KeyNames: []string{keyName}})
	if err != nil || len(pairs.KeyPairs) != 1 {
		t.Fatalf("key pair %s not in EC2: %v %v", keyName, pairs, err)
	}

	// A second run keeps the key pair and the stored key: instances launched with it
	// stay reachable.
	again, err := CreateLoginKeys(ctx, c.ec2, c.s3, prefix, ops)
	if err != nil {
		t.Fatalf("second run: %v", err)
	}
	if again != loc {
		t.Errorf("second run location = %q, want %q", again, loc)
	}
	if pem2, _ := getObject(t, c, prefix+"-secrets", "keys/"+keyName+".pem"); pem2 != pem {
		t.Error("second run replaced the stored private key")
	}
	if string(signer.PublicKey().Type()) != ssh.KeyAlgoED25519 {
		t.Errorf("key type %s, want ed25519", signer.PublicKey().Type())
	}
}

func TestCreateLoginKeysRefuses(t *testing.T) {
	c := newCloud(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("existing key pair without its stored key", func(t *testing.T) {
		prefix := "lk" + randomHex(3)
		ops := opsconfig.Default()
		if _, err := c.ec2.CreateKeyPair(ctx, &ec2.CreateKeyPairInput{KeyName: aws.String(ops.Templates["demo"].KeyName)}); err != nil {
			t.Fatal(err)
		}
		_, err := CreateLoginKeys(ctx, c.ec2, c.s3, prefix, ops)
		if err == nil || !strings.Contains(err.Error(), "exists but its private key is not at s3://"+prefix+"-secrets/") {
			t.Fatalf("want an error naming the missing private key, got %v", err)
		}
	})
	t.Run("templates with different key pairs", func(t *testing.T) {
		ops := opsconfig.Default()
		other := ops.Templates["demo"]
		other.KeyName = "another-key"
		ops.Templates["other"] = other
		_, err := CreateLoginKeys(ctx, c.ec2, c.s3, "lk"+randomHex(3), ops)
		if err == nil || !strings.Contains(err.Error(), "one key pair") || !strings.Contains(err.Error(), "another-key") {
			t.Fatalf("want an error naming both key pairs, got %v", err)
		}
	})
}

func TestSeedDemoTwiceLeavesExactlyNItems(t *testing.T) {
	c := newCloud(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	prefix := "sd" + randomHex(3)
	const n = 23

	for run := 1; run <= 2; run++ {
		d, err := SeedDemo(ctx, c.s3, c.sqs, prefix, n)
		if err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
		if want := DemoFor(prefix); d.Bucket != want.Bucket || d.Queue != want.Queue || len(d.Keys) != n {
			t.Fatalf("run %d: demo in %s and %s with %d keys, want %s and %s with %d", run, d.Bucket, d.Queue, len(d.Keys), want.Bucket, want.Queue, n)
		}
	}
	q, err := c.sqs.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String(prefix + "-demo-work")})
	if err != nil {
		t.Fatal(err)
	}
	attrs, err := c.sqs.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: q.QueueUrl,
		AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameApproximateNumberOfMessages}})
	if err != nil {
		t.Fatal(err)
	}
	if got := attrs.Attributes[string(sqstypes.QueueAttributeNameApproximateNumberOfMessages)]; got != strconv.Itoa(n) {
		t.Errorf("work queue holds %s items after two seeds, want %d", got, n)
	}
	list, err := c.s3.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String(prefix + "-demo"), Prefix: aws.String("input/")})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Contents) != n {
		t.Errorf("bucket holds %d input files, want %d", len(list.Contents), n)
	}
	body, sse := getObject(t, c, prefix+"-demo", "input/file-003.txt")
	if body != "file 3 line 0\nfile 3 line 1\nfile 3 line 2\nfile 3 line 3\n" || sse != s3types.ServerSideEncryptionAwsKms {
		t.Errorf("input/file-003.txt = %q (SSE %q)", body, sse)
	}
}

func TestSeedDemoRefusesAbsurdCounts(t *testing.T) {
	for _, n := range []int{-1, 0, MaxDemoFiles + 1} {
		// The count is checked before any AWS call: nil clients would panic otherwise.
		_, err := SeedDemo(context.Background(), nil, nil, "p", n)
		if err == nil || !strings.Contains(err.Error(), "demo files") {
			t.Errorf("SeedDemo(%d): want a demo files error, got %v", n, err)
		}
	}
}
