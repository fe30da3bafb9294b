package infra

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	snstypes "github.com/aws/aws-sdk-go-v2/service/sns/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/sivchari/kumo"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
)

// stack is one kumo server and the typed clients the assertions use.
type stack struct {
	c   Clients
	sns *sns.Client
	sqs *sqs.Client
	s3  *s3.Client
}

func newStack(t *testing.T) stack {
	t.Helper()
	srv := kumo.NewServer()
	t.Cleanup(srv.Close)
	c := NewClients(awsx.ForEndpoint(srv.URL))
	return stack{c: c, sns: c.SNS.(*sns.Client), sqs: c.SQS.(*sqs.Client), s3: c.S3.(*s3.Client)}
}

// uniquePrefix returns a fresh stack prefix: kumo's state is global to the process.
func uniquePrefix(t *testing.T) string {
	t.Helper()
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "t" + hex.EncodeToString(b)
}

// resource is a report line without its detail.
type resource struct {
	Kind Kind
	Name string
}

// upResources is every resource Up must report for topo, in order.
func upResources(topo bus.Topology) []resource {
	var out []resource
	for _, et := range bus.EventTypes {
		out = append(out, resource{KindTopic, topo.TopicName(et)}, resource{KindTopicPolicy, topo.TopicName(et)})
	}
	for _, s := range topo.Subscriptions() {
		out = append(out, resource{KindDLQ, s.DLQ}, resource{KindQueue, s.Queue}, resource{KindSubscription, s.Topic + " -> " + s.Queue})
	}
	for _, svc := range bus.TimerServices {
		q := topo.TimerQueueName(svc)
		out = append(out, resource{KindDLQ, bus.DLQName(q)}, resource{KindTimerQueue, q})
	}
	rule, q := topo.EC2EventsRuleName(), topo.EC2EventsQueueName()
	out = append(out, resource{KindRule, rule}, resource{KindDLQ, bus.DLQName(q)}, resource{KindEventsQueue, q}, resource{KindRuleTarget, rule + " -> " + q})
	out = append(out, resource{KindTable, topo.LedgerTableName()}, resource{KindTableTTL, topo.LedgerTableName()})
	for _, b := range []string{topo.BucketName(), topo.SecretsBucketName()} {
		out = append(out, resource{KindBucket, b}, resource{KindBucketEncryption, b}, resource{KindPublicAccessBlock, b}, resource{KindBucketPolicy, b})
	}
	return out
}

// queueNames is every queue of topo: consuming queues, timer queues and their DLQs.
func queueNames(topo bus.Topology) []string {
	var out []string
	for _, s := range topo.Subscriptions() {
		out = append(out, s.Queue, s.DLQ)
	}
	for _, svc := range bus.TimerServices {
		out = append(out, topo.TimerQueueName(svc), bus.DLQName(topo.TimerQueueName(svc)))
	}
	out = append(out, topo.EC2EventsQueueName(), bus.DLQName(topo.EC2EventsQueueName()))
	slices.Sort(out)
	return out
}

func resources(r Report) []resource {
	out := make([]resource, len(r.Lines))
	for i, l := range r.Lines {
		out[i] = resource{l.Kind, l.Name}
	}
	return out
}

// wantAll fails unless every line of r has action a.
func wantAll(t *testing.T, r Report, a Action) {
	t.Helper()
	if n := r.Count(a); n != len(r.Lines) || n == 0 {
		t.Errorf("want every line %s, got:\n%s", a, r)
	}
}

func up(t *testing.T, s stack, topo bus.Topology) Report {
	t.Helper()
	r, err := Up(context.Background(), s.c, topo)
	if err != nil {
		t.Fatalf("Up: %v\n%s", err, r)
	}
	return r
}

func down(t *testing.T, s stack, topo bus.Topology, opts ...DownOptions) Report {
	t.Helper()
	r, err := Down(context.Background(), s.c, topo, opts...)
	if err != nil {
		t.Fatalf("Down: %v\n%s", err, r)
	}
	return r
}

func (s stack) queueURL(t *testing.T, name string) string {
	t.Helper()
	out, err := s.sqs.GetQueueUrl(context.Background(), &sqs.GetQueueUrlInput{QueueName: aws.String(name)})
	if err != nil {
		t.Fatalf("GetQueueUrl %s: %v", name, err)
	}
	return aws.ToString(out.QueueUrl)
}

func (s stack) queueAttributes(t *testing.T, name string) map[string]string {
	t.Helper()
	out, err := s.sqs.GetQueueAttributes(context.Background(), &sqs.GetQueueAttributesInput{
		QueueUrl: aws.String(s.queueURL(t, name)), AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameAll},
	})
	if err != nil {
		t.Fatalf("GetQueueAttributes %s: %v", name, err)
	}
	return out.Attributes
}

