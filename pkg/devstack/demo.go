package devstack

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/metrics"
	"github.com/sortie-fleet/sortie/pkg/watch"
	"github.com/sortie-fleet/sortie/pkg/worker"
)

// MaxDemoFiles bounds what SeedDemo seeds: the demo is a demonstration, not a load test.
const MaxDemoFiles = 10000

// DemoFiles is the seed's work size: 202 files.
const DemoFiles = 202

// Demo is the seeded demo input: files in a bucket and one work item per file in a queue.
type Demo struct {
	Bucket string
	Queue  string
	Keys   []string
}

// DemoS3API is the S3 calls seeding the demo makes.
type DemoS3API interface {
	CreateBucket(ctx context.Context, params *s3.CreateBucketInput, optFns ...func(*s3.Options)) (*s3.CreateBucketOutput, error)
	PutObject(ctx context.Context, params *s3.PutObjectInput, optFns ...func(*s3.Options)) (*s3.PutObjectOutput, error)
	HeadObject(ctx context.Context, params *s3.HeadObjectInput, optFns ...func(*s3.Options)) (*s3.HeadObjectOutput, error)
}

// DemoSQSAPI is the SQS calls seeding the demo's work queue makes.
type DemoSQSAPI interface {
	CreateQueue(ctx context.Context, params *sqs.CreateQueueInput, optFns ...func(*sqs.Options)) (*sqs.CreateQueueOutput, error)
	PurgeQueue(ctx context.Context, params *sqs.PurgeQueueInput, optFns ...func(*sqs.Options)) (*sqs.PurgeQueueOutput, error)
	SendMessageBatch(ctx context.Context, params *sqs.SendMessageBatchInput, optFns ...func(*sqs.Options)) (*sqs.SendMessageBatchOutput, error)
}

var (
	_ DemoS3API  = (*s3.Client)(nil)
	_ DemoSQSAPI = (*sqs.Client)(nil)
)

// DemoFor names the demo's bucket (<prefix>-demo) and work queue (<prefix>-demo-work).
func DemoFor(prefix string) Demo {
	return Demo{Bucket: prefix + "-demo", Queue: prefix + "-demo-work"}
}

// SeedDemo is SeedDemo on the stack's clients.
func (s *Stack) SeedDemo(ctx context.Context, n int) (Demo, error) {
	return SeedDemo(ctx, s.S3, s.SQS, s.Topology.Prefix, n)
}

// SeedDemo puts n small text files under input/ in <prefix>-demo and one work item per
// file on the queue <prefix>-demo-work. It can run again: the bucket is reused, the files
// are rewritten and the work queue is emptied first, so it holds exactly n items.
func SeedDemo(ctx context.Context, s3c DemoS3API, sqsc DemoSQSAPI, prefix string, n int) (Demo, error) {
	d := DemoFor(prefix)
	if n < 1 || n > MaxDemoFiles {
		return d, fmt.Errorf("demo files: want 1 to %d, got %d", MaxDemoFiles, n)
	}
	if err := createBucket(ctx, s3c, d.Bucket); err != nil {
		return d, fmt.Errorf("creating demo bucket: %w", err)
	}
	q, err := sqsc.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(d.Queue),
		Attributes: map[string]string{"VisibilityTimeout": "30"}})
	if err != nil {
		return d, fmt.Errorf("creating work queue: %w", err)
	}
	if _, err := sqsc.PurgeQueue(ctx, &sqs.PurgeQueueInput{QueueUrl: q.QueueUrl}); err != nil {
		return d, fmt.Errorf("emptying work queue %s: %w", d.Queue, err)
	}
	var batch []sqstypes.SendMessageBatchRequestEntry
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		out, err := sqsc.SendMessageBatch(ctx, &sqs.SendMessageBatchInput{QueueUrl: q.QueueUrl, Entries: batch})
		if err == nil && len(out.Failed) > 0 {
			err = fmt.Errorf("%d work items not queued: %s", len(out.Failed), aws.ToString(out.Failed[0].Message))
		}
		batch = batch[:0]
		return err
	}
	for i := range n {
		key := fmt.Sprintf("input/file-%03d.txt", i)
		var b strings.Builder
		for l := 0; l <= i%7; l++ {
			fmt.Fprintf(&b, "file %d line %d\n", i, l)
		}
		if _, err := s3c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(d.Bucket), Key: aws.String(key),
			Body: strings.NewReader(b.String()), ServerSideEncryption: s3types.ServerSideEncryptionAwsKms}); err != nil {
			return d, fmt.Errorf("seeding %s: %w", key, err)
		}
		body, err := worker.WorkItem{Key: key}.Encode()
		if err != nil {
			return d, err
		}
		batch = append(batch, sqstypes.SendMessageBatchRequestEntry{Id: aws.String(fmt.Sprint(i)), MessageBody: aws.String(body)})
		if len(batch) == 10 {
			if err := flush(); err != nil {
				return d, err
			}
		}
		d.Keys = append(d.Keys, key)
	}
	return d, flush()
}

