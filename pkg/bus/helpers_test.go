package bus_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
)

// env is one test's AWS: an in-process kumo and a topology with a prefix of its own
// (kumo's state is global to the process).
type env struct {
	t    *testing.T
	cfg  aws.Config
	topo bus.Topology
	sqs  *sqs.Client
	logs *logBuffer
}

var prefixSeq atomic.Int64

func uniquePrefix() string {
	const letters = "abcdefghijklmnopqrstuvwxyz"
	b := make([]byte, 5)
	for i := range b {
		b[i] = letters[rand.IntN(len(letters))]
	}
	return fmt.Sprintf("b%s-%d", b, prefixSeq.Add(1))
}

// kumoURL is the one local cloud the package's tests share: the bus runs on it exactly as
// the services do (SNS, SQS reach kumo through the local cloud's proxy). kumo's state is
// global to the process anyway, and concurrent kumo.NewServer calls race on it (seen with
// -race in v0.33.1), so parallel tests must not each start their own.
var kumoURL string

func TestMain(m *testing.M) {
	cloud, err := localcloud.New(localcloud.Options{Addr: "127.0.0.1:0"})
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the local cloud:", err)
		os.Exit(1)
	}
	kumoURL = cloud.URL()
	code := m.Run()
	cloud.Close()
	os.Exit(code)
}

// newEnv gives the test a topology of its own on the shared kumo, without any topic or
// queue.
func newEnv(t *testing.T) *env {
	t.Helper()
	cfg := awsx.ForEndpoint(kumoURL)
	return &env{
		t:    t,
		cfg:  cfg,
		topo: bus.Topology{Prefix: uniquePrefix()},
		sqs:  sqs.NewFromConfig(cfg),
		logs: &logBuffer{},
	}
}

// stackOpts tunes the queues createStack makes.
type stackOpts struct {
	visibilityTimeout int // seconds; 0: 30
	maxReceiveCount   int // 0: bus.MaxReceiveCount
}

// createStack creates what `sortie infra up` would, for the test's topology: a topic per
// event type; per subscription a DLQ, a queue redriving to it and a raw-delivery
// subscription; per timer service a timer queue with its DLQ.
func (e *env) createStack(o stackOpts) {
	e.t.Helper()
	ctx := context.Background()
	if o.visibilityTimeout == 0 {
		o.visibilityTimeout = 30
	}
	if o.maxReceiveCount == 0 {
		o.maxReceiveCount = bus.MaxReceiveCount
	}
	snsc := sns.NewFromConfig(e.cfg)
	topics := map[string]string{}
	for _, et := range bus.EventTypes {
		out, err := snsc.CreateTopic(ctx, &sns.CreateTopicInput{Name: aws.String(e.topo.TopicName(et))})
		if err != nil {
			e.t.Fatalf("creating topic: %v", err)
		}
		topics[et] = aws.ToString(out.TopicArn)
	}
	for _, s := range e.topo.Subscriptions() {
		queueARN := e.createQueuePair(s.Queue, o)
		_, err := snsc.Subscribe(ctx, &sns.SubscribeInput{
			TopicArn:   aws.String(topics[s.EventType]),
			Protocol:   aws.String("sqs"),
			Endpoint:   aws.String(queueARN),
			Attributes: map[string]string{"RawMessageDelivery": "true"},
		})
		if err != nil {
			e.t.Fatalf("subscribing %s: %v", s.Queue, err)
		}
	}
	for _, svc := range bus.TimerServices {
		e.createQueuePair(e.topo.TimerQueueName(svc), o)
	}
}

func (e *env) createQueuePair(queue string, o stackOpts) (queueARN string) {
	e.t.Helper()
	dlqURL := e.createQueue(bus.DLQName(queue), nil)
	redrive, _ := json.Marshal(map[string]string{
		"deadLetterTargetArn": e.queueARN(dlqURL),
		"maxReceiveCount":     strconv.Itoa(o.maxReceiveCount),
	})
	url := e.createQueue(queue, map[string]string{
		"RedrivePolicy":     string(redrive),
		"VisibilityTimeout": strconv.Itoa(o.visibilityTimeout),
	})
	return e.queueARN(url)
}

func (e *env) createQueue(name string, attrs map[string]string) string {
	e.t.Helper()
	out, err := e.sqs.CreateQueue(context.Background(), &sqs.CreateQueueInput{QueueName: aws.String(name), Attributes: attrs})
	if err != nil {
		e.t.Fatalf("creating queue %s: %v", name, err)
	}
	return aws.ToString(out.QueueUrl)
}

func (e *env) queueARN(url string) string {
	e.t.Helper()
	out, err := e.sqs.GetQueueAttributes(context.Background(), &sqs.GetQueueAttributesInput{
		QueueUrl: aws.String(url), AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameQueueArn},
	})
	if err != nil {
		e.t.Fatalf("getting queue ARN: %v", err)
	}
	return out.Attributes[string(sqstypes.QueueAttributeNameQueueArn)]
}

func (e *env) queueURL(name string) string {
	e.t.Helper()
	out, err := e.sqs.GetQueueUrl(context.Background(), &sqs.GetQueueUrlInput{QueueName: aws.String(name)})
	if err != nil {
		e.t.Fatalf("getting queue URL of %s: %v", name, err)
	}
	return aws.ToString(out.QueueUrl)
}

// depth is a queue's visible, in-flight and delayed message counts.
type depth struct{ visible, inFlight, delayed int }

func (d depth) total() int { return d.visible + d.inFlight + d.delayed }