// settings drops the attributes that change by themselves (timestamps, message counts).
func settings(attrs map[string]string) map[string]string {
	out := make(map[string]string)
	for k, v := range attrs {
		if !strings.HasSuffix(k, "Timestamp") && !strings.HasPrefix(k, "ApproximateNumberOfMessages") {
			out[k] = v
		}
	}
	return out
}

func (s stack) topicARNs(t *testing.T) map[string]string {
	t.Helper()
	m, err := listTopics(context.Background(), s.sns)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// queuesWithPrefix lists the names of the queues whose name starts with prefix.
func (s stack) queuesWithPrefix(t *testing.T, prefix string) []string {
	t.Helper()
	out, err := s.sqs.ListQueues(context.Background(), &sqs.ListQueuesInput{QueueNamePrefix: aws.String(prefix)})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, u := range out.QueueUrls {
		names = append(names, u[strings.LastIndex(u, "/")+1:])
	}
	slices.Sort(names)
	return names
}

func (s stack) buckets(t *testing.T) []string {
	t.Helper()
	out, err := s.s3.ListBuckets(context.Background(), &s3.ListBucketsInput{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, b := range out.Buckets {
		names = append(names, aws.ToString(b.Name))
	}
	return names
}

func withPrefix(names []string, prefix string) []string {
	var out []string
	for _, n := range names {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	return out
}

func TestUpCreatesEveryResource(t *testing.T) {
	ctx := context.Background()
	s := newStack(t)
	topo := bus.Topology{Prefix: uniquePrefix(t)}

	r := up(t, s, topo)
	wantAll(t, r, Created)
	if got, want := resources(r), upResources(topo); !slices.Equal(got, want) {
		t.Errorf("report resources:\n got %v\nwant %v", got, want)
	}

	topics := s.topicARNs(t)
	for _, et := range bus.EventTypes {
		if topics[topo.TopicName(et)] == "" {
			t.Errorf("topic %s missing", topo.TopicName(et))
		}
	}
	if got, want := s.queuesWithPrefix(t, topo.Prefix+"-"), queueNames(topo); !slices.Equal(got, want) {
		t.Errorf("queues:\n got %v\nwant %v", got, want)
	}

	checkQueue := func(t *testing.T, queue, dlq, topicARN string) {
		t.Helper()
		q, d := s.queueAttributes(t, queue), s.queueAttributes(t, dlq)
		redrive, _ := RedrivePolicy(d["QueueArn"], 5)
		if q["RedrivePolicy"] != string(redrive) {
			t.Errorf("%s RedrivePolicy = %s, want %s", queue, q["RedrivePolicy"], redrive)
		}
		for k, want := range map[string]string{"VisibilityTimeout": "60", "MessageRetentionPeriod": "345600", "ReceiveMessageWaitTimeSeconds": "20"} {
			if q[k] != want {
				t.Errorf("%s %s = %s, want %s", queue, k, q[k], want)
			}
		}
		for k, want := range map[string]string{"VisibilityTimeout": "60", "MessageRetentionPeriod": "1209600", "ReceiveMessageWaitTimeSeconds": "20"} {
			if d[k] != want {
				t.Errorf("%s %s = %s, want %s", dlq, k, d[k], want)
			}
		}
		if d["RedrivePolicy"] != "" || d["Policy"] != "" {
			t.Errorf("DLQ %s has a redrive policy %q or policy %q", dlq, d["RedrivePolicy"], d["Policy"])
		}
		if topicARN == "" {
			if q["Policy"] != "" {
				t.Errorf("timer queue %s has a policy: %s", queue, q["Policy"])
			}
			return
		}
		policy, _ := QueuePolicy(q["QueueArn"], topicARN)
		if q["Policy"] != string(policy) {
			t.Errorf("%s Policy = %s, want %s", queue, q["Policy"], policy)
		}
	}

	for _, sub := range topo.Subscriptions() {
		t.Run(sub.Queue, func(t *testing.T) {
			topicARN := topics[sub.Topic]
			checkQueue(t, sub.Queue, sub.DLQ, topicARN)
			out, err := s.sns.ListSubscriptionsByTopic(ctx, &sns.ListSubscriptionsByTopicInput{TopicArn: aws.String(topicARN)})
			if err != nil {
				t.Fatal(err)
			}
			// One subscription per consuming service (InstanceLost has two).
			if n := len(bus.Consumers[sub.EventType]); len(out.Subscriptions) != n {
				t.Fatalf("topic %s has %d subscriptions, want %d", sub.Topic, len(out.Subscriptions), n)
			}
			queueARN := s.queueAttributes(t, sub.Queue)["QueueArn"]
			i := slices.IndexFunc(out.Subscriptions, func(s snstypes.Subscription) bool { return aws.ToString(s.Endpoint) == queueARN })
			if i < 0 {
				t.Fatalf("no subscription of %s to %s", sub.Topic, queueARN)
			}
			got := out.Subscriptions[i]
			if aws.ToString(got.Protocol) != "sqs" {
				t.Errorf("subscription %s → %s, want sqs → the queue's ARN", aws.ToString(got.Protocol), aws.ToString(got.Endpoint))
			}
			attrs, err := s.sns.GetSubscriptionAttributes(ctx, &sns.GetSubscriptionAttributesInput{SubscriptionArn: got.SubscriptionArn})
			if err != nil {
				t.Fatal(err)
			}
			if attrs.Attributes["RawMessageDelivery"] != "true" {
				t.Errorf("RawMessageDelivery = %q, want true", attrs.Attributes["RawMessageDelivery"])
			}
		})
	}
	for _, svc := range bus.TimerServices {
		q := topo.TimerQueueName(svc)
		t.Run(q, func(t *testing.T) { checkQueue(t, q, bus.DLQName(q), "") })
	}

	t.Run("fleet-terminated has no consumer queue", func(t *testing.T) {
		out, err := s.sns.ListSubscriptionsByTopic(ctx, &sns.ListSubscriptionsByTopicInput{TopicArn: aws.String(topics[topo.TopicName(bus.FleetTerminated)])})
		if err != nil {
			t.Fatal(err)
		}
		if len(out.Subscriptions) != 0 {
			t.Errorf("got %d subscriptions, want none", len(out.Subscriptions))
		}
	})

	t.Run("bucket", func(t *testing.T) {
		bucket := topo.BucketName()
		if !slices.Contains(s.buckets(t), bucket) {
			t.Fatalf("bucket %s missing", bucket)
		}
		enc, err := s.s3.GetBucketEncryption(ctx, &s3.GetBucketEncryptionInput{Bucket: aws.String(bucket)})
		if err != nil {
			t.Fatal(err)
		}
		rules := enc.ServerSideEncryptionConfiguration.Rules
		if len(rules) != 1 || rules[0].ApplyServerSideEncryptionByDefault == nil ||
			rules[0].ApplyServerSideEncryptionByDefault.SSEAlgorithm != s3types.ServerSideEncryptionAwsKms || !aws.ToBool(rules[0].BucketKeyEnabled) {
			t.Errorf("encryption = %+v, want one aws:kms rule with BucketKeyEnabled", rules)
		}
		pab, err := s.s3.GetPublicAccessBlock(ctx, &s3.GetPublicAccessBlockInput{Bucket: aws.String(bucket)})
		if err != nil {
			t.Fatal(err)
		}
		if d := publicAccessDrift(pab.PublicAccessBlockConfiguration); d != "" {
			t.Errorf("public access block: %s", d)
		}
		pol, err := s.s3.GetBucketPolicy(ctx, &s3.GetBucketPolicyInput{Bucket: aws.String(bucket)})
		if err != nil {
			t.Fatal(err)
		}
		want, _ := BucketPolicy(bucket)
		if aws.ToString(pol.Policy) != string(want) {
			t.Errorf("bucket policy = %s, want %s", aws.ToString(pol.Policy), want)
		}
	})
}

func TestUpWiresTopicsToQueues(t *testing.T) {
	ctx := context.Background()
	s := newStack(t)
	topo := bus.Topology{Prefix: uniquePrefix(t)}
	up(t, s, topo)
	topics := s.topicARNs(t)

	// One message per topic reaches every queue subscribed to it (InstanceLost's two).
	published := map[string]bool{}
	for _, sub := range topo.Subscriptions() {
		t.Run(sub.Queue, func(t *testing.T) {
			body := fmt.Sprintf(`{"schema_version":1,"job_id":"job-%s"}`, sub.Topic)
			if !published[sub.Topic] {
				published[sub.Topic] = true
				if _, err := s.sns.Publish(ctx, &sns.PublishInput{TopicArn: aws.String(topics[sub.Topic]), Message: aws.String(body)}); err != nil {
					t.Fatal(err)
				}
			}
			out, err := s.sqs.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: aws.String(s.queueURL(t, sub.Queue)), MaxNumberOfMessages: 10, WaitTimeSeconds: 2})
			if err != nil {
				t.Fatal(err)
			}
			// A topic with several consumers (InstanceLost) delivers its other subtests'
			// bodies here too: this queue must hold this body, raw, once, and nothing else
			// but those.
			n := 0
			for _, m := range out.Messages {
				b := aws.ToString(m.Body)
				if b == body {
					n++
					continue
				}
				if !slices.ContainsFunc(topo.Subscriptions(), func(o bus.Subscription) bool {
					return o.Topic == sub.Topic && b == fmt.Sprintf(`{"schema_version":1,"job_id":"job-%s"}`, o.Queue)
				}) {
					t.Errorf("received %s, not a message of topic %s", b, sub.Topic)
				}
			}
			if n != 1 {
				t.Fatalf("received %d × the raw body %s, want it exactly once", n, body)
			}
		})
	}

	t.Run("redrive after five receives", func(t *testing.T) {
		sub := topo.Subscriptions()[0]
		if _, err := s.sns.Publish(ctx, &sns.PublishInput{TopicArn: aws.String(topics[sub.Topic]), Message: aws.String("poison")}); err != nil {
			t.Fatal(err)
		}
		url := s.queueURL(t, sub.Queue)
		receives := 0
		for range 10 {
			// WaitTimeSeconds 1: the queue's default long poll is 20 s, and a zero is not sent.
			out, err := s.sqs.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: aws.String(url), WaitTimeSeconds: 1})
			if err != nil {
				t.Fatal(err)
			}
			if len(out.Messages) == 0 {
				break
			}
			receives++
			// Back at once, as if every handler failed.
			if _, err := s.sqs.ChangeMessageVisibility(ctx, &sqs.ChangeMessageVisibilityInput{
				QueueUrl: aws.String(url), ReceiptHandle: out.Messages[0].ReceiptHandle, VisibilityTimeout: 0,
			}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(2 * time.Millisecond)
		}
		if receives != bus.MaxReceiveCount {
			t.Errorf("received %d times before redrive, want %d", receives, bus.MaxReceiveCount)
		}
		out, err := s.sqs.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: aws.String(s.queueURL(t, sub.DLQ)), WaitTimeSeconds: 1})
		if err != nil {
			t.Fatal(err)
		}
		if len(out.Messages) != 1 || aws.ToString(out.Messages[0].Body) != "poison" {
			t.Errorf("DLQ holds %+v, want the poison message", out.Messages)
		}
	})
}