// createBucket creates a bucket, or keeps it when this account already owns it.
func createBucket(ctx context.Context, s3c DemoS3API, bucket string) error {
	_, err := s3c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)})
	if err != nil && awsx.ErrorCode(err) != "BucketAlreadyOwnedByYou" {
		return err
	}
	return nil
}

// DemoJob is the job `sortie dev` submits: the demo template, the time-scaled profile, the
// demo worker recipe, work sized by the work queue's depth, a 20-second deadline.
func DemoJob(d Demo, jobID, correlationID string, now time.Time) events.JobSubmitted {
	return events.JobSubmitted{
		Header:          events.NewHeader(jobID, correlationID, now),
		Template:        "demo",
		Profile:         "demo-fast",
		Recipe:          "demo-worker",
		Work:            events.WorkSource{Queue: d.Queue},
		DeadlineSeconds: 20,
		Params:          map[string]string{"bucket": d.Bucket, "queue": d.Queue},
	}
}

// Trace is what a watcher saw of one job, stage by stage.
type Trace struct {
	Planned      *events.FleetPlanned
	Launched     *events.FleetLaunched
	Bootstrapped *events.FleetBootstrapped
	Finished     *events.JobFinished
	Terminated   *events.FleetTerminated
	Tasks        int // TaskReported events seen
}

// Follow watches jobID until its fleet is terminated, recording each stage and writing a
// line per event (TaskReported summarised) to out.
func Follow(ctx context.Context, w *watch.Watcher, jobID string, out io.Writer) (Trace, error) {
	var t Trace
	start := time.Now()
	_, err := w.Follow(ctx, jobID, func(ev events.Event) {
		switch e := ev.(type) {
		case events.FleetPlanned:
			t.Planned = &e
		case events.FleetLaunched:
			t.Launched = &e
		case events.FleetBootstrapped:
			t.Bootstrapped = &e
		case events.JobFinished:
			t.Finished = &e
		case events.FleetTerminated:
			t.Terminated = &e
		case events.TaskReported:
			t.Tasks++
			if t.Tasks%50 != 0 {
				return
			}
			fmt.Fprintf(out, "%6.1fs  TaskReported       %d tasks reported so far\n", time.Since(start).Seconds(), t.Tasks)
			return
		}
		fmt.Fprintf(out, "%6.1fs  %s\n", time.Since(start).Seconds(), watch.Describe(ev))
	})
	return t, err
}

// PrintSummary is PrintSummary with the stack's CloudWatch client.
func (s *Stack) PrintSummary(ctx context.Context, out io.Writer, t Trace, submitted time.Time) error {
	return PrintSummary(ctx, s.CW, out, t, submitted)
}

// PrintSummary writes the job's plan, instances, task totals (read from CloudWatch through
// cw), archives and instance-seconds.
func PrintSummary(ctx context.Context, cw metrics.StatisticsAPI, out io.Writer, t Trace, submitted time.Time) error {
	if t.Planned != nil {
		fmt.Fprintf(out, "\nplan:        %s\n", t.Planned.Rationale)
	}
	if t.Launched != nil {
		fmt.Fprintf(out, "instances:   ")
		for i, in := range t.Launched.Instances {
			if i > 0 {
				fmt.Fprint(out, ", ")
			}
			fmt.Fprintf(out, "%s (%s)", in.ID, in.InstanceType)
		}
		fmt.Fprintln(out)
	}
	jobID := ""
	if t.Terminated != nil {
		jobID = t.Terminated.JobID
	}
	totals, err := metrics.JobTotals(ctx, cw, jobID, submitted.Add(-time.Minute), time.Now().Add(time.Minute))
	if err != nil {
		return fmt.Errorf("reading task metrics: %w", err)
	}
	fmt.Fprintf(out, "tasks:       %d succeeded, %d failed (CloudWatch %s/%s, %s)\n", totals.Succeeded, totals.Failed,
		metrics.Namespace, metrics.TasksSucceeded, metrics.TasksFailed)
	if t.Finished != nil {
		fmt.Fprintf(out, "outcome:     %s", t.Finished.Outcome)
		if t.Finished.Reason != "" {
			fmt.Fprintf(out, " (%s)", t.Finished.Reason)
		}
		fmt.Fprintln(out)
		if len(t.Finished.LogTail) > 0 {
			fmt.Fprintf(out, "failing log (%s, last %d lines):\n  %s\n", t.Finished.FailingInstance, len(t.Finished.LogTail), strings.Join(t.Finished.LogTail, "\n  "))
		}
	}
	if t.Terminated != nil {
		keys := make([]string, 0, len(t.Terminated.Archives))
		for _, a := range t.Terminated.Archives {
			keys = append(keys, fmt.Sprintf("s3://%s/%s (%d bytes)", a.Bucket, a.Key, a.SizeBytes))
		}
		sort.Strings(keys)
		fmt.Fprintf(out, "archives:    %s\n", strings.Join(keys, "\n             "))
		fmt.Fprintf(out, "terminated:  %d instances, %.1f instance-seconds, cost $%.6f (planned $%.6f)\n", len(t.Terminated.TerminatedInstanceIDs),
			t.Terminated.InstanceSeconds, t.Terminated.Cost, t.Terminated.PlannedCost)
	}
	return nil
}
