package planner

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/service"
)

// TestPlannerOnLocalCloud runs the planner against the local cloud: real SNS/SQS messages
// in, a real FleetPlanned (or a DLQ entry) out, with work measured from a real queue and
// a real bucket.
func TestPlannerOnLocalCloud(t *testing.T) {
	s := cloudtest.NewStack(t, cloudtest.NewCloud(t, localcloud.Options{}))

	// The demo's work: 202 objects under a prefix and 202 messages in a work queue.
	bucket := s.Topology.Prefix + "-demo"
	work := s.Topology.Prefix + "-work"
	seedWork(t, s, bucket, "files/", work, 202)

	plans := s.Subscribe(t, bus.FleetPlanned)
	s.Serve(t, func(ctx context.Context) error {
		return Run(ctx, Config{Base: service.Base{Prefix: s.Topology.Prefix}}, s.Deps(opsconfig.Default()))
	})

	job := func(id string, f func(*events.JobSubmitted)) events.JobSubmitted {
		j := demoJob()
		j.Header = events.NewHeader(id, "corr-"+id, time.Now())
		j.Params = map[string]string{"bucket": bucket, "queue": work}
		if f != nil {
			f(&j)
		}
		return j
	}
	publishRaw := func(t *testing.T, id, body string) {
		t.Helper()
		if err := s.Publisher.PublishBody(t.Context(), events.JobSubmitted{Header: events.Header{JobID: id}}, []byte(body)); err != nil {
			t.Fatalf("publishing %s: %v", id, err)
		}
	}

	t.Run("the demo job is planned: 3 × m3.medium", func(t *testing.T) {
		s.Publish(t, job("demo-count", nil))
		s.Publish(t, job("demo-queue", func(j *events.JobSubmitted) { j.Work = events.WorkSource{Queue: work} }))
		s.Publish(t, job("demo-s3", func(j *events.JobSubmitted) {
			j.Work = events.WorkSource{S3: &events.S3Prefix{Bucket: bucket, Prefix: "files/"}}
		}))
		want := []string{"demo-count", "demo-queue", "demo-s3"}
		got := cloudtest.Collect(t, s.SQS, plans, 20*time.Second, cloudtest.HasAll(1, want...))
		nonces := map[string]string{}
		for _, id := range want {
			ms, ok := got[id]
			if !ok {
				t.Errorf("no FleetPlanned for %s (got %v)", id, slices.Sorted(maps.Keys(got)))
				continue
			}
			m := ms[0]
			if len(ms) != 1 {
				t.Errorf("%s: %d FleetPlanned, want 1", id, len(ms))
			}
			plan, err := events.DecodeFleetPlanned([]byte(aws.ToString(m.Body)))
			if err != nil {
				t.Fatalf("%s: %v", id, err)
			}
			if plan.Items != 202 || plan.Count != 3 || plan.InstanceType != "m3.medium" || !plan.MeetsDeadline {
				t.Errorf("%s: planned %d × %s for %d items (meets %t): %s", id, plan.Count, plan.InstanceType, plan.Items, plan.MeetsDeadline, plan.Rationale)
			}
			if plan.FleetID != id || plan.PlanRevision != 1 || plan.CorrelationID != "corr-"+id {
				t.Errorf("%s: fleet %q revision %d correlation %q", id, plan.FleetID, plan.PlanRevision, plan.CorrelationID)
			}
			// Every plan carries its own nonce for the fleet's host key.
			if plan.Nonce == "" || nonces[plan.Nonce] != "" {
				t.Errorf("%s: nonce %q (already %q's): want a fresh one per plan", id, plan.Nonce, nonces[plan.Nonce])
			}
			nonces[plan.Nonce] = id
			if cloudtest.Attr(m, bus.AttrEventType) != bus.FleetPlanned {
				t.Errorf("%s: event_type attribute %q", id, cloudtest.Attr(m, bus.AttrEventType))
			}
		}
	})

	t.Run("delayed messages in the work queue count as work", func(t *testing.T) {
		q, err := s.SQS.CreateQueue(t.Context(), &sqs.CreateQueueInput{QueueName: aws.String(s.Topology.Prefix + "-delayed")})
		if err != nil {
			t.Fatal(err)
		}
		for i := range 8 {
			in := &sqs.SendMessageInput{QueueUrl: q.QueueUrl, MessageBody: aws.String(fmt.Sprint(i))}
			if i < 5 {
				in.DelaySeconds = 900 // not visible during the test
			}
			if _, err := s.SQS.SendMessage(t.Context(), in); err != nil {
				t.Fatal(err)
			}
		}
		s.Publish(t, job("delayed", func(j *events.JobSubmitted) { j.Work = events.WorkSource{Queue: s.Topology.Prefix + "-delayed"} }))
		got := cloudtest.Collect(t, s.SQS, plans, 20*time.Second, cloudtest.HasAll(1, "delayed"))
		plan, err := events.DecodeFleetPlanned([]byte(aws.ToString(got["delayed"][0].Body)))
		if err != nil {
			t.Fatal(err)
		}
		if plan.Items != 8 {
			t.Errorf("planned %d items, want 8 (3 visible + 5 delayed): %s", plan.Items, plan.Rationale)
		}
	})

	t.Run("bad jobs go to the DLQ with their reason and plan nothing", func(t *testing.T) {
		valid := string(cloudtest.Encode(t, job("bad-raw", nil)))
		bad := map[string]string{ // job id → the reason the DLQ entry must give
			"bad-template": `unknown template "x"`,
			"bad-hostile":  `parameter "bucket": value "\"; rm -rf ~\"" does not match`,
			"bad-queue":    fmt.Sprintf(`work queue %q does not exist`, s.Topology.Prefix+"-nope"),
			"bad-bucket":   fmt.Sprintf(`work bucket %q (s3://%s/files/) does not exist`, s.Topology.Prefix+"-nope", s.Topology.Prefix+"-nope"),
			"bad-empty":    fmt.Sprintf(`nothing to do: s3://%s/none/ holds no work items`, bucket),
			"bad-count0":   "work: must set exactly one of count, queue, s3, got none",
			"bad-deadline": "deadline_seconds: must be",
			"bad-json":     "malformed JSON",
			"bad-late":     "the deadline cannot be met at any size (not best effort): 202 items, ",
		}
		// Submitted 19.5 s ago with a 20 s deadline: the boot alone takes what is left.
		late := job("bad-late", nil)
		late.Time = time.Now().Add(-19500 * time.Millisecond)
		s.Publish(t, late)
		s.Publish(t, job("bad-template", func(j *events.JobSubmitted) { j.Template = "x" }))
		s.Publish(t, job("bad-hostile", func(j *events.JobSubmitted) { j.Params["bucket"] = `"; rm -rf ~"` }))
		s.Publish(t, job("bad-queue", func(j *events.JobSubmitted) { j.Work = events.WorkSource{Queue: s.Topology.Prefix + "-nope"} }))
		s.Publish(t, job("bad-bucket", func(j *events.JobSubmitted) {
			j.Work = events.WorkSource{S3: &events.S3Prefix{Bucket: s.Topology.Prefix + "-nope", Prefix: "files/"}}
		}))
		s.Publish(t, job("bad-empty", func(j *events.JobSubmitted) {
			j.Work = events.WorkSource{S3: &events.S3Prefix{Bucket: bucket, Prefix: "none/"}}
		}))
		publishRaw(t, "bad-count0", strings.Replace(strings.Replace(valid, `"count":202`, `"count":0`, 1), "bad-raw", "bad-count0", 1))
		publishRaw(t, "bad-deadline", strings.Replace(strings.Replace(valid, `"deadline_seconds":20`, `"deadline_seconds":-20`, 1), "bad-raw", "bad-deadline", 1))
		publishRaw(t, "bad-json", `{"job_id": "bad-json", `)

		dlq := bus.DLQName(s.Topology.QueueName(bus.Planner, bus.JobSubmitted))
		got := cloudtest.DeadLetters(t, s.SQS, dlq, 20*time.Second, slices.Collect(maps.Keys(bad))...)
		for id, reason := range bad {
			ms := got[id] // DeadLetters fails the test unless every id is there
			if len(ms) != 1 {
				t.Errorf("%s: in the DLQ %d times, want once", id, len(ms))
			}
			if r := ms[0].Reason; !strings.Contains(r, reason) {
				t.Errorf("%s: %s = %q, want it to contain %q", id, bus.AttrError, r, reason)
			}
		}
		// Every bad job was dead-lettered after its handler returned, so a FleetPlanned for
		// one of them would already be queued.
		leaked := cloudtest.Collect(t, s.SQS, plans, time.Second, nil)
		for id := range leaked {
			if _, isBad := bad[id]; isBad {
				t.Errorf("FleetPlanned published for bad job %s", id)
			}
		}
	})
}

// seedWork puts n objects under prefix in a new bucket and n messages in a new queue.
func seedWork(t *testing.T, s *cloudtest.Stack, bucket, prefix, queue string, n int) {
	t.Helper()
	ctx := t.Context()
	if _, err := s.S3.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if _, err := s.S3.PutObject(ctx, &s3.PutObjectInput{
			Bucket: aws.String(bucket), Key: aws.String(fmt.Sprintf("%s%04d.txt", prefix, i)), Body: strings.NewReader("line\n"),
		}); err != nil {
			t.Fatal(err)
		}
	}
	q, err := s.SQS.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(queue)})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i += 10 {
		var entries []sqstypes.SendMessageBatchRequestEntry
		for j := i; j < min(i+10, n); j++ {
			entries = append(entries, sqstypes.SendMessageBatchRequestEntry{Id: aws.String(fmt.Sprint(j)), MessageBody: aws.String(fmt.Sprintf("%s%04d.txt", prefix, j))})
		}
		out, err := s.SQS.SendMessageBatch(ctx, &sqs.SendMessageBatchInput{QueueUrl: q.QueueUrl, Entries: entries})
		if err != nil || len(out.Failed) > 0 {
			t.Fatalf("seeding the work queue: %v %v", err, out)
		}
	}
}
