// Package worker is the demo workload: it drains a queue of work items, hashes each file from S3, writes a result to S3 and reports every item with a TaskReported.
package worker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/events"
)

// WorkItem is the body of one message on the work queue: JSON {"key": "<s3 key>"}, the
// key of one object in the worker's bucket. `sortie dev` seeds the queue with these.
type WorkItem struct {
	Key string `json:"key"`
}

// MaxKeyBytes is S3's limit on an object key.
const MaxKeyBytes = 1024

// Encode returns the item's message body.
func (w WorkItem) Encode() (string, error) {
	if err := w.Validate(); err != nil {
		return "", err
	}
	b, err := json.Marshal(w)
	return string(b), err
}

// Validate reports an item that names no usable S3 key.
func (w WorkItem) Validate() error {
	switch {
	case w.Key == "":
		return errors.New("work item: key is empty")
	case len(w.Key) > MaxKeyBytes:
		return fmt.Errorf("work item: key is %d bytes, S3 allows %d", len(w.Key), MaxKeyBytes)
	case !utf8.ValidString(w.Key):
		return errors.New("work item: key is not valid UTF-8")
	}
	return nil
}

// DecodeWorkItem decodes and validates a message body. Unknown fields are errors.
func DecodeWorkItem(body string) (WorkItem, error) {
	dec := json.NewDecoder(strings.NewReader(body))
	dec.DisallowUnknownFields()
	var w WorkItem
	if err := dec.Decode(&w); err != nil {
		return WorkItem{}, fmt.Errorf("work item: %w", err)
	}
	if dec.More() {
		return WorkItem{}, errors.New("work item: data after the JSON object")
	}
	return w, w.Validate()
}

// Result is what the worker writes for one item, as JSON at ResultKey.
type Result struct {
	Key    string `json:"key"`
	SHA256 string `json:"sha256"` // hex
	// Lines counts the object's lines: its newlines, plus one when it is not empty and
	// does not end with a newline.
	Lines    int64  `json:"lines"`
	Instance string `json:"instance"`
}

// ResultKey is where the result of the item with key is written: results/<job>/<key>.json.
func ResultKey(jobID, key string) string { return "results/" + jobID + "/" + key + ".json" }

// Config configures one run of the worker.
type Config struct {
	Bucket string // where the items' objects are, and where results go
	Queue  string // the work queue's name
	// The stack's topology prefix and the ids every TaskReported carries (LoadJobEnv
	// reads them from the file the bootstrapper uploads).
	Prefix, JobID, CorrelationID, FleetID, InstanceID string
	AWS                                               aws.Config
	Out                                               io.Writer // one line per item; nil discards
	// PollWait is each receive's long poll (default 1 s). The worker stops after two
	// receives in a row come back empty and the queue has nothing visible, in flight or
	// delayed.
	PollWait time.Duration
}

// Validate reports every problem with the configuration at once.
func (c Config) Validate() error {
	var errs []error
	if c.Bucket == "" {
		errs = append(errs, errors.New("bucket is required"))
	}
	if c.Queue == "" {
		errs = append(errs, errors.New("queue is required"))
	}
	if err := (bus.Topology{Prefix: c.Prefix}).Validate(); err != nil {
		errs = append(errs, fmt.Errorf("prefix: %w", err))
	}
	// The ids must make valid events: check them as a TaskReported would carry them.
	probe := events.TaskReported{
		Header:     events.NewHeader(c.JobID, c.CorrelationID, time.Now()),
		FleetID:    c.FleetID,
		InstanceID: c.InstanceID,
		TaskID:     "probe",
		Outcome:    events.OutcomeSucceeded,
	}
	if err := probe.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("job ids: %w", err))
	}
	if c.AWS.Region == "" {
		errs = append(errs, errors.New("aws config: no region (set AWS_REGION)"))
	}
	if c.AWS.Credentials == nil {
		errs = append(errs, errors.New("aws config: no credentials"))
	}
	if c.PollWait < 0 || c.PollWait > 20*time.Second {
		errs = append(errs, fmt.Errorf("poll wait %s: want 0-20s", c.PollWait))
	}
	return errors.Join(errs...)
}

// The calls the worker makes, with the SDK's signatures.
type (
	queueAPI interface {
		GetQueueUrl(ctx context.Context, params *sqs.GetQueueUrlInput, optFns ...func(*sqs.Options)) (*sqs.GetQueueUrlOutput, error)
		ReceiveMessage(ctx context.Context, params *sqs.ReceiveMessageInput, optFns ...func(*sqs.Options)) (*sqs.ReceiveMessageOutput, error)
		DeleteMessage(ctx context.Context, params *sqs.DeleteMessageInput, optFns ...func(*sqs.Options)) (*sqs.DeleteMessageOutput, error)
		GetQueueAttributes(ctx context.Context, params *sqs.GetQueueAttributesInput, optFns ...func(*sqs.Options)) (*sqs.GetQueueAttributesOutput, error)
	}
	objectAPI interface {
		GetObject(ctx context.Context, params *s3.GetObjectInput, optFns ...func(*s3.Options)) (*s3.GetObjectOutput, error)
		PutObject(ctx context.Context, params *s3.PutObjectInput, optFns ...func(*s3.Options)) (*s3.PutObjectOutput, error)
	}
	reporter interface {
		Publish(ctx context.Context, e events.Event) error
	}
)