func (e *env) depth(queue string) depth {
	e.t.Helper()
	out, err := e.sqs.GetQueueAttributes(context.Background(), &sqs.GetQueueAttributesInput{
		QueueUrl: aws.String(e.queueURL(queue)),
		AttributeNames: []sqstypes.QueueAttributeName{
			sqstypes.QueueAttributeNameApproximateNumberOfMessages,
			sqstypes.QueueAttributeNameApproximateNumberOfMessagesNotVisible,
			sqstypes.QueueAttributeNameApproximateNumberOfMessagesDelayed,
		},
	})
	if err != nil {
		e.t.Fatalf("getting depth of %s: %v", queue, err)
	}
	n := func(k sqstypes.QueueAttributeName) int {
		v, _ := strconv.Atoi(out.Attributes[string(k)])
		return v
	}
	return depth{
		visible:  n(sqstypes.QueueAttributeNameApproximateNumberOfMessages),
		inFlight: n(sqstypes.QueueAttributeNameApproximateNumberOfMessagesNotVisible),
		delayed:  n(sqstypes.QueueAttributeNameApproximateNumberOfMessagesDelayed),
	}
}

// receiveAll receives every visible message of a queue (without deleting them).
func (e *env) receiveAll(queue string) []sqstypes.Message {
	e.t.Helper()
	out, err := e.sqs.ReceiveMessage(context.Background(), &sqs.ReceiveMessageInput{
		QueueUrl:              aws.String(e.queueURL(queue)),
		MaxNumberOfMessages:   10,
		WaitTimeSeconds:       1,
		MessageAttributeNames: []string{"All"},
	})
	if err != nil {
		e.t.Fatalf("receiving from %s: %v", queue, err)
	}
	return out.Messages
}

// routerConfig is a fast configuration for tests: 1 s long polls, short retries.
func (e *env) routerConfig(service string) bus.Config {
	return bus.Config{
		Topology:     e.topo,
		Service:      service,
		AWS:          e.cfg,
		Logger:       slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Concurrency:  2,
		CloseTimeout: 5 * time.Second,
		WaitTime:     time.Second,
		Retry:        bus.RetryPolicy{MaxRetries: 3, InitialInterval: 20 * time.Millisecond, Multiplier: 2, MaxInterval: 100 * time.Millisecond},
	}
}

func (e *env) publisher() *bus.Publisher {
	e.t.Helper()
	p, err := bus.NewPublisher(bus.PublisherConfig{Topology: e.topo, AWS: e.cfg, Logger: slog.New(slog.NewJSONHandler(e.logs, nil))})
	if err != nil {
		e.t.Fatalf("NewPublisher: %v", err)
	}
	e.t.Cleanup(func() { p.Close() })
	return p
}

// run starts r.Run in the background; the returned stop cancels it and returns Run's
// error. The test fails if Run has not returned 10 s after stop, or if it returned early.
func (e *env) run(r *bus.Router) (stop func() error) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				e.t.Fatal("Run did not return 10 s after its context was cancelled")
			}
		})
		return err
	}
	e.t.Cleanup(func() { _ = stop() })
	return stop
}

// eventually polls cond until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// logBuffer collects JSON log lines; safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// lines returns the decoded log lines whose msg is msg.
func (b *logBuffer) lines(msg string) []map[string]any {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, l := range bytes.Split(b.buf.Bytes(), []byte("\n")) {
		var m map[string]any
		if json.Unmarshal(l, &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// fakeEvent routes a hand-written body.
type fakeEvent struct{ typ, job, corr string }

func (f fakeEvent) EventType() string           { return f.typ }
func (f fakeEvent) IDs() (jobID, corrID string) { return f.job, f.corr }

var _ bus.Event = fakeEvent{}

// calls counts handler invocations and keeps the messages.
type calls struct {
	mu   sync.Mutex
	msgs []*bus.Message
	at   []time.Time
}

func (c *calls) add(m *bus.Message) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.msgs = append(c.msgs, m)
	c.at = append(c.at, time.Now())
	return len(c.msgs)
}

func (c *calls) n() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.msgs)
}

func (c *calls) get(i int) (*bus.Message, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.msgs[i], c.at[i]
}

// received is a message another consumer received, and when.
type received struct {
	msg sqstypes.Message
	at  time.Time
}

// queueWatcher receives from a queue as another replica would, never deleting.
type queueWatcher struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu  sync.Mutex
	got []received
}

// watchQueue receives from queue every 100 ms with short polls (kumo's long polls do not
// wake when an in-flight message becomes visible again) until the watcher is stopped.
func (e *env) watchQueue(queue string) *queueWatcher {
	e.t.Helper()
	url := e.queueURL(queue)
	ctx, cancel := context.WithCancel(context.Background())
	w := &queueWatcher{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for ctx.Err() == nil {
			out, err := e.sqs.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{
				QueueUrl:                    aws.String(url),
				MaxNumberOfMessages:         10,
				WaitTimeSeconds:             0,
				MessageAttributeNames:       []string{"All"},
				MessageSystemAttributeNames: []sqstypes.MessageSystemAttributeName{sqstypes.MessageSystemAttributeNameAll},
			})
			if err != nil && ctx.Err() == nil {
				e.t.Errorf("watching %s: %v", queue, err)
				return
			}
			if err == nil {
				w.mu.Lock()
				for _, m := range out.Messages {
					w.got = append(w.got, received{msg: m, at: time.Now()})
				}
				w.mu.Unlock()
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	e.t.Cleanup(w.stop)
	return w
}

// received returns what the watcher has received so far.
func (w *queueWatcher) received() []received {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]received(nil), w.got...)
}

// stop stops polling and waits for the last poll to end; it may be called more than once.
func (w *queueWatcher) stop() {
	w.cancel()
	<-w.done
}
