package planner

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/smithy-go"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
)

var (
	submitted = time.Date(2025, 3, 14, 9, 26, 53, 0, time.UTC)
	planned   = submitted.Add(2 * time.Second)
)

// demoJob is the `sortie dev` job: the demo template, the time-scaled profile, the
// demo worker recipe.
func demoJob() events.JobSubmitted {
	return events.JobSubmitted{
		Header:          events.NewHeader("job-demo", "corr-demo", submitted),
		Template:        "demo",
		Profile:         "demo-fast",
		Recipe:          "demo-worker",
		Work:            events.WorkSource{Count: 202},
		DeadlineSeconds: 20,
		Params:          map[string]string{"bucket": "sortie-demo", "queue": "sortie-demo-work"},
	}
}

// seedJob is the seed's vector: 202 files, one m3.medium does 100 per 10 minutes, a
// 10-minute deadline.
func seedJob() events.JobSubmitted {
	j := demoJob()
	j.Profile = "files"
	j.DeadlineSeconds = 600
	return j
}

func with(j events.JobSubmitted, f func(*events.JobSubmitted)) events.JobSubmitted {
	f(&j)
	return j
}

// noShared is an ops config whose template and profile share no instance type.
const noShared = `
templates:
  t:
    ami: ami-0123456789abcdef0
    instance_types: [c5.large]
    subnets: [subnet-0123456789abcdef0]
    security_groups: [sg-0123456789abcdef0]
    instance_profile: p
    key_name: k
    min_instances: 1
    max_instances: 2
    ttl: 1h
profiles:
  p:
    m3.medium: {items_per_minute: 10, boot_seconds: 0, hourly_price: 0.1}
recipes:
  r:
    steps:
      - name: x
        run: {argv: ["true"]}
`

