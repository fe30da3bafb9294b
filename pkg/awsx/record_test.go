package awsx_test

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	cwtypes "github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
	"github.com/sortie-fleet/sortie/pkg/metrics"
)

// Real calls through the SDK to the local cloud: each is recorded once, as IAM would see it.
func TestRecorder(t *testing.T) {
	cloud := cloudtest.NewCloud(t, localcloud.Options{})
	base := awsx.ForEndpoint(cloud.URL())
	rec := awsx.NewRecorder(localcloud.Account)
	cfg := rec.Wrap(base, "tester")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name := cloudtest.Unique("rec-")
	const R, A = "us-east-1", localcloud.Account

	// Unwrapped clients set things up, unrecorded.
	q, err := sqs.NewFromConfig(base).CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(name)})
	if err != nil {
		t.Fatal(err)
	}
	topic, err := sns.NewFromConfig(base).CreateTopic(ctx, &sns.CreateTopicInput{Name: aws.String(name)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s3.NewFromConfig(base, awsx.S3Options(base)).CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		t.Fatal(err)
	}
	kp := cloudtest.NewKeyPair(t, ec2.NewFromConfig(base), name)

	sqsc, snsc := sqs.NewFromConfig(cfg), sns.NewFromConfig(cfg)
	s3c, ec2c, cwc := s3.NewFromConfig(cfg, awsx.S3Options(cfg)), ec2.NewFromConfig(cfg), metrics.NewClient(cfg)
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(sqsc.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String(name)}))
	must(sqsc.SendMessageBatch(ctx, &sqs.SendMessageBatchInput{QueueUrl: q.QueueUrl,
		Entries: []sqstypes.SendMessageBatchRequestEntry{{Id: aws.String("1"), MessageBody: aws.String("x")}}}))
	must(snsc.Publish(ctx, &sns.PublishInput{TopicArn: topic.TopicArn, Message: aws.String("x")}))
	must(s3c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(name), Key: aws.String("logs/a.tar.gz"),
		Body: strings.NewReader("x"), ServerSideEncryption: s3types.ServerSideEncryptionAwsKms}))
	must(s3c.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String(name), Prefix: aws.String("logs/")}))
	must(s3.NewPresignClient(s3c).PresignGetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(name), Key: aws.String("tools/t")}))
	run, err := ec2c.RunInstances(ctx, &ec2.RunInstancesInput{ImageId: aws.String("ami-0123456789abcdef0"), MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
		KeyName: aws.String(kp.Name), InstanceType: ec2types.InstanceTypeM3Medium,
		TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance,
			Tags: []ec2types.Tag{{Key: aws.String("sortie:stack"), Value: aws.String("st")}}}}})
	if err != nil {
		t.Fatal(err)
	}
	id := aws.ToString(run.Instances[0].InstanceId)
	must(ec2c.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{id},
		Tags: []ec2types.Tag{{Key: aws.String("sortie:stage"), Value: aws.String("done")}}}))
	must(ec2c.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{id}}))
	must(cwc.PutMetricData(ctx, &cloudwatch.PutMetricDataInput{Namespace: aws.String("Sortie"),
		MetricData: []cwtypes.MetricDatum{{MetricName: aws.String("m"), Value: aws.Float64(1)}}}))

	rec.ResourceTags(func(instanceID string) map[string]string {
		if instanceID == id {
			return map[string]string{"sortie:stack": "st"}
		}
		return nil
	})
	inst := "arn:aws:ec2:" + R + ":" + A + ":instance/" + id
	want := []struct {
		action, resource string
		ctx              map[string]string // key => one value it must hold
	}{
		{"sqs:GetQueueUrl", "arn:aws:sqs:" + R + ":" + A + ":" + name, nil},
		{"sqs:SendMessage", "arn:aws:sqs:" + R + ":" + A + ":" + name, nil},
		{"sns:Publish", aws.ToString(topic.TopicArn), nil},
		{"s3:PutObject", "arn:aws:s3:::" + name + "/logs/a.tar.gz", map[string]string{"s3:x-amz-server-side-encryption": "aws:kms"}},
		{"s3:ListBucket", "arn:aws:s3:::" + name, map[string]string{"s3:prefix": "logs/"}},
		{"s3:GetObject", "arn:aws:s3:::" + name + "/tools/t", nil},
		{"ec2:RunInstances", "arn:aws:ec2:" + R + ":" + A + ":instance/*", map[string]string{"aws:RequestTag/sortie:stack": "st"}},
		{"ec2:CreateTags", inst, map[string]string{"aws:RequestTag/sortie:stage": "done", "aws:TagKeys": "sortie:stage", "aws:ResourceTag/sortie:stack": "st"}},
		{"ec2:TerminateInstances", inst, map[string]string{"aws:ResourceTag/sortie:stack": "st"}},
		{"cloudwatch:PutMetricData", "*", map[string]string{"cloudwatch:namespace": "Sortie"}},
	}
	calls := rec.Calls()
	for _, c := range calls {
		if c.Action != "ec2:RunInstances" {
			continue
		}
		for _, r := range []string{"arn:aws:ec2:" + R + "::image/ami-0123456789abcdef0", "arn:aws:ec2:" + R + ":" + A + ":key-pair/" + kp.Name,
			"arn:aws:ec2:" + R + ":" + A + ":network-interface/*"} {
			if !slices.Contains(c.Resources, r) {
				t.Errorf("RunInstances resources %v lack %s", c.Resources, r)
			}
		}
		// An on-demand launch creates no spot instance request (a spot one: see TestRecordSpotLaunch).
		if slices.Contains(c.Resources, "arn:aws:ec2:"+R+":"+A+":spot-instances-request/*") {
			t.Errorf("on-demand RunInstances resources %v name a spot request", c.Resources)
		}
	}
	if len(calls) != len(want) {
		t.Errorf("%d calls recorded, want %d: %+v", len(calls), len(want), calls)
	}
	for i, w := range want {
		if i >= len(calls) {
			break
		}
		c := calls[i]
		if c.Service != "tester" || c.Action != w.action || !slices.Contains(c.Resources, w.resource) {
			t.Errorf("call %d: %s %s on %v, want tester %s on %s", i, c.Service, c.Action, c.Resources, w.action, w.resource)
		}
		for k, v := range w.ctx {
			if !slices.Contains(c.Context[k], v) {
				t.Errorf("call %d (%s): context %s = %v, want %s", i, c.Action, k, c.Context[k], v)
			}
		}
	}
}