func TestUpTwiceChangesNothing(t *testing.T) {
	s := newStack(t)
	topo := bus.Topology{Prefix: uniquePrefix(t)}
	up(t, s, topo)
	before := make(map[string]map[string]string)
	for _, q := range queueNames(topo) {
		before[q] = settings(s.queueAttributes(t, q))
	}

	r := up(t, s, topo)
	wantAll(t, r, Exists)
	if got, want := resources(r), upResources(topo); !slices.Equal(got, want) {
		t.Errorf("report resources:\n got %v\nwant %v", got, want)
	}
	for _, q := range queueNames(topo) {
		if after := settings(s.queueAttributes(t, q)); fmt.Sprint(after) != fmt.Sprint(before[q]) {
			t.Errorf("%s changed:\n before %v\n after  %v", q, before[q], after)
		}
	}
	topics := s.topicARNs(t)
	for _, sub := range topo.Subscriptions() {
		out, err := s.sns.ListSubscriptionsByTopic(context.Background(), &sns.ListSubscriptionsByTopicInput{TopicArn: aws.String(topics[sub.Topic])})
		if err != nil {
			t.Fatal(err)
		}
		if n := len(bus.Consumers[sub.EventType]); len(out.Subscriptions) != n {
			t.Errorf("topic %s has %d subscriptions after a second up, want %d", sub.Topic, len(out.Subscriptions), n)
		}
	}
}