var (
	_ queueAPI  = (*sqs.Client)(nil)
	_ objectAPI = (*s3.Client)(nil)
	_ reporter  = (*bus.Publisher)(nil)
)

// Run drains the work queue: for every item it reads the object, writes its Result,
// publishes a TaskReported and deletes the message. An item that cannot be processed
// (bad body, missing object, result not written) is reported with outcome failed and
// deleted too, so the job still finishes and its counts show the failure. Run returns nil
// once the queue is drained, and an error on a problem no item can get past (the queue
// is unreachable, TaskReported cannot be published, ctx ends); the message in hand is
// then left for SQS to redeliver.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("worker config: %w", err)
	}
	pub, err := bus.NewPublisher(bus.PublisherConfig{
		Topology: bus.Topology{Prefix: cfg.Prefix},
		AWS:      cfg.AWS,
		Logger:   slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	defer pub.Close()
	w := &worker{
		cfg:     cfg,
		queue:   sqs.NewFromConfig(cfg.AWS),
		objects: s3.NewFromConfig(cfg.AWS, awsx.S3Options(cfg.AWS)),
		reports: pub,
		out:     cfg.Out,
		now:     time.Now,
	}
	if w.out == nil {
		w.out = io.Discard
	}
	return w.run(ctx)
}

type worker struct {
	cfg     Config
	queue   queueAPI
	objects objectAPI
	reports reporter
	out     io.Writer
	now     func() time.Time

	queueURL          string
	processed, failed int
}

// emptyReceives is how many empty receives in a row make the worker check the queue's depth.
const emptyReceives = 2

func (w *worker) run(ctx context.Context) error {
	out, err := w.queue.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String(w.cfg.Queue)})
	if err != nil {
		return fmt.Errorf("finding work queue %s: %w", w.cfg.Queue, err)
	}
	w.queueURL = aws.ToString(out.QueueUrl)
	wait := w.cfg.PollWait
	if wait == 0 {
		wait = time.Second
	}
	empty := 0
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("worker stopped after %d items: %w", w.processed, err)
		}
		recv, err := w.queue.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{
			QueueUrl:            aws.String(w.queueURL),
			MaxNumberOfMessages: 10,
			WaitTimeSeconds:     int32(wait / time.Second),
		})
		if err != nil {
			return fmt.Errorf("receiving from work queue %s: %w", w.cfg.Queue, err)
		}
		if len(recv.Messages) == 0 {
			if empty++; empty < emptyReceives {
				continue
			}
			left, err := w.depth(ctx)
			if err != nil {
				return err
			}
			if left == 0 {
				fmt.Fprintf(w.out, "%s drained queue %s: %d items, %d failed\n", w.stamp(), w.cfg.Queue, w.processed, w.failed)
				return nil
			}
			empty = 0 // items in flight elsewhere may come back: keep polling
			continue
		}
		empty = 0
		for _, m := range recv.Messages {
			if err := w.handle(ctx, m); err != nil {
				return err
			}
		}
	}
}

// depth is the queue's visible, in-flight and delayed messages.
func (w *worker) depth(ctx context.Context) (int, error) {
	attrs := []sqstypes.QueueAttributeName{
		sqstypes.QueueAttributeNameApproximateNumberOfMessages,
		sqstypes.QueueAttributeNameApproximateNumberOfMessagesNotVisible,
		sqstypes.QueueAttributeNameApproximateNumberOfMessagesDelayed,
	}
	out, err := w.queue.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: aws.String(w.queueURL), AttributeNames: attrs})
	if err != nil {
		return 0, fmt.Errorf("reading depth of work queue %s: %w", w.cfg.Queue, err)
	}
	total := 0
	for _, a := range attrs {
		n, _ := strconv.Atoi(out.Attributes[string(a)])
		total += n
	}
	return total, nil
}

