package localcloud

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"

	"github.com/sortie-fleet/sortie/pkg/awsx"
)

// Everything that is not one of the local cloud's EC2 actions reaches kumo unchanged.
func TestProxyToKumo(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{})
	cfg := awsx.ForEndpoint(c.URL())
	ctx := ctxT(t)
	suffix := newID("")

	t.Run("s3 path-style put and get", func(t *testing.T) {
		client := s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true })
		bucket := "lc-proxy-" + suffix
		if _, err := client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
			t.Fatal(err)
		}
		if _, err := client.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String("logs/i-1.log.gz"), Body: strings.NewReader("log line\n")}); err != nil {
			t.Fatal(err)
		}
		out, err := client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String("logs/i-1.log.gz")})
		if err != nil {
			t.Fatal(err)
		}
		defer out.Body.Close()
		if b, _ := io.ReadAll(out.Body); string(b) != "log line\n" {
			t.Errorf("object = %q", b)
		}
	})

	t.Run("s3 virtual-hosted style keeps its Host header", func(t *testing.T) {
		// bucket.localhost:PORT resolves to the cloud's listener; kumo finds the bucket in
		// the Host header, so the proxy must pass it on unchanged.
		addr := strings.TrimPrefix(c.URL(), "http://")
		_, port, _ := net.SplitHostPort(addr)
		dialer := &net.Dialer{}
		vcfg := awsx.ForEndpoint("http://localhost:" + port)
		vcfg.HTTPClient = &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return dialer.DialContext(ctx, network, addr)
			},
		}}
		client := s3.NewFromConfig(vcfg)
		bucket := "lc-vhost-" + suffix
		if _, err := client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
			t.Fatal(err)
		}
		if _, err := client.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String("k"), Body: strings.NewReader("v")}); err != nil {
			t.Fatal(err)
		}
		pathStyle := s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true })
		out, err := pathStyle.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String("k")})
		if err != nil {
			t.Fatalf("reading the virtual-hosted upload path-style: %v", err)
		}
		defer out.Body.Close()
		if b, _ := io.ReadAll(out.Body); string(b) != "v" {
			t.Errorf("object = %q", b)
		}
	})

	t.Run("sqs send and receive", func(t *testing.T) {
		client := sqs.NewFromConfig(cfg)
		q, err := client.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String("lc-proxy-" + suffix)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := client.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: q.QueueUrl, MessageBody: aws.String(`{"job_id":"j1"}`)}); err != nil {
			t.Fatal(err)
		}
		out, err := client.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: q.QueueUrl, WaitTimeSeconds: 1})
		if err != nil {
			t.Fatal(err)
		}
		if len(out.Messages) != 1 || aws.ToString(out.Messages[0].Body) != `{"job_id":"j1"}` {
			t.Errorf("received %+v", out.Messages)
		}
	})

	t.Run("sns query protocol", func(t *testing.T) {
		client := sns.NewFromConfig(cfg)
		topic, err := client.CreateTopic(ctx, &sns.CreateTopicInput{Name: aws.String("lc-proxy-" + suffix)})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(aws.ToString(topic.TopicArn), "lc-proxy-"+suffix) {
			t.Errorf("topic arn = %s", aws.ToString(topic.TopicArn))
		}
		if _, err := client.Publish(ctx, &sns.PublishInput{TopicArn: topic.TopicArn, Message: aws.String("hi")}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("sts", func(t *testing.T) {
		out, err := sts.NewFromConfig(cfg).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
		if err != nil {
			t.Fatal(err)
		}
		if aws.ToString(out.Account) != ownerID {
			t.Errorf("account = %s", aws.ToString(out.Account))
		}
	})

	t.Run("ec2 actions the local cloud does not implement get an EC2 error", func(t *testing.T) {
		client, _ := ec2Client(t, c)
		_, err := client.AllocateAddress(ctx, &ec2.AllocateAddressInput{})
		var apiErr smithy.APIError
		if !errors.As(err, &apiErr) || apiErr.ErrorCode() != "InvalidAction" {
			t.Fatalf("AllocateAddress: %v, want InvalidAction parsed by the SDK", err)
		}
	})
}

func sgTag(g types.SecurityGroup, key string) (string, bool) {
	for _, tag := range g.Tags {
		if aws.ToString(tag.Key) == key {
			return aws.ToString(tag.Value), true
		}
	}
	return "", false
}

// A request without a SigV4 scope is recognised as EC2 by its action and version.
func TestUnsignedEC2Request(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{})
	form := url.Values{"Action": {"DescribeInstances"}, "Version": {ec2Version}}
	resp, err := http.Post(c.URL(), "application/x-www-form-urlencoded; charset=utf-8", bytes.NewBufferString(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc struct {
		XMLName   xml.Name
		RequestID string `xml:"requestId"`
	}
	body, _ := io.ReadAll(resp.Body)
	if err := xml.Unmarshal(body, &doc); err != nil {
		t.Fatalf("response %q: %v", body, err)
	}
	if resp.StatusCode != 200 || doc.XMLName.Local != "DescribeInstancesResponse" || doc.XMLName.Space != ec2Namespace || doc.RequestID == "" {
		t.Errorf("status %d, document %s in %q, request id %q", resp.StatusCode, doc.XMLName.Local, doc.XMLName.Space, doc.RequestID)
	}
}

func TestSigningName(t *testing.T) {
	tests := []struct {
		name, auth, query, want string
	}{
		{"ec2", "AWS4-HMAC-SHA256 Credential=AKID/20261126/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=abc", "", "ec2"},
		{"sns", "AWS4-HMAC-SHA256 Credential=AKID/20261126/us-east-1/sns/aws4_request,SignedHeaders=host,Signature=abc", "", "sns"},
		{"presigned", "", "X-Amz-Credential=AKID%2F20261126%2Fus-east-1%2Fs3%2Faws4_request", "s3"},
		{"unsigned", "", "", ""},
		{"garbage", "Bearer token", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _ := http.NewRequest(http.MethodGet, "http://x/?"+tt.query, nil)
			if tt.auth != "" {
				r.Header.Set("Authorization", tt.auth)
			}
			if got := signingName(r); got != tt.want {
				t.Errorf("signingName = %q, want %q", got, tt.want)
			}
		})
	}
}

// Errors come back as EC2's error document: Response/Errors/Error with Code and Message,
// RequestID, and the HTTP status AWS uses.
func TestErrorDocument(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{})
	form := url.Values{"Action": {"TerminateInstances"}, "Version": {ec2Version}, "InstanceId.1": {"i-0123456789abcdef0"}}
	resp, err := http.Post(c.URL(), "application/x-www-form-urlencoded", bytes.NewBufferString(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var doc struct {
		XMLName xml.Name `xml:"Response"`
		Errors  []struct {
			Code    string `xml:"Code"`
			Message string `xml:"Message"`
		} `xml:"Errors>Error"`
		RequestID string `xml:"RequestID"`
	}
	if err := xml.Unmarshal(body, &doc); err != nil {
		t.Fatalf("error body %q: %v", body, err)
	}
	if resp.StatusCode != http.StatusBadRequest || len(doc.Errors) != 1 || doc.RequestID == "" ||
		doc.Errors[0].Code != "InvalidInstanceID.NotFound" ||
		doc.Errors[0].Message != "The instance ID 'i-0123456789abcdef0' does not exist" {
		t.Errorf("status %d, body %s", resp.StatusCode, body)
	}
}