func TestUpRepairsDrift(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name   string
		kind   Kind
		target func(bus.Topology) string
		drift  func(t *testing.T, s stack, target string)
		check  func(t *testing.T, s stack, target string)
	}{
		{
			name: "queue visibility timeout", kind: KindQueue,
			target: func(topo bus.Topology) string { return topo.Subscriptions()[0].Queue },
			drift:  setQueueAttribute("VisibilityTimeout", "5"),
			check:  wantQueueAttribute("VisibilityTimeout", "60"),
		},
		{
			name: "dlq retention", kind: KindDLQ,
			target: func(topo bus.Topology) string { return topo.Subscriptions()[2].DLQ },
			drift:  setQueueAttribute("MessageRetentionPeriod", "60"),
			check:  wantQueueAttribute("MessageRetentionPeriod", "1209600"),
		},
		{
			name: "timer queue redrive policy", kind: KindTimerQueue,
			target: func(topo bus.Topology) string { return topo.TimerQueueName(bus.Reaper) },
			drift: func(t *testing.T, s stack, q string) {
				t.Helper()
				rp, _ := RedrivePolicy(s.queueAttributes(t, bus.DLQName(q))["QueueArn"], 50)
				setQueueAttribute("RedrivePolicy", string(rp))(t, s, q)
			},
			check: func(t *testing.T, s stack, q string) {
				t.Helper()
				rp, _ := RedrivePolicy(s.queueAttributes(t, bus.DLQName(q))["QueueArn"], 5)
				wantQueueAttribute("RedrivePolicy", string(rp))(t, s, q)
			},
		},
		{
			name: "queue policy", kind: KindQueue,
			target: func(topo bus.Topology) string { return topo.Subscriptions()[1].Queue },
			drift: func(t *testing.T, s stack, q string) {
				t.Helper()
				p, _ := QueuePolicy(s.queueAttributes(t, q)["QueueArn"], "arn:aws:sns:us-east-1:000000000000:someone-else")
				setQueueAttribute("Policy", string(p))(t, s, q)
			},
			check: func(t *testing.T, s stack, q string) {
				t.Helper()
				if p := s.queueAttributes(t, q)["Policy"]; strings.Contains(p, "someone-else") {
					t.Errorf("policy still names the foreign topic: %s", p)
				}
			},
		},
		{
			name: "subscription raw delivery", kind: KindSubscription,
			target: func(topo bus.Topology) string {
				sub := topo.Subscriptions()[0]
				return sub.Topic + " -> " + sub.Queue
			},
			drift: func(t *testing.T, s stack, name string) {
				t.Helper()
				setRaw(t, s, name, "false")
			},
			check: func(t *testing.T, s stack, name string) {
				t.Helper()
				if got := getRaw(t, s, name); got != "true" {
					t.Errorf("RawMessageDelivery = %s, want true", got)
				}
			},
		},
		{
			name: "bucket policy", kind: KindBucketPolicy,
			target: func(topo bus.Topology) string { return topo.BucketName() },
			drift: func(t *testing.T, s stack, b string) {
				t.Helper()
				if _, err := s.s3.PutBucketPolicy(ctx, &s3.PutBucketPolicyInput{Bucket: aws.String(b), Policy: aws.String(`{"Version":"2012-10-17","Statement":[]}`)}); err != nil {
					t.Fatal(err)
				}
			},
			check: func(t *testing.T, s stack, b string) {
				t.Helper()
				out, err := s.s3.GetBucketPolicy(ctx, &s3.GetBucketPolicyInput{Bucket: aws.String(b)})
				if err != nil {
					t.Fatal(err)
				}
				if want, _ := BucketPolicy(b); aws.ToString(out.Policy) != string(want) {
					t.Errorf("bucket policy = %s", aws.ToString(out.Policy))
				}
			},
		},
		{
			name: "bucket encryption", kind: KindBucketEncryption,
			target: func(topo bus.Topology) string { return topo.BucketName() },
			drift: func(t *testing.T, s stack, b string) {
				t.Helper()
				if _, err := s.s3.PutBucketEncryption(ctx, &s3.PutBucketEncryptionInput{Bucket: aws.String(b), ServerSideEncryptionConfiguration: &s3types.ServerSideEncryptionConfiguration{
					Rules: []s3types.ServerSideEncryptionRule{{ApplyServerSideEncryptionByDefault: &s3types.ServerSideEncryptionByDefault{SSEAlgorithm: s3types.ServerSideEncryptionAes256}}},
				}}); err != nil {
					t.Fatal(err)
				}
			},
			check: func(t *testing.T, s stack, b string) {
				t.Helper()
				out, err := s.s3.GetBucketEncryption(ctx, &s3.GetBucketEncryptionInput{Bucket: aws.String(b)})
				if err != nil {
					t.Fatal(err)
				}
				if d := encryptionDrift(out.ServerSideEncryptionConfiguration, ""); d != "" {
					t.Errorf("encryption still drifted: %s", d)
				}
			},
		},
		{
			name: "public access block", kind: KindPublicAccessBlock,
			target: func(topo bus.Topology) string { return topo.BucketName() },
			drift: func(t *testing.T, s stack, b string) {
				t.Helper()
				if _, err := s.s3.PutPublicAccessBlock(ctx, &s3.PutPublicAccessBlockInput{Bucket: aws.String(b), PublicAccessBlockConfiguration: &s3types.PublicAccessBlockConfiguration{
					BlockPublicAcls: aws.Bool(true), IgnorePublicAcls: aws.Bool(true), BlockPublicPolicy: aws.Bool(false), RestrictPublicBuckets: aws.Bool(false),
				}}); err != nil {
					t.Fatal(err)
				}
			},
			check: func(t *testing.T, s stack, b string) {
				t.Helper()
				out, err := s.s3.GetPublicAccessBlock(ctx, &s3.GetPublicAccessBlockInput{Bucket: aws.String(b)})
				if err != nil {
					t.Fatal(err)
				}
				if d := publicAccessDrift(out.PublicAccessBlockConfiguration); d != "" {
					t.Errorf("public access block still drifted: %s", d)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStack(t)
			topo := bus.Topology{Prefix: uniquePrefix(t)}
			up(t, s, topo)
			target := tt.target(topo)
			tt.drift(t, s, target)

			r := up(t, s, topo)
			var updated []Line
			for _, l := range r.Lines {
				if l.Action == Updated {
					updated = append(updated, l)
				}
			}
			if len(updated) != 1 || updated[0].Kind != tt.kind || updated[0].Name != target || updated[0].Detail == "" {
				t.Fatalf("want exactly %s %s updated with a reason, got:\n%s", tt.kind, target, r)
			}
			if r.Count(Exists) != len(r.Lines)-1 {
				t.Errorf("want every other line exists, got:\n%s", r)
			}
			tt.check(t, s, target)
			wantAll(t, up(t, s, topo), Exists)
		})
	}
}

