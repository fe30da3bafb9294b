// Package cloudtest is test support for Sortie, as net/http/httptest is for HTTP: local clouds, stacks, instances and queue readers, for _test.go files only.
package cloudtest

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/infra"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/service"
)

// Fast test defaults for the local cloud's instance lifecycle.
const (
	BootDelay     = 50 * time.Millisecond
	ShutdownDelay = 20 * time.Millisecond
)

// StopTimeout is how long a service started with Stack.Serve may take to return once its
// context is cancelled.
const StopTimeout = 15 * time.Second

// NewCloud starts a local cloud on a free loopback port with its instances' directories in
// a temporary directory of the test, and closes it at cleanup (a close error fails the
// test). Zero BootDelay and ShutdownDelay get the fast defaults above. Every local cloud of
// a process shares one kumo, so parallel tests may each start their own; they must use
// names of their own (NewStack does).
func NewCloud(tb testing.TB, opts localcloud.Options) *localcloud.Cloud {
	tb.Helper()
	opts.Addr = "127.0.0.1:0"
	if opts.DataDir == "" {
		opts.DataDir = tb.TempDir()
	}
	if opts.BootDelay == 0 {
		opts.BootDelay = BootDelay
	}
	if opts.ShutdownDelay == 0 {
		opts.ShutdownDelay = ShutdownDelay
	}
	cloud, err := localcloud.New(opts)
	if err != nil {
		tb.Fatalf("starting local cloud: %v", err)
	}
	tb.Cleanup(func() {
		if err := cloud.Close(); err != nil {
			tb.Errorf("closing local cloud: %v", err)
		}
	})
	return cloud
}

// Stack is one Sortie stack of a test on a local cloud: the topics, queues, DLQs and
// bucket infra.Up creates under a prefix of its own, clients, and a publisher. Logger
// writes JSON at debug level to Logs; services started with Serve should log through it.
type Stack struct {
	Cloud     *localcloud.Cloud
	AWS       aws.Config
	Topology  bus.Topology
	EC2       *ec2.Client
	S3        *s3.Client
	SQS       *sqs.Client
	SNS       *sns.Client
	Publisher *bus.Publisher
	Logs      *Buffer
	Logger    *slog.Logger
}

// NewStack brings a stack up on cloud under a unique prefix (kumo's state is global to the
// process, so several stacks may share one cloud). The publisher closes at cleanup, after
// the services started with Serve stopped.
func NewStack(tb testing.TB, cloud *localcloud.Cloud) *Stack {
	tb.Helper()
	cfg := awsx.ForEndpoint(cloud.URL())
	logs := &Buffer{}
	s := &Stack{
		Cloud:    cloud,
		AWS:      cfg,
		Topology: bus.Topology{Prefix: Unique("t")},
		EC2:      ec2.NewFromConfig(cfg),
		S3:       s3.NewFromConfig(cfg, awsx.S3Options(cfg)),
		SQS:      sqs.NewFromConfig(cfg),
		SNS:      sns.NewFromConfig(cfg),
		Logs:     logs,
		Logger:   slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if _, err := infra.Up(tb.Context(), infra.NewClients(cfg), s.Topology); err != nil {
		tb.Fatalf("infra up %s: %v", s.Topology.Prefix, err)
	}
	pub, err := bus.NewPublisher(bus.PublisherConfig{Topology: s.Topology, AWS: cfg, Logger: s.Logger})
	if err != nil {
		tb.Fatalf("publisher: %v", err)
	}
	tb.Cleanup(func() {
		if err := pub.Close(); err != nil {
			tb.Errorf("closing the publisher: %v", err)
		}
	})
	s.Publisher = pub
	return s
}

// Serve runs a service in the background until the test ends; then it cancels the
// service's context and fails the test unless run returns nil within StopTimeout. The
// stack's logs are printed when the test failed.
func (s *Stack) Serve(tb testing.TB, run func(ctx context.Context) error) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				tb.Errorf("service stopped with %v", err)
			}
		case <-time.After(StopTimeout):
			tb.Errorf("service did not stop within %s of its context's cancellation", StopTimeout)
		}
		if tb.Failed() {
			tb.Logf("logs of stack %s:\n%s", s.Topology.Prefix, s.Logs)
		}
	})
}

// Deps returns what a service's Run needs to run on the stack: its AWS, its publisher,
// its logger, and ops.
func (s *Stack) Deps(ops *opsconfig.Config) service.Deps {
	return service.Deps{AWS: s.AWS, Ops: ops, Publisher: s.Publisher, Logger: s.Logger}
}

// LoadOps loads an ops configuration file (a test's testdata/ops.yaml).
func LoadOps(tb testing.TB, name string) *opsconfig.Config {
	tb.Helper()
	ops, err := opsconfig.Load(name)
	if err != nil {
		tb.Fatalf("loading %s: %v", name, err)
	}
	return ops
}

// Publish publishes e on the stack's bus.
func (s *Stack) Publish(tb testing.TB, e events.Event) {
	tb.Helper()
	if err := s.Publisher.Publish(tb.Context(), e); err != nil {
		tb.Fatalf("publishing %s: %v", e.EventType(), err)
	}
}

// Subscribe creates a queue of the test's own subscribed to eventType's topic with raw
// delivery, as a watcher's, and returns its URL.
func (s *Stack) Subscribe(tb testing.TB, eventType string) string {
	tb.Helper()
	ctx := tb.Context()
	q, err := s.SQS.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(s.Topology.Prefix + "-test-" + strings.ToLower(eventType))})
	if err != nil {
		tb.Fatalf("creating the %s test queue: %v", eventType, err)
	}
	attrs, err := s.SQS.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{
		QueueUrl: q.QueueUrl, AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameQueueArn},
	})
	if err != nil {
		tb.Fatal(err)
	}
	topic, err := s.SNS.CreateTopic(ctx, &sns.CreateTopicInput{Name: aws.String(s.Topology.TopicName(eventType))}) // exists: returns its ARN
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := s.SNS.Subscribe(ctx, &sns.SubscribeInput{
		TopicArn:   topic.TopicArn,
		Protocol:   aws.String("sqs"),
		Endpoint:   aws.String(attrs.Attributes[string(sqstypes.QueueAttributeNameQueueArn)]),
		Attributes: map[string]string{"RawMessageDelivery": "true"},
	}); err != nil {
		tb.Fatalf("subscribing to %s: %v", eventType, err)
	}
	return aws.ToString(q.QueueUrl)
}

// Ledger returns the job ledger of the stack (its table, created by infra.Up).
func (s *Stack) Ledger() *ledger.Ledger {
	return ledger.ForStack(s.AWS, s.Topology)
}
