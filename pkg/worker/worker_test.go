package worker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
)

// env is one test's stack on a local cloud of its own, with a bucket, a work queue, and a
// test queue subscribed raw to the TaskReported topic.
type env struct {
	*cloudtest.Stack
	t       *testing.T
	bucket  string
	work    string // work queue name
	reports string // TaskReported test queue URL
}

func newEnv(t *testing.T) *env {
	t.Helper()
	s := cloudtest.NewStack(t, cloudtest.NewCloud(t, localcloud.Options{}))
	name := cloudtest.Unique("work-")
	e := &env{Stack: s, t: t, bucket: name, work: name}
	if _, err := s.S3.CreateBucket(t.Context(), &s3.CreateBucketInput{Bucket: aws.String(e.bucket)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SQS.CreateQueue(t.Context(), &sqs.CreateQueueInput{QueueName: aws.String(e.work)}); err != nil {
		t.Fatal(err)
	}
	e.reports = s.Subscribe(t, bus.TaskReported)
	return e
}

func (e *env) put(key string, body []byte) {
	e.t.Helper()
	if _, err := e.S3.PutObject(context.Background(), &s3.PutObjectInput{Bucket: aws.String(e.bucket), Key: aws.String(key), Body: bytes.NewReader(body)}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) send(body string) {
	e.t.Helper()
	url := cloudtest.QueueURL(e.t, e.SQS, e.work)
	if _, err := e.SQS.SendMessage(context.Background(), &sqs.SendMessageInput{QueueUrl: aws.String(url), MessageBody: aws.String(body)}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) sendItem(key string) {
	e.t.Helper()
	body, err := WorkItem{Key: key}.Encode()
	if err != nil {
		e.t.Fatal(err)
	}
	e.send(body)
}

// depth is the work queue's visible + in-flight + delayed count.
func (e *env) depth() int {
	e.t.Helper()
	w := &worker{cfg: Config{Queue: e.work}, queue: e.SQS, queueURL: cloudtest.QueueURL(e.t, e.SQS, e.work)}
	n, err := w.depth(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

// taskReports receives and decodes TaskReported events until want arrived or 10 s passed.
func (e *env) taskReports(want int) []events.TaskReported {
	e.t.Helper()
	return cloudtest.Events(e.t, e.SQS, e.reports, "", want, 10*time.Second, events.DecodeTaskReported)
}

func (e *env) config(out io.Writer) Config {
	return Config{
		Bucket:        e.bucket,
		Queue:         e.work,
		Prefix:        e.Topology.Prefix,
		JobID:         "job-w1",
		CorrelationID: "corr-w1",
		FleetID:       "job-w1",
		InstanceID:    "i-0123456789abcdef0",
		AWS:           e.AWS,
		Out:           out,
	}
}

// fileBody is item i's content: i lines, the last without a newline when i is odd; item 0
// is empty.
func fileBody(i int) []byte {
	var b strings.Builder
	for l := range i {
		fmt.Fprintf(&b, "file %d line %d", i, l)
		if l < i-1 || i%2 == 0 {
			b.WriteByte('\n')
		}
	}
	return []byte(b.String())
}

func runWorker(t *testing.T, cfg Config) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return Run(ctx, cfg)
}

// TestDrainsTheQueue: 25 files and their 25 work items → 25 results with the right hash
// and line count, 25 TaskReported, an empty queue, and Run returns nil.
func TestDrainsTheQueue(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const n = 25
	keys := make([]string, n)
	for i := range n {
		keys[i] = fmt.Sprintf("in/file-%02d.txt", i)
		e.put(keys[i], fileBody(i))
		e.sendItem(keys[i])
	}
	var out cloudtest.Buffer
	if err := runWorker(t, e.config(&out)); err != nil {
		t.Fatalf("Run = %v\noutput:\n%s", err, out.String())
	}

	for i, key := range keys {
		body, obj := cloudtest.Download(t, e.S3, e.bucket, ResultKey("job-w1", key))
		var res Result
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&res); err != nil {
			t.Fatalf("result of %s: %v", key, err)
		}
		sum := sha256.Sum256(fileBody(i))
		want := Result{Key: key, SHA256: hex.EncodeToString(sum[:]), Lines: int64(i), Instance: "i-0123456789abcdef0"}
		if res != want {
			t.Errorf("result of %s = %+v, want %+v", key, res, want)
		}
		if obj.ServerSideEncryption != s3types.ServerSideEncryptionAwsKms {
			t.Errorf("result of %s has SSE %q, want aws:kms", key, obj.ServerSideEncryption)
		}
	}

	reports := e.taskReports(n)
	if len(reports) != n {
		t.Fatalf("%d TaskReported, want %d", len(reports), n)
	}
	var got []string
	for _, r := range reports {
		got = append(got, r.TaskID)
		if r.Outcome != events.OutcomeSucceeded || r.JobID != "job-w1" || r.CorrelationID != "corr-w1" ||
			r.FleetID != "job-w1" || r.InstanceID != "i-0123456789abcdef0" || r.Detail != "" {
			t.Errorf("report %+v", r)
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, keys) {
		t.Errorf("reported task ids %v, want %v", got, keys)
	}
	if d := e.depth(); d != 0 {
		t.Errorf("work queue holds %d messages after Run", d)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != n+1 || !strings.Contains(lines[n], "drained queue") || !strings.Contains(lines[n], "25 items, 0 failed") {
		t.Errorf("output has %d lines, want one per item and a summary:\n%s", len(lines), out.String())
	}
	if !strings.Contains(out.String(), `processed "in/file-03.txt" sha256=`) {
		t.Errorf("output lacks the line of in/file-03.txt:\n%s", out.String())
	}
}

// TestBadItemsAreReportedFailed: an item whose object is missing and a message that is not
// a work item are reported failed with the reason, and deleted; the good item succeeds.
func TestBadItemsAreReportedFailed(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.put("ok.txt", []byte("one\ntwo\n"))
	e.sendItem("ok.txt")
	e.sendItem("missing.txt")
	e.send(`{"path": "nope"}`)
	var out cloudtest.Buffer
	if err := runWorker(t, e.config(&out)); err != nil {
		t.Fatalf("Run = %v", err)
	}
	reports := e.taskReports(3)
	if len(reports) != 3 {
		t.Fatalf("%d reports, want 3", len(reports))
	}
	byOutcome := map[string][]events.TaskReported{}
	for _, r := range reports {
		byOutcome[r.Outcome] = append(byOutcome[r.Outcome], r)
	}
	if ok := byOutcome[events.OutcomeSucceeded]; len(ok) != 1 || ok[0].TaskID != "ok.txt" {
		t.Errorf("succeeded reports %+v, want ok.txt", ok)
	}
	failed := byOutcome[events.OutcomeFailed]
	if len(failed) != 2 {
		t.Fatalf("failed reports %+v, want 2", failed)
	}
	slices.SortFunc(failed, func(a, b events.TaskReported) int { return strings.Compare(a.TaskID, b.TaskID) })
	if !strings.HasPrefix(failed[0].TaskID, "message:") || len(failed[0].TaskID) <= len("message:") ||
		!strings.Contains(failed[0].Detail, `unknown field "path"`) {
		t.Errorf("report of the bad message: %+v", failed[0])
	}
	if failed[1].TaskID != "missing.txt" || !strings.Contains(failed[1].Detail, "NoSuchKey") {
		t.Errorf("report of the missing object: %+v", failed[1])
	}
	if d := e.depth(); d != 0 {
		t.Errorf("work queue holds %d messages; failed items must be deleted too", d)
	}
	if !strings.Contains(out.String(), "3 items, 2 failed") {
		t.Errorf("summary missing:\n%s", out.String())
	}
}

// TestCannotReportIsFatal: when TaskReported cannot be published (the stack's topics do
// not exist), Run fails and leaves the item for SQS to redeliver.
func TestCannotReportIsFatal(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.put("a.txt", []byte("a\n"))
	e.sendItem("a.txt")
	cfg := e.config(io.Discard)
	cfg.Prefix = cloudtest.Unique("nostack")
	err := runWorker(t, cfg)
	if err == nil || !strings.Contains(err.Error(), "reporting task a.txt") {
		t.Fatalf("Run = %v, want a reporting error", err)
	}
	if d := e.depth(); d != 1 {
		t.Errorf("work queue depth %d, want the item still there (in flight)", d)
	}
}

func TestMissingQueueIsFatal(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cfg := e.config(io.Discard)
	cfg.Queue = cloudtest.Unique("no-such-queue-")
	if err := runWorker(t, cfg); err == nil || !strings.Contains(err.Error(), "finding work queue "+cfg.Queue) {
		t.Fatalf("Run = %v, want the queue named in the error", err)
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	err := Config{PollWait: time.Minute}.Validate()
	if err == nil {
		t.Fatal("the zero config is valid")
	}
	for _, want := range []string{"bucket is required", "queue is required", "prefix", "job_id", "correlation_id", "fleet_id", "instance_id", "no region", "no credentials", "poll wait 1m0s"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	good := Config{Bucket: "b", Queue: "q", Prefix: "sortie", JobID: "job-1", CorrelationID: "c", FleetID: "job-1",
		InstanceID: "i-0123456789abcdef0", AWS: awsx.ForEndpoint("http://127.0.0.1:1")}
	if err := good.Validate(); err != nil {
		t.Errorf("valid config: %v", err)
	}
}

func TestDecodeWorkItem(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		body, key, err string
	}{
		{body: `{"key":"a/b.txt"}`, key: "a/b.txt"},
		{body: `{"key":""}`, err: "key is empty"},
		{body: `{}`, err: "key is empty"},
		{body: `{"key":"a","extra":1}`, err: `unknown field "extra"`},
		{body: `{"key":"a"} {"key":"b"}`, err: "data after the JSON object"},
		{body: `not json`, err: "invalid character"},
		{body: `{"key":"` + strings.Repeat("k", MaxKeyBytes+1) + `"}`, err: "S3 allows 1024"},
	} {
		t.Run(tc.body[:min(len(tc.body), 20)], func(t *testing.T) {
			w, err := DecodeWorkItem(tc.body)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || w.Key != tc.key {
				t.Fatalf("DecodeWorkItem = %+v, %v", w, err)
			}
		})
	}
}

func TestTaskID(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 300)
	for _, tc := range []struct{ key, want string }{
		{"photos/a.jpg", "photos/a.jpg"},
		{"ünïcode/ok", "ünïcode/ok"},
	} {
		if got := TaskID(tc.key); got != tc.want {
			t.Errorf("TaskID(%q) = %q, want %q", tc.key, got, tc.want)
		}
	}
	for _, key := range []string{long, "tab\there", "bad\xffutf8"} {
		id := TaskID(key)
		r := events.TaskReported{Header: events.NewHeader("job-1", "c", time.Now()), FleetID: "job-1",
			InstanceID: "i-0123456789abcdef0", TaskID: id, Outcome: events.OutcomeSucceeded}
		if err := r.Validate(); err != nil {
			t.Errorf("TaskID(%q) = %q is not a valid task id: %v", key, id, err)
		}
		if TaskID(key+"y") == id {
			t.Errorf("TaskID does not tell %q from its extension", key)
		}
	}
}

func TestLineCounter(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want int64
	}{{"", 0}, {"a", 1}, {"a\n", 1}, {"a\nb", 2}, {"\n\n", 2}} {
		var c lineCounter
		// Written a byte at a time: the count must not depend on how reads are split.
		for i := range len(tc.in) {
			_, _ = c.Write([]byte{tc.in[i]})
		}
		if got := c.lines(); got != tc.want {
			t.Errorf("lines(%q) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

func TestClip(t *testing.T) {
	t.Parallel()
	if got := clip("héllo", 2); got != "h" {
		t.Errorf("clip cut inside a rune: %q", got)
	}
	if got := clip("a\x00b\xff", 100); got != "ab\uFFFD" {
		t.Errorf("clip = %q, want NUL removed and invalid UTF-8 replaced", got)
	}
}