func TestUpReportsDriftDetail(t *testing.T) {
	s := newStack(t)
	topo := bus.Topology{Prefix: uniquePrefix(t)}
	up(t, s, topo)
	q := topo.Subscriptions()[0].Queue
	setQueueAttribute("VisibilityTimeout", "5")(t, s, q)
	r := up(t, s, topo)
	i := slices.IndexFunc(r.Lines, func(l Line) bool { return l.Name == q })
	if want := (Line{Updated, KindQueue, q, "VisibilityTimeout 5→60"}); r.Lines[i] != want {
		t.Errorf("line = %+v, want %+v", r.Lines[i], want)
	}
}

func setQueueAttribute(k, v string) func(*testing.T, stack, string) {
	return func(t *testing.T, s stack, q string) {
		t.Helper()
		if _, err := s.sqs.SetQueueAttributes(context.Background(), &sqs.SetQueueAttributesInput{QueueUrl: aws.String(s.queueURL(t, q)), Attributes: map[string]string{k: v}}); err != nil {
			t.Fatal(err)
		}
	}
}

func wantQueueAttribute(k, want string) func(*testing.T, stack, string) {
	return func(t *testing.T, s stack, q string) {
		t.Helper()
		if got := s.queueAttributes(t, q)[k]; got != want {
			t.Errorf("%s %s = %s, want %s", q, k, got, want)
		}
	}
}