// The call log of a separately started process: off unless SORTIE_AWS_CALL_LOG is set.
func TestCallLog(t *testing.T) {
	cloud := cloudtest.NewCloud(t, localcloud.Options{})
	t.Setenv("AWS_ENDPOINT_URL", cloud.URL())
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_ACCESS_KEY_ID", "test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "test")
	t.Setenv(awsx.EnvRoleARN, "")
	ctx := context.Background()
	name := cloudtest.Unique("calllog-")

	t.Setenv(awsx.EnvCallLog, "")
	off, err := awsx.Load(ctx, "off")
	if err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(t.TempDir(), "calls.jsonl")
	t.Setenv(awsx.EnvCallLog, log)
	on, err := awsx.Load(ctx, "worker")
	if err != nil {
		t.Fatal(err)
	}
	for _, cfg := range []aws.Config{off, on} {
		if _, err := sqs.NewFromConfig(cfg).CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(name)}); err != nil {
			t.Fatal(err)
		}
	}
	calls, err := awsx.ReadCallLog(log)
	if err != nil {
		t.Fatal(err)
	}
	if len(calls) != 1 || calls[0].Service != "worker" || calls[0].Action != "sqs:CreateQueue" {
		t.Fatalf("call log %+v, want the one CreateQueue of the config loaded with %s set", calls, awsx.EnvCallLog)
	}
	// Queue named without an account: the checker supplies it.
	if got := calls[0].WithAccount(localcloud.Account).Resources; !slices.Equal(got, []string{"arn:aws:sqs:us-east-1:" + localcloud.Account + ":" + name}) {
		t.Errorf("resources %v", got)
	}
}

// A spot launch is authorised on the spot instance request it creates, too.
func TestRecordSpotLaunch(t *testing.T) {
	cloud := cloudtest.NewCloud(t, localcloud.Options{})
	rec := awsx.NewRecorder(localcloud.Account)
	ec2c := ec2.NewFromConfig(rec.Wrap(awsx.ForEndpoint(cloud.URL()), "tester"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := ec2c.RunInstances(ctx, &ec2.RunInstancesInput{ImageId: aws.String("ami-0123456789abcdef0"), MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
		InstanceType:          ec2types.InstanceTypeM3Medium,
		InstanceMarketOptions: &ec2types.InstanceMarketOptionsRequest{MarketType: ec2types.MarketTypeSpot},
	}); err != nil {
		t.Fatal(err)
	}
	calls := rec.Calls()
	want := "arn:aws:ec2:us-east-1:" + localcloud.Account + ":spot-instances-request/*"
	if len(calls) != 1 || calls[0].Action != "ec2:RunInstances" || !slices.Contains(calls[0].Resources, want) {
		t.Fatalf("calls %+v, want one RunInstances on %s", calls, want)
	}
}
