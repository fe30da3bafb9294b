package planner

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/infra"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
)

// stack is one Sortie stack on a local cloud of its own: topics, queues, DLQs and the
// bucket created by infra.Up under a unique prefix (kumo's state is global to the
// process), and a publisher.
type stack struct {
	cloud *localcloud.Cloud
	aws   aws.Config
	topo  bus.Topology
	pub   *bus.Publisher
	sqs   *sqs.Client
}

// newStack starts it; opts' zero fields mean a fast local cloud on a free port.
func newStack(t *testing.T, opts localcloud.Options) *stack {
	t.Helper()
	opts.Addr = "127.0.0.1:0"
	opts.DataDir = t.TempDir()
	if opts.BootDelay == 0 {
		opts.BootDelay = 50 * time.Millisecond
	}
	if opts.ShutdownDelay == 0 {
		opts.ShutdownDelay = 20 * time.Millisecond
	}
	cloud, err := localcloud.New(opts)
	if err != nil {
		t.Fatalf("starting local cloud: %v", err)
	}
	t.Cleanup(func() {
		if err := cloud.Close(); err != nil {
			t.Errorf("closing local cloud: %v", err)
		}
	})
	cfg := awsx.ForEndpoint(cloud.URL())
	var b [4]byte
	_, _ = rand.Read(b[:])
	topo := bus.Topology{Prefix: "t" + hex.EncodeToString(b[:])}
	if _, err := infra.Up(t.Context(), infra.NewClients(cfg), topo); err != nil {
		t.Fatalf("infra up: %v", err)
	}
	pub, err := bus.NewPublisher(bus.PublisherConfig{Topology: topo, AWS: cfg, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pub.Close() })
	return &stack{cloud: cloud, aws: cfg, topo: topo, pub: pub, sqs: sqs.NewFromConfig(cfg)}
}

// run runs a service in the background until the test ends, then checks it stopped cleanly.
func (s *stack) run(t *testing.T, run func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("service stopped with %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("service did not stop within 30 s")
		}
	})
}

// subscribe creates a queue of the test's own subscribed to eventType's topic with raw
// delivery, as a watcher would, and returns its URL.
func (s *stack) subscribe(t *testing.T, eventType string) string {
	t.Helper()
	ctx := t.Context()
	name := s.topo.Prefix + "-watch-" + strings.ToLower(eventType)
	q, err := s.sqs.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(name)})
	if err != nil {
		t.Fatal(err)
	}
	attrs, err := s.sqs.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{
		QueueUrl: q.QueueUrl, AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameQueueArn},
	})
	if err != nil {
		t.Fatal(err)
	}
	client := sns.NewFromConfig(s.aws)
	topic, err := client.CreateTopic(ctx, &sns.CreateTopicInput{Name: aws.String(s.topo.TopicName(eventType))}) // exists: returns its ARN
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Subscribe(ctx, &sns.SubscribeInput{
		TopicArn:   topic.TopicArn,
		Protocol:   aws.String("sqs"),
		Endpoint:   aws.String(attrs.Attributes[string(sqstypes.QueueAttributeNameQueueArn)]),
		Attributes: map[string]string{"RawMessageDelivery": "true"},
	}); err != nil {
		t.Fatal(err)
	}
	return aws.ToString(q.QueueUrl)
}

// queueURL returns the URL of one of the stack's queues.
func (s *stack) queueURL(t *testing.T, name string) string {
	t.Helper()
	out, err := s.sqs.GetQueueUrl(t.Context(), &sqs.GetQueueUrlInput{QueueName: aws.String(name)})
	if err != nil {
		t.Fatalf("queue %s: %v", name, err)
	}
	return aws.ToString(out.QueueUrl)
}

// collect receives (and deletes) messages from a queue until want says it has enough or
// the timeout passes, and returns them grouped by their job_id attribute.
func (s *stack) collect(t *testing.T, url string, timeout time.Duration, want func(map[string][]sqstypes.Message) bool) map[string][]sqstypes.Message {
	t.Helper()
	got := map[string][]sqstypes.Message{}
	deadline := time.Now().Add(timeout)
	for !want(got) && time.Now().Before(deadline) {
		out, err := s.sqs.ReceiveMessage(t.Context(), &sqs.ReceiveMessageInput{
			QueueUrl:              aws.String(url),
			MaxNumberOfMessages:   10,
			WaitTimeSeconds:       1,
			MessageAttributeNames: []string{"All"},
		})
		if err != nil {
			t.Fatalf("receiving from %s: %v", url, err)
		}
		for _, m := range out.Messages {
			id := attr(m, bus.AttrJobID)
			got[id] = append(got[id], m)
			if _, err := s.sqs.DeleteMessage(t.Context(), &sqs.DeleteMessageInput{QueueUrl: aws.String(url), ReceiptHandle: m.ReceiptHandle}); err != nil {
				t.Fatal(err)
			}
		}
	}
	return got
}

func attr(m sqstypes.Message, name string) string {
	if v, ok := m.MessageAttributes[name]; ok {
		return aws.ToString(v.StringValue)
	}
	return ""
}

// hasAll returns a collect predicate satisfied once every id has n messages.
func hasAll(n int, ids ...string) func(map[string][]sqstypes.Message) bool {
	return func(got map[string][]sqstypes.Message) bool {
		for _, id := range ids {
			if len(got[id]) < n {
				return false
			}
		}
		return true
	}
}

// never is a collect predicate that drains until the timeout.
func never(map[string][]sqstypes.Message) bool { return false }

func keysOf(m map[string][]sqstypes.Message) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