// subscriptionARN finds the subscription named "topic -> queue".
func subscriptionARN(t *testing.T, s stack, name string) *string {
	t.Helper()
	topic, queue, _ := strings.Cut(name, " -> ")
	out, err := s.sns.ListSubscriptionsByTopic(context.Background(), &sns.ListSubscriptionsByTopicInput{TopicArn: aws.String(s.topicARNs(t)[topic])})
	if err != nil {
		t.Fatal(err)
	}
	for _, sub := range out.Subscriptions {
		if strings.HasSuffix(aws.ToString(sub.Endpoint), ":"+queue) {
			return sub.SubscriptionArn
		}
	}
	t.Fatalf("no subscription %s", name)
	return nil
}

func setRaw(t *testing.T, s stack, name, v string) {
	t.Helper()
	if _, err := s.sns.SetSubscriptionAttributes(context.Background(), &sns.SetSubscriptionAttributesInput{
		SubscriptionArn: subscriptionARN(t, s, name), AttributeName: aws.String("RawMessageDelivery"), AttributeValue: aws.String(v),
	}); err != nil {
		t.Fatal(err)
	}
}

func getRaw(t *testing.T, s stack, name string) string {
	t.Helper()
	out, err := s.sns.GetSubscriptionAttributes(context.Background(), &sns.GetSubscriptionAttributesInput{SubscriptionArn: subscriptionARN(t, s, name)})
	if err != nil {
		t.Fatal(err)
	}
	return out.Attributes["RawMessageDelivery"]
}