func TestResolve(t *testing.T) {
	ops := opsconfig.Default()
	tests := []struct {
		name      string
		ops       *opsconfig.Config
		job       events.JobSubmitted
		wantTypes []string // candidates, in the template's order
		wantErrs  []string // every one must appear in the error
	}{
		{name: "demo job", job: demoJob(), wantTypes: []string{"m3.medium", "c5.large"}},
		{name: "seed profile has only m3.medium", job: seedJob(), wantTypes: []string{"m3.medium"}},
		{
			name:     "unknown template",
			job:      with(demoJob(), func(j *events.JobSubmitted) { j.Template = "x" }),
			wantErrs: []string{`unknown template "x"`},
		},
		{
			name:     "unknown profile",
			job:      with(demoJob(), func(j *events.JobSubmitted) { j.Profile = "gpu" }),
			wantErrs: []string{`unknown profile "gpu"`},
		},
		{
			name:     "unknown recipe",
			job:      with(demoJob(), func(j *events.JobSubmitted) { j.Recipe = "mine" }),
			wantErrs: []string{`unknown recipe "mine"`},
		},
		{
			name:     "hostile parameter",
			job:      with(demoJob(), func(j *events.JobSubmitted) { j.Params = map[string]string{"bucket": `"; rm -rf ~"`, "queue": "q"} }),
			wantErrs: []string{`recipe "demo-worker": parameter "bucket": value "\"; rm -rf ~\"" does not match`},
		},
		{
			name:     "missing and unknown parameters",
			job:      with(demoJob(), func(j *events.JobSubmitted) { j.Params = map[string]string{"ami": "ami-1"} }),
			wantErrs: []string{`parameter "ami": unknown parameter`, `parameter "bucket": required`, `parameter "queue": required`},
		},
		{
			name:     "every problem at once",
			job:      with(demoJob(), func(j *events.JobSubmitted) { j.Template, j.Profile, j.Recipe = "a", "b", "c" }),
			wantErrs: []string{`unknown template "a"`, `unknown profile "b"`, `unknown recipe "c"`},
		},
		{
			name:     "template and profile share no type",
			ops:      mustParse(t, noShared),
			job:      with(demoJob(), func(j *events.JobSubmitted) { j.Template, j.Profile, j.Recipe, j.Params = "t", "p", "r", nil }),
			wantErrs: []string{`template "t" and profile "p" share no instance type`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := ops
			if tt.ops != nil {
				o = tt.ops
			}
			sel, err := resolve(o, tt.job, "sortie-secrets")
			if len(tt.wantErrs) > 0 {
				if err == nil {
					t.Fatal("resolve accepted the job")
				}
				if !bus.IsPermanent(err) {
					t.Errorf("error %v is not permanent", err)
				}
				for _, want := range tt.wantErrs {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q lacks %q", err, want)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var types []string
			for _, c := range sel.Candidates {
				types = append(types, c.InstanceType)
			}
			if fmt.Sprint(types) != fmt.Sprint(tt.wantTypes) {
				t.Errorf("candidates %v, want %v", types, tt.wantTypes)
			}
			if sel.Template.AMI == "" {
				t.Error("template not returned")
			}
		})
	}
}

func mustParse(t *testing.T, yaml string) *opsconfig.Config {
	t.Helper()
	c, err := opsconfig.Parse([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestBuildPlan(t *testing.T) {
	ops := opsconfig.Default()
	tests := []struct {
		name          string
		job           events.JobSubmitted
		items         int
		wantType      string
		wantCount     int
		wantMeets     bool
		wantRationale string // a prefix
		wantErr       string
	}{
		{
			name: "seed vector: 202 files, 10/min, 10 min deadline → 3 not 2", job: seedJob(), items: 202,
			wantType: "m3.medium", wantCount: 3, wantMeets: true,
			// 3 × $0.067 an hour for 60 s + 202 / 30 min = 464 s: $0.0259.
			wantRationale: "202 items, 10/min per m3.medium, 60 s boot, 10 min deadline, 10.0 min left after 2.0 s waiting → 3 instances, ≈6.7 min + 60 s boot, $0.0259",
		},
		{
			name: "demo profile: cheaper 3 × m3.medium over 2 × c5.large", job: demoJob(), items: 202,
			wantType: "m3.medium", wantCount: 3, wantMeets: true,
			wantRationale: "202 items, 300/min per m3.medium, 1 s boot, 20 s deadline, 18.0 s left after 2.0 s waiting → 3 instances, ≈13.5 s + 1 s boot",
		},
		{
			name: "one item: the template's minimum", job: demoJob(), items: 1,
			wantType: "m3.medium", wantCount: 1, wantMeets: true,
		},
		{
			name: "deadline out of reach, best effort: plan the template's max and say so",
			job:  with(seedJob(), func(j *events.JobSubmitted) { j.DeadlineSeconds = 120; j.BestEffort = true }), items: 5000,
			wantType: "m3.medium", wantCount: 10, wantMeets: false,
			wantRationale: "5000 items, 10/min per m3.medium, 60 s boot, 2 min deadline, 2.0 min left after 2.0 s waiting: no candidate meets it within max 10",
		},
		{
			name: "deadline out of reach: rejected with the arithmetic",
			job:  with(seedJob(), func(j *events.JobSubmitted) { j.DeadlineSeconds = 120 }), items: 5000,
			wantErr: "the deadline cannot be met at any size (not best effort): 5000 items, 10/min per m3.medium, 60 s boot, 2 min deadline, 2.0 min left after 2.0 s waiting: no candidate meets it within max 10; 518 instances needed",
		},
		{
			// Submitted 8 min before planning: 2 min left, 1 min of it to work after boot.
			name: "waited 8 of its 10 minutes: planned on the 2 minutes left",
			job:  with(seedJob(), func(j *events.JobSubmitted) { j.Time = planned.Add(-8 * time.Minute) }), items: 50,
			wantType: "m3.medium", wantCount: 5, wantMeets: true,
			wantRationale: "50 items, 10/min per m3.medium, 60 s boot, 10 min deadline, 2.0 min left after 8.0 min waiting → 5 instances, ≈1.0 min + 60 s boot",
		},
		{
			// Submitted 9.5 min before planning: boot alone takes what is left.
			name: "waited past the point where any size can make it: rejected",
			job:  with(seedJob(), func(j *events.JobSubmitted) { j.Time = planned.Add(-570 * time.Second) }), items: 50,
			wantErr: "the deadline cannot be met at any size (not best effort): 50 items, 10/min per m3.medium, 60 s boot, 10 min deadline, 30.0 s left after 9.5 min waiting: no candidate meets it within max 10; boot alone takes the deadline",
		},
		{
			name: "waited past its deadline, best effort: planned at max, late",
			job:  with(seedJob(), func(j *events.JobSubmitted) { j.Time = planned.Add(-11 * time.Minute); j.BestEffort = true }), items: 50,
			wantType: "m3.medium", wantCount: 10, wantMeets: false,
			wantRationale: "50 items, 10/min per m3.medium, 60 s boot, 10 min deadline, none left after 11.0 min waiting: no candidate meets it within max 10; the deadline has passed",
		},
		{name: "nothing to do", job: demoJob(), items: 0, wantErr: "nothing to do: the job's count holds no work items"},
		{
			name: "nothing in the queue", job: with(demoJob(), func(j *events.JobSubmitted) { j.Work = events.WorkSource{Queue: "work"} }),
			items: 0, wantErr: `nothing to do: work queue "work" holds no work items`,
		},
		{name: "too many items", job: demoJob(), items: events.MaxItems + 1, wantErr: "more than the 10000000 one job may process"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sel, err := resolve(ops, tt.job, "sortie-secrets")
			if err != nil {
				t.Fatal(err)
			}
			got, err := buildPlan(tt.job, sel, tt.items, planned)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !bus.IsPermanent(err) {
					t.Fatalf("error %v, want a permanent one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.InstanceType != tt.wantType || got.Count != tt.wantCount || got.MeetsDeadline != tt.wantMeets {
				t.Errorf("planned %d × %s (meets deadline %t), want %d × %s (%t); %s",
					got.Count, got.InstanceType, got.MeetsDeadline, tt.wantCount, tt.wantType, tt.wantMeets, got.Rationale)
			}
			if !strings.HasPrefix(got.Rationale, tt.wantRationale) {
				t.Errorf("rationale %q, want it to start %q", got.Rationale, tt.wantRationale)
			}
			// The planned cost is the one the rationale states.
			if c := fmt.Sprintf("$%.4f", got.PlannedCost); got.PlannedCost <= 0 || !strings.Contains(got.Rationale, c) {
				t.Errorf("planned cost %v: want > 0 and %s in the rationale %q", got.PlannedCost, c, got.Rationale)
			}
			// The carried fields and the plan's identity.
			j := tt.job
			if got.FleetID != j.JobID || got.PlanRevision != 1 || got.JobID != j.JobID || got.CorrelationID != j.CorrelationID {
				t.Errorf("identity: fleet %q rev %d job %q corr %q", got.FleetID, got.PlanRevision, got.JobID, got.CorrelationID)
			}
			if !got.SubmittedAt.Equal(tt.job.Time) || !got.Time.Equal(planned) {
				t.Errorf("submitted_at %s (want the job's time %s), time %s (want %s)", got.SubmittedAt, tt.job.Time, got.Time, planned)
			}
			if got.Template != j.Template || got.Profile != j.Profile || got.Recipe != j.Recipe ||
				got.DeadlineSeconds != j.DeadlineSeconds || fmt.Sprint(got.Params) != fmt.Sprint(j.Params) || got.Items != tt.items {
				t.Errorf("carried fields differ: %+v", got)
			}
			if !got.DeadlineAt().Equal(j.Time.Add(j.Deadline())) {
				t.Errorf("deadline at %s", got.DeadlineAt())
			}
			if _, err := events.Encode(got); err != nil {
				t.Errorf("the plan does not validate: %v", err)
			}
		})
	}
}

// apiError is an AWS error with a code, as the SDK returns it.
func apiError(code string) error {
	return &smithy.GenericAPIError{Code: code, Message: code + " (test)"}
}

// fakeQueues answers GetQueueUrl and GetQueueAttributes for one queue.
type fakeQueues struct {
	name              string
	visible, inFlight string
	delayed           string
	urlErr, attrErr   error
	asked             []string
}

var _ QueueAPI = (*fakeQueues)(nil)

func (f *fakeQueues) GetQueueUrl(_ context.Context, in *sqs.GetQueueUrlInput, _ ...func(*sqs.Options)) (*sqs.GetQueueUrlOutput, error) {
	if f.urlErr != nil {
		return nil, f.urlErr
	}
	if aws.ToString(in.QueueName) != f.name {
		return nil, apiError("AWS.SimpleQueueService.NonExistentQueue")
	}
	return &sqs.GetQueueUrlOutput{QueueUrl: aws.String("http://localhost:4566/000000000000/" + f.name)}, nil
}

func (f *fakeQueues) GetQueueAttributes(_ context.Context, in *sqs.GetQueueAttributesInput, _ ...func(*sqs.Options)) (*sqs.GetQueueAttributesOutput, error) {
	if f.attrErr != nil {
		return nil, f.attrErr
	}
	if !strings.HasSuffix(aws.ToString(in.QueueUrl), "/"+f.name) {
		return nil, fmt.Errorf("asked for %s", aws.ToString(in.QueueUrl))
	}
	attrs := map[string]string{}
	for _, a := range in.AttributeNames {
		f.asked = append(f.asked, string(a))
		switch a {
		case "ApproximateNumberOfMessages":
			attrs[string(a)] = f.visible
		case "ApproximateNumberOfMessagesNotVisible":
			attrs[string(a)] = f.inFlight
		case "ApproximateNumberOfMessagesDelayed":
			attrs[string(a)] = f.delayed
		}
	}
	return &sqs.GetQueueAttributesOutput{Attributes: attrs}, nil
}

// fakeBucket lists keys in pages of pageSize, honouring the continuation token.
type fakeBucket struct {
	bucket   string
	keys     []string
	pageSize int
	err      error
	calls    int
}

var _ BucketAPI = (*fakeBucket)(nil)

func (f *fakeBucket) ListObjectsV2(_ context.Context, in *s3.ListObjectsV2Input, _ ...func(*s3.Options)) (*s3.ListObjectsV2Output, error) {
	f.calls++
	if f.err != nil {
		return nil, f.err
	}
	if aws.ToString(in.Bucket) != f.bucket {
		return nil, apiError("NoSuchBucket")
	}
	var matching []string
	for _, k := range f.keys {
		if strings.HasPrefix(k, aws.ToString(in.Prefix)) {
			matching = append(matching, k)
		}
	}
	start := 0
	if in.ContinuationToken != nil {
		start, _ = strconv.Atoi(*in.ContinuationToken)
	}
	end := min(start+f.pageSize, len(matching))
	out := &s3.ListObjectsV2Output{KeyCount: aws.Int32(int32(end - start))}
	for _, k := range matching[start:end] {
		out.Contents = append(out.Contents, s3types.Object{Key: aws.String(k)})
	}
	if end < len(matching) {
		out.IsTruncated = aws.Bool(true)
		out.NextContinuationToken = aws.String(strconv.Itoa(end))
	}
	return out, nil
}

func keys(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%04d.txt", prefix, i)
	}
	return out
}

func TestCountWork(t *testing.T) {
	files := append(append(keys("in/", 2202), "in/", "in/sub/"), keys("other/", 5)...) // 2 folder markers
	tests := []struct {
		name      string
		work      events.WorkSource
		queues    *fakeQueues
		bucket    *fakeBucket
		want      int
		wantPages int
		wantErr   string
		permanent bool
	}{
		{name: "explicit count", work: events.WorkSource{Count: 202}, want: 202},
		{
			name: "queue depth is visible plus in flight plus delayed", work: events.WorkSource{Queue: "work"},
			queues: &fakeQueues{name: "work", visible: "150", inFlight: "40", delayed: "12"}, want: 202,
		},
		{
			name: "only delayed messages are work too", work: events.WorkSource{Queue: "work"},
			queues: &fakeQueues{name: "work", visible: "0", inFlight: "0", delayed: "7"}, want: 7,
		},
		{
			name: "empty queue", work: events.WorkSource{Queue: "work"},
			queues: &fakeQueues{name: "work", visible: "0", inFlight: "0", delayed: "0"}, want: 0,
		},
		{
			name: "missing queue is permanent and named", work: events.WorkSource{Queue: "nope"},
			queues: &fakeQueues{name: "work"}, wantErr: `work queue "nope" does not exist`, permanent: true,
		},
		{
			name: "throttled queue is retried", work: events.WorkSource{Queue: "work"},
			queues: &fakeQueues{name: "work", attrErr: apiError("RequestThrottled")}, wantErr: `work queue "work"`,
		},
		{
			name: "access denied is permanent", work: events.WorkSource{Queue: "work"},
			queues: &fakeQueues{name: "work", urlErr: apiError("AccessDenied")}, wantErr: "AccessDenied", permanent: true,
		},
		{
			name: "garbage attribute", work: events.WorkSource{Queue: "work"},
			queues: &fakeQueues{name: "work", visible: "many", inFlight: "0", delayed: "0"}, wantErr: `ApproximateNumberOfMessages is "many", not a count`,
		},
		{
			name: "S3 prefix, three pages, folder markers skipped", work: events.WorkSource{S3: &events.S3Prefix{Bucket: "data", Prefix: "in/"}},
			bucket: &fakeBucket{bucket: "data", keys: files, pageSize: 1000}, want: 2202, wantPages: 3,
		},
		{
			name: "S3 whole bucket", work: events.WorkSource{S3: &events.S3Prefix{Bucket: "data"}},
			bucket: &fakeBucket{bucket: "data", keys: files, pageSize: 1000}, want: 2207, wantPages: 3,
		},
		{
			name: "S3 empty prefix", work: events.WorkSource{S3: &events.S3Prefix{Bucket: "data", Prefix: "none/"}},
			bucket: &fakeBucket{bucket: "data", keys: files, pageSize: 1000}, want: 0, wantPages: 1,
		},
		{
			name: "missing bucket is permanent and named", work: events.WorkSource{S3: &events.S3Prefix{Bucket: "gone", Prefix: "in/"}},
			bucket: &fakeBucket{bucket: "data"}, wantErr: `work bucket "gone" (s3://gone/in/) does not exist`, permanent: true,
		},
		{
			name: "S3 server error is retried", work: events.WorkSource{S3: &events.S3Prefix{Bucket: "data"}},
			bucket: &fakeBucket{bucket: "data", err: apiError("InternalError")}, wantErr: `work bucket "data"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var q QueueAPI
			if tt.queues != nil {
				q = tt.queues
			}
			var b BucketAPI
			if tt.bucket != nil {
				b = tt.bucket
			}
			got, err := countWork(context.Background(), q, b, tt.work)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				if bus.IsPermanent(err) != tt.permanent {
					t.Errorf("permanent = %t, want %t (%v)", bus.IsPermanent(err), tt.permanent, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("counted %d, want %d", got, tt.want)
			}
			if tt.queues != nil && fmt.Sprint(tt.queues.asked) != "[ApproximateNumberOfMessages ApproximateNumberOfMessagesNotVisible ApproximateNumberOfMessagesDelayed]" {
				t.Errorf("asked for attributes %v", tt.queues.asked)
			}
			if tt.bucket != nil && tt.bucket.calls != tt.wantPages {
				t.Errorf("listed %d pages, want %d", tt.bucket.calls, tt.wantPages)
			}
		})
	}
}

func TestHandle(t *testing.T) {
	body := func(j events.JobSubmitted) []byte { return cloudtest.Encode(t, j) }
	tests := []struct {
		name       string
		payload    []byte
		pubErr     error
		wantErr    string
		permanent  bool
		wantPlanID string
	}{
		{name: "demo job is planned", payload: body(demoJob()), wantPlanID: "job-demo"},
		{name: "invalid JSON", payload: []byte(`{"job_id":`), wantErr: "malformed JSON", permanent: true},
		{name: "count 0", payload: []byte(strings.Replace(string(body(demoJob())), `"count":202`, `"count":0`, 1)), wantErr: "work: must set exactly one", permanent: true},
		{name: "unknown template", payload: body(with(demoJob(), func(j *events.JobSubmitted) { j.Template = "x" })), wantErr: `planning job job-demo: unknown template "x"`, permanent: true},
		{name: "publish fails: retried", payload: body(demoJob()), pubErr: errors.New("sns down"), wantErr: "sns down"},
	}
	cloud := cloudtest.NewCloud(t, localcloud.Options{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pub := &cloudtest.Recorder{Err: tt.pubErr}
			h := handler{planner: &planner{ops: opsconfig.Default(), now: func() time.Time { return planned }}, pub: pub,
				ledger: cloudtest.NewStack(t, cloud).Ledger()}
			err := h.handle(context.Background(), &bus.Message{Payload: tt.payload})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				if bus.IsPermanent(err) != tt.permanent {
					t.Errorf("permanent = %t, want %t", bus.IsPermanent(err), tt.permanent)
				}
				if len(pub.Published) != 0 {
					t.Errorf("published %d events", len(pub.Published))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(pub.Published) != 1 {
				t.Fatalf("published %d events, want 1", len(pub.Published))
			}
			plan, ok := pub.Published[0].(events.FleetPlanned)
			if !ok || plan.FleetID != tt.wantPlanID || plan.Count != 3 {
				t.Errorf("published %#v", pub.Published[0])
			}
		})
	}
}

// TestHandleDuplicates: the same JobSubmitted handled by eight replicas at once, then
// redelivered, is planned once; a failed publish releases the claim so a redelivery plans.
func TestHandleDuplicates(t *testing.T) {
	cloud := cloudtest.NewCloud(t, localcloud.Options{})
	body := cloudtest.Encode(t, demoJob())
	newHandler := func(l *ledger.Ledger, pub *cloudtest.Recorder) handler {
		return handler{planner: &planner{ops: opsconfig.Default(), now: func() time.Time { return planned }}, pub: pub, ledger: l}
	}

	l := cloudtest.NewStack(t, cloud).Ledger()
	pub := &cloudtest.Recorder{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if err := newHandler(l, pub).handle(t.Context(), &bus.Message{Payload: body}); err != nil {
				t.Errorf("handle: %v", err)
			}
		})
	}
	wg.Wait()
	if err := newHandler(l, pub).handle(t.Context(), &bus.Message{Payload: body}); err != nil {
		t.Fatalf("redelivery: %v", err)
	}
	if len(pub.Published) != 1 {
		t.Fatalf("published %d FleetPlanned, want 1", len(pub.Published))
	}
	rec, err := l.Get(t.Context(), "job-demo")
	if err != nil {
		t.Fatal(err)
	}
	if rec.State() != string(ledger.Planned) || rec.Attrs["fleet_id"] == "" || rec.Attrs["instance_type"] == "" {
		t.Errorf("ledger record %v (state %s), want the plan recorded", rec.Attrs, rec.State())
	}

	l2 := cloudtest.NewStack(t, cloud).Ledger()
	failing := &cloudtest.Recorder{Err: errors.New("sns down")}
	if err := newHandler(l2, failing).handle(t.Context(), &bus.Message{Payload: body}); err == nil {
		t.Fatal("a failed publish returned nil")
	}
	pub2 := &cloudtest.Recorder{}
	if err := newHandler(l2, pub2).handle(t.Context(), &bus.Message{Payload: body}); err != nil || len(pub2.Published) != 1 {
		t.Fatalf("redelivery after a failed publish: %v, %d published; want the plan", err, len(pub2.Published))
	}
}

// A job planned twice (its first plan's publish failed, or on two stacks) gets two nonces:
// which key the fleet gets is settled by the provisioner, which keeps the nonce its
// instances were launched with. (A duplicate JobSubmitted is planned once: the ledger.)
func TestEveryPlanHasItsOwnNonce(t *testing.T) {
	pub := &cloudtest.Recorder{}
	cloud := cloudtest.NewCloud(t, localcloud.Options{})
	for range 2 {
		h := handler{planner: &planner{ops: opsconfig.Default(), now: func() time.Time { return planned }}, pub: pub,
			ledger: cloudtest.NewStack(t, cloud).Ledger()}
		if err := h.handle(context.Background(), &bus.Message{Payload: cloudtest.Encode(t, demoJob())}); err != nil {
			t.Fatal(err)
		}
	}
	if len(pub.Published) != 2 {
		t.Fatalf("published %d plans, want 2", len(pub.Published))
	}
	a, b := pub.Published[0].(events.FleetPlanned), pub.Published[1].(events.FleetPlanned)
	if a.Nonce == "" || a.Nonce == b.Nonce || a.FleetID != b.FleetID {
		t.Errorf("plans of %s/%s carry nonces %q and %q: want two different ones", a.FleetID, b.FleetID, a.Nonce, b.Nonce)
	}
}