// handle processes one message, reports it and deletes it. Only fatal problems are errors.
func (w *worker) handle(ctx context.Context, m sqstypes.Message) error {
	start := w.now()
	item, err := DecodeWorkItem(aws.ToString(m.Body))
	taskID := "message:" + aws.ToString(m.MessageId)
	var res Result
	if err == nil {
		taskID = TaskID(item.Key)
		res, err = w.process(ctx, item.Key)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("worker stopped after %d items: %w", w.processed, ctx.Err())
	}
	elapsed := w.now().Sub(start)
	report := events.TaskReported{
		Header:     events.NewHeader(w.cfg.JobID, w.cfg.CorrelationID, w.now()),
		FleetID:    w.cfg.FleetID,
		InstanceID: w.cfg.InstanceID,
		TaskID:     taskID,
		Outcome:    events.OutcomeSucceeded,
		DurationMS: elapsed.Milliseconds(),
	}
	if err != nil {
		report.Outcome, report.Detail = events.OutcomeFailed, clip(err.Error(), events.MaxTextBytes)
	}
	if err := w.reports.Publish(ctx, report); err != nil {
		return fmt.Errorf("reporting task %s: %w", taskID, err)
	}
	if _, err := w.queue.DeleteMessage(ctx, &sqs.DeleteMessageInput{QueueUrl: aws.String(w.queueURL), ReceiptHandle: m.ReceiptHandle}); err != nil {
		if awsx.ErrorCode(err) != "ReceiptHandleIsInvalid" {
			return fmt.Errorf("deleting work item %s: %w", taskID, err)
		}
		// The visibility timeout ran out while we worked: another worker may have the
		// item now, and its report will be a second one.
		fmt.Fprintf(w.out, "%s warning: work item %s was redelivered while being processed\n", w.stamp(), taskID)
	}
	w.processed++
	if err != nil {
		w.failed++
		fmt.Fprintf(w.out, "%s failed %s in %dms: %s\n", w.stamp(), strconv.Quote(taskID), elapsed.Milliseconds(), report.Detail)
		return nil
	}
	fmt.Fprintf(w.out, "%s processed %s sha256=%s lines=%d in %dms\n", w.stamp(), strconv.Quote(res.Key), res.SHA256, res.Lines, elapsed.Milliseconds())
	return nil
}

// process hashes the object at key and writes its result.
func (w *worker) process(ctx context.Context, key string) (Result, error) {
	obj, err := w.objects.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(w.cfg.Bucket), Key: aws.String(key)})
	if err != nil {
		return Result{}, fmt.Errorf("reading s3://%s/%s: %w", w.cfg.Bucket, key, err)
	}
	defer obj.Body.Close()
	h := sha256.New()
	lc := &lineCounter{}
	if _, err := io.Copy(io.MultiWriter(h, lc), obj.Body); err != nil {
		return Result{}, fmt.Errorf("reading s3://%s/%s: %w", w.cfg.Bucket, key, err)
	}
	res := Result{Key: key, SHA256: hex.EncodeToString(h.Sum(nil)), Lines: lc.lines(), Instance: w.cfg.InstanceID}
	body, err := json.Marshal(res)
	if err != nil {
		return Result{}, err
	}
	dest := ResultKey(w.cfg.JobID, key)
	_, err = w.objects.PutObject(ctx, &s3.PutObjectInput{
		Bucket:               aws.String(w.cfg.Bucket),
		Key:                  aws.String(dest),
		Body:                 bytes.NewReader(body),
		ContentType:          aws.String("application/json"),
		ServerSideEncryption: s3types.ServerSideEncryptionAwsKms,
	})
	if err != nil {
		return Result{}, fmt.Errorf("writing s3://%s/%s: %w", w.cfg.Bucket, dest, err)
	}
	return res, nil
}

func (w *worker) stamp() string { return w.now().UTC().Format(time.RFC3339) }

// lineCounter counts newlines and remembers whether the data ended with one.
type lineCounter struct {
	n        int64
	any, end bool // any data; the last byte was a newline
}

func (c *lineCounter) Write(p []byte) (int, error) {
	if len(p) > 0 {
		c.n += int64(bytes.Count(p, []byte{'\n'}))
		c.any, c.end = true, p[len(p)-1] == '\n'
	}
	return len(p), nil
}

func (c *lineCounter) lines() int64 {
	if c.any && !c.end {
		return c.n + 1
	}
	return c.n
}

// TaskID is the task id a key is reported under: the key itself when it is a valid
// TaskReported task id (printable, at most events.MaxTaskIDBytes), otherwise a readable
// prefix of it and the hash of the whole key.
func TaskID(key string) string {
	if key != "" && len(key) <= events.MaxTaskIDBytes && printable(key) {
		return key
	}
	sum := sha256.Sum256([]byte(key))
	suffix := "…#" + hex.EncodeToString(sum[:8])
	var b strings.Builder
	for _, r := range key {
		if b.Len()+utf8.RuneLen(r)+len(suffix) > events.MaxTaskIDBytes {
			break
		}
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			r = '?'
		}
		b.WriteRune(r)
	}
	return b.String() + suffix
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// clip cuts s to at most n bytes on a rune boundary, keeping it valid UTF-8.
func clip(s string, n int) string {
	s = strings.ToValidUTF8(strings.ReplaceAll(s, "\x00", ""), "\uFFFD")
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