func TestDownRemovesOnlyItsStack(t *testing.T) {
	s := newStack(t)
	prefix := uniquePrefix(t)
	mine := bus.Topology{Prefix: prefix}
	// The other stack's names all start with mine's prefix: Down must go by exact names,
	// not by listing a prefix.
	other := bus.Topology{Prefix: prefix + "-b"}
	up(t, s, mine)
	up(t, s, other)

	r := down(t, s, mine)
	wantAll(t, r, Deleted)
	if got, want := len(r.Lines), len(topoNames(mine)); got != want {
		t.Errorf("down reported %d lines, want %d:\n%s", got, want, r)
	}
	for kind, names := range map[string][]string{
		"topic":  slices.Collect(maps.Keys(s.topicARNs(t))),
		"queue":  s.queuesWithPrefix(t, prefix),
		"bucket": s.buckets(t),
	} {
		for _, n := range withPrefix(names, prefix+"-") {
			if !strings.HasPrefix(n, other.Prefix+"-") {
				t.Errorf("%s %s survived down", kind, n)
			}
		}
	}

	// The other stack is whole and still wired.
	wantAll(t, up(t, s, other), Exists)
	sub := other.Subscriptions()[0]
	if _, err := s.sns.Publish(context.Background(), &sns.PublishInput{TopicArn: aws.String(s.topicARNs(t)[sub.Topic]), Message: aws.String("still here")}); err != nil {
		t.Fatal(err)
	}
	out, err := s.sqs.ReceiveMessage(context.Background(), &sqs.ReceiveMessageInput{QueueUrl: aws.String(s.queueURL(t, sub.Queue)), WaitTimeSeconds: 2})
	if err != nil || len(out.Messages) != 1 {
		t.Errorf("other stack's wiring broken: %v %+v", err, out)
	}

	wantAll(t, down(t, s, mine), Absent)

	wantAll(t, down(t, s, other), Deleted)
	if q := s.queuesWithPrefix(t, prefix); len(q) != 0 {
		t.Errorf("queues left: %v", q)
	}
	for n := range s.topicARNs(t) {
		if strings.HasPrefix(n, prefix) {
			t.Errorf("topic left: %s", n)
		}
	}
	if b := withPrefix(s.buckets(t), prefix); len(b) != 0 {
		t.Errorf("buckets left: %v", b)
	}
}

// topoNames is what Down reports on: subscriptions, topics, the EC2 notices' rule and its
// target, queues and DLQs, the table and the buckets.
func topoNames(topo bus.Topology) []string {
	var out []string
	for _, sub := range topo.Subscriptions() {
		out = append(out, sub.Topic+" -> "+sub.Queue)
	}
	for _, et := range bus.EventTypes {
		out = append(out, topo.TopicName(et))
	}
	out = append(out, topo.EC2EventsRuleName()+" -> "+topo.EC2EventsQueueName(), topo.EC2EventsRuleName())
	return append(append(out, queueNames(topo)...), topo.LedgerTableName(), topo.SecretsBucketName(), topo.BucketName())
}

func TestDownOnMissingStackSucceeds(t *testing.T) {
	s := newStack(t)
	topo := bus.Topology{Prefix: uniquePrefix(t)}
	r := down(t, s, topo)
	wantAll(t, r, Absent)
	if got, want := len(r.Lines), len(topoNames(topo)); got != want {
		t.Errorf("down reported %d lines, want %d:\n%s", got, want, r)
	}
}

func TestDownKeepsNonEmptyBucket(t *testing.T) {
	ctx := context.Background()
	s := newStack(t)
	topo := bus.Topology{Prefix: uniquePrefix(t)}
	bucket := topo.BucketName()
	up(t, s, topo)
	putObjects(t, s, bucket, 2)

	r := down(t, s, topo)
	last := r.Lines[len(r.Lines)-1]
	if want := (Line{Kept, KindBucket, bucket, "bucket not empty (2 objects)"}); last != want {
		t.Errorf("bucket line = %+v, want %+v", last, want)
	}
	if r.Count(Deleted) != len(r.Lines)-1 {
		t.Errorf("want everything else deleted:\n%s", r)
	}
	if _, err := s.s3.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String("logs/0.gz")}); err != nil {
		t.Errorf("archived log gone: %v", err)
	}

	r = down(t, s, topo)
	if last := r.Lines[len(r.Lines)-1]; last.Action != Kept || r.Count(Absent) != len(r.Lines)-1 {
		t.Errorf("second down:\n%s", r)
	}

	r = down(t, s, topo, DownOptions{EmptyBucket: true})
	want := []Line{{Deleted, KindObjects, bucket, "2 objects"}, {Deleted, KindBucket, bucket, ""}}
	if got := r.Lines[len(r.Lines)-2:]; !slices.Equal(got, want) {
		t.Errorf("down with EmptyBucket ends with %+v, want %+v", got, want)
	}
	if slices.Contains(s.buckets(t), bucket) {
		t.Errorf("bucket %s survived down with EmptyBucket", bucket)
	}
}

func TestDownEmptiesBucketPastOnePage(t *testing.T) {
	s := newStack(t)
	topo := bus.Topology{Prefix: uniquePrefix(t)}
	up(t, s, topo)
	const n = 1003 // one more page than DeleteObjects' 1000 keys
	putObjects(t, s, topo.BucketName(), n)

	r := down(t, s, topo)
	if last := r.Lines[len(r.Lines)-1]; last.Detail != fmt.Sprintf("bucket not empty (%d objects)", n) {
		t.Errorf("bucket line = %+v", last)
	}
	r = down(t, s, topo, DownOptions{EmptyBucket: true})
	if got := r.Lines[len(r.Lines)-2]; got.Detail != fmt.Sprintf("%d objects", n) {
		t.Errorf("objects line = %+v", got)
	}
	if slices.Contains(s.buckets(t), topo.BucketName()) {
		t.Error("bucket survived")
	}
}

func putObjects(t *testing.T, s stack, bucket string, n int) {
	t.Helper()
	for i := range n {
		if _, err := s.s3.PutObject(context.Background(), &s3.PutObjectInput{
			Bucket: aws.String(bucket), Key: aws.String(fmt.Sprintf("logs/%d.gz", i)),
			Body: strings.NewReader("log"), ServerSideEncryption: s3types.ServerSideEncryptionAwsKms,
		}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRejectsBadInput(t *testing.T) {
	ctx := context.Background()
	var c Clients // never reached
	tests := []struct {
		name string
		run  func() (Report, error)
	}{
		{"up with invalid prefix", func() (Report, error) { return Up(ctx, c, bus.Topology{Prefix: "Bad_Prefix"}) }},
		{"down with invalid prefix", func() (Report, error) { return Down(ctx, c, bus.Topology{Prefix: ""}) }},
		{"up with two options", func() (Report, error) { return Up(ctx, c, bus.Topology{Prefix: "ok"}, UpOptions{}, UpOptions{}) }},
		{"down with two options", func() (Report, error) {
			return Down(ctx, c, bus.Topology{Prefix: "ok"}, DownOptions{}, DownOptions{EmptyBucket: true})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := tt.run()
			if err == nil || len(r.Lines) != 0 {
				t.Errorf("got %v, %v; want an error and an empty report", r, err)
			}
		})
	}
}

// TestUpSetsTopicPolicies: every topic gets TopicPolicy, a topic made by someone else keeps
// the default policy only until Up replaces it, and a policy changed later is put back.
func TestUpSetsTopicPolicies(t *testing.T) {
	ctx := context.Background()
	s := newStack(t)
	topo := bus.Topology{Prefix: uniquePrefix(t)}
	pre, err := s.sns.CreateTopic(ctx, &sns.CreateTopicInput{Name: aws.String(topo.TopicName(bus.JobSubmitted))})
	if err != nil {
		t.Fatal(err)
	}
	policyOf := func(arn string) string {
		t.Helper()
		out, err := s.sns.GetTopicAttributes(ctx, &sns.GetTopicAttributesInput{TopicArn: aws.String(arn)})
		if err != nil {
			t.Fatal(err)
		}
		return out.Attributes["Policy"]
	}
	line := func(r Report, et string) Line {
		t.Helper()
		for _, l := range r.Lines {
			if l.Kind == KindTopicPolicy && l.Name == topo.TopicName(et) {
				return l
			}
		}
		t.Fatalf("no topic-policy line for %s:\n%s", et, r)
		return Line{}
	}

	r := up(t, s, topo)
	if l := line(r, bus.JobSubmitted); l.Action != Updated || l.Detail != "default policy replaced" {
		t.Errorf("pre-existing topic: %+v, want its default policy replaced", l)
	}
	if l := line(r, bus.FleetPlanned); l.Action != Created {
		t.Errorf("new topic: %+v, want its policy created", l)
	}
	arns := s.topicARNs(t)
	account := strings.Split(aws.ToString(pre.TopicArn), ":")[4]
	for _, et := range bus.EventTypes {
		want, err := TopicPolicy(topo, et, account)
		if err != nil {
			t.Fatal(err)
		}
		if got := policyOf(arns[topo.TopicName(et)]); !sameJSON(got, string(want)) {
			t.Errorf("%s policy:\n%s\nwant:\n%s", et, got, want)
		}
	}

	open := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"sns:Publish","Resource":"*"}]}`
	arn := arns[topo.TopicName(bus.FleetLaunched)]
	if _, err := s.sns.SetTopicAttributes(ctx, &sns.SetTopicAttributesInput{TopicArn: aws.String(arn), AttributeName: aws.String("Policy"), AttributeValue: aws.String(open)}); err != nil {
		t.Fatal(err)
	}
	r = up(t, s, topo)
	if l := line(r, bus.FleetLaunched); l.Action != Updated || l.Detail != "policy changed" {
		t.Errorf("opened topic: %+v, want its policy put back", l)
	}
	if r.Count(Updated) != 1 {
		t.Errorf("want only the opened topic's policy updated:\n%s", r)
	}
	wantAll(t, up(t, s, topo), Exists)
}
