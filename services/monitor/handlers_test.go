package monitor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	cwtypes "github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/ec2events"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
	"github.com/sortie-fleet/sortie/pkg/metrics"
	"github.com/sortie-fleet/sortie/pkg/recipe"
	"github.com/sortie-fleet/sortie/pkg/service"
	"github.com/sortie-fleet/sortie/pkg/tags"
)

// Fakes of the monitor's dependencies, for its handlers' decisions.

type timer struct {
	delay time.Duration
	body  []byte
	attrs map[string]string
}

type fakePub struct {
	mu        sync.Mutex
	published []events.JobFinished
	lost      []events.InstanceLost
	timers    []timer
}

func (f *fakePub) Publish(_ context.Context, e events.Event) error {
	l, ok := e.(events.InstanceLost)
	if !ok {
		return fmt.Errorf("fake: publishing %T", e)
	}
	if err := l.Validate(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lost = append(f.lost, l)
	return nil
}

func (f *fakePub) PublishBody(_ context.Context, e bus.Event, body []byte) error {
	jf, err := events.DecodeJobFinished(body)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.published = append(f.published, jf)
	return nil
}

func (f *fakePub) After(_ context.Context, service string, delay time.Duration, body []byte, attrs map[string]string) error {
	if service != bus.Monitor {
		return errors.New("timer for " + service)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.timers = append(f.timers, timer{delay, body, attrs})
	return nil
}

// fakeEC2 describes every instance id it is asked about as running, of the stack and
// fleet the filters name, except the foreign ones (another stack's: never returned).
type fakeEC2 struct {
	states  map[string]ec2types.InstanceStateName
	stage   string
	foreign map[string]bool
	extra   map[string]string // tags every instance carries besides the filters'
	spot    bool              // every instance is a spot instance
	tags    []*ec2.CreateTagsInput
}

func (f *fakeEC2) DescribeInstances(_ context.Context, in *ec2.DescribeInstancesInput, _ ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error) {
	ids, filters := in.InstanceIds, map[string][]string{}
	for _, flt := range in.Filters {
		filters[aws.ToString(flt.Name)] = flt.Values
	}
	if v, ok := filters["instance-id"]; ok {
		ids = v
	}
	var r ec2types.Reservation
	for i, id := range ids {
		if f.foreign[id] {
			continue
		}
		st := f.states[id]
		if st == "" {
			st = ec2types.InstanceStateNameRunning
		}
		inst := ec2types.Instance{InstanceId: aws.String(id), State: &ec2types.InstanceState{Name: st}, PrivateIpAddress: aws.String(fmt.Sprintf("10.0.0.%d", i+10)), KeyName: aws.String("sortie-test")}
		for _, k := range []string{tags.Stack, tags.Fleet} {
			if v := filters["tag:"+k]; len(v) == 1 {
				inst.Tags = append(inst.Tags, ec2types.Tag{Key: aws.String(k), Value: aws.String(v[0])})
			}
		}
		if f.stage != "" {
			inst.Tags = append(inst.Tags, ec2types.Tag{Key: aws.String(tags.Stage), Value: aws.String(f.stage)})
		}
		if f.spot {
			inst.InstanceLifecycle = ec2types.InstanceLifecycleTypeSpot
		}
		for k, v := range f.extra {
			inst.Tags = append(inst.Tags, ec2types.Tag{Key: aws.String(k), Value: aws.String(v)})
		}
		r.Instances = append(r.Instances, inst)
	}
	return &ec2.DescribeInstancesOutput{Reservations: []ec2types.Reservation{r}}, nil
}

func (f *fakeEC2) GetConsoleOutput(context.Context, *ec2.GetConsoleOutputInput, ...func(*ec2.Options)) (*ec2.GetConsoleOutputOutput, error) {
	return nil, errors.New("fake: no console")
}

func (f *fakeEC2) CreateTags(_ context.Context, in *ec2.CreateTagsInput, _ ...func(*ec2.Options)) (*ec2.CreateTagsOutput, error) {
	f.tags = append(f.tags, in)
	return &ec2.CreateTagsOutput{}, nil
}

type fakeStats struct {
	sums map[string]float64
	err  error
}

func (f *fakeStats) GetMetricStatistics(_ context.Context, in *cloudwatch.GetMetricStatisticsInput, _ ...func(*cloudwatch.Options)) (*cloudwatch.GetMetricStatisticsOutput, error) {
	if f.err != nil {
		return nil, f.err
	}
	return &cloudwatch.GetMetricStatisticsOutput{Datapoints: []cwtypes.Datapoint{{Sum: aws.Float64(f.sums[aws.ToString(in.MetricName)])}}}, nil
}

type fakeSink struct {
	mu      sync.Mutex
	data    []metrics.Datum
	flushes int
}

func (f *fakeSink) Add(d metrics.Datum) { f.mu.Lock(); f.data = append(f.data, d); f.mu.Unlock() }
func (f *fakeSink) Flush(context.Context) error {
	f.mu.Lock()
	f.flushes++
	f.mu.Unlock()
	return nil
}

type fakeProber map[string]instanceCheck

func (f fakeProber) probe(_ context.Context, t target, _ []recipe.Workload, _ bool) instanceCheck {
	return f[t.ID]
}

var (
	_ publisher             = (*fakePub)(nil)
	_ ec2API                = (*fakeEC2)(nil)
	_ metrics.StatisticsAPI = (*fakeStats)(nil)
	_ metricsSink           = (*fakeSink)(nil)
	_ prober                = fakeProber(nil)
)

var clock = time.Date(2025, 3, 14, 9, 35, 0, 0, time.UTC)

type fakes struct {
	m     *monitor
	pub   *fakePub
	ec2   *fakeEC2
	stats *fakeStats
	sink  *fakeSink
}

func newFakes(t *testing.T, probes fakeProber) fakes {
	t.Helper()
	ops := cloudtest.LoadOps(t, "testdata/ops.yaml")
	f := fakes{pub: &fakePub{}, ec2: &fakeEC2{}, stats: &fakeStats{sums: map[string]float64{}}, sink: &fakeSink{}}
	f.m = &monitor{
		cfg:     Config{Base: service.Base{Prefix: "sortie"}, Interval: 30 * time.Second, Grace: time.Minute, Lease: 10 * time.Minute, MaxMisses: 3, Parallel: 4, Settle: 2 * time.Second}.WithDefaults(),
		ops:     ops,
		pub:     f.pub,
		ec2:     f.ec2,
		stats:   f.stats,
		metrics: f.sink,
		prober:  probes,
		now:     func() time.Time { return clock },
		ledger:  cloudtest.NewStack(t, cloudtest.NewCloud(t, localcloud.Options{})).Ledger(),
		fleets:  newFleetCache(4),
	}
	return f
}

func fleetEvent() events.FleetBootstrapped {
	e := bootstrapped(okInstance("i-0000000000000000a", "127.0.0.1:2201"), okInstance("i-0000000000000000b", "127.0.0.1:2202"))
	e.DeadlineAt = clock.Add(5 * time.Minute)
	return e
}

func TestCheckStillRunning(t *testing.T) {
	t.Parallel()
	f := newFakes(t, fakeProber{
		"i-0000000000000000a": {ID: "i-0000000000000000a", Steps: steps(running(), exited(0), exited(0))},
		"i-0000000000000000b": {ID: "i-0000000000000000b", Err: errors.New("connection refused")},
	})
	e := fleetEvent()
	b := cloudtest.Encode(t, e)
	if err := f.m.check(context.Background(), e, b, map[string]int{"i-0000000000000000b": 1}, nil); err != nil {
		t.Fatal(err)
	}
	if len(f.pub.published) != 0 || len(f.pub.timers) != 1 {
		t.Fatalf("published %d, timers %d: want the next check only", len(f.pub.published), len(f.pub.timers))
	}
	next := f.pub.timers[0]
	if next.delay != 30*time.Second || string(next.body) != string(b) || next.attrs[AttrTimer] != TimerCheck ||
		next.attrs[AttrMisses] != "i-0000000000000000b=2" {
		t.Errorf("next check %v %+v, want 30s, the same body, misses b=2", next.delay, next.attrs)
	}
	if len(f.ec2.tags) != 1 {
		t.Fatalf("%d CreateTags, want the lease refresh", len(f.ec2.tags))
	}
	tag := f.ec2.tags[0]
	if len(tag.Resources) != 2 || aws.ToString(tag.Tags[0].Key) != tags.LeaseExpires || aws.ToString(tag.Tags[0].Value) != "2025-03-14T09:45:00Z" {
		t.Errorf("lease refresh %v %s=%s, want both instances until now + 10m", tag.Resources, aws.ToString(tag.Tags[0].Key), aws.ToString(tag.Tags[0].Value))
	}
	if len(f.sink.data) != 1 || f.sink.data[0].Name != metrics.FleetInstancesAlive || f.sink.data[0].Value != 1 {
		t.Errorf("metrics %+v, want FleetInstancesAlive 1", f.sink.data)
	}
}

func TestCheckVerdictSettles(t *testing.T) {
	t.Parallel()
	f := newFakes(t, fakeProber{
		"i-0000000000000000a": {ID: "i-0000000000000000a", Steps: steps(exited(0))},
		"i-0000000000000000b": {ID: "i-0000000000000000b", Steps: steps(exited(2))},
	})
	e := fleetEvent()
	e.Params = map[string]string{"tag": "abc"}
	if err := f.m.check(context.Background(), e, cloudtest.Encode(t, e), nil, nil); err != nil {
		t.Fatal(err)
	}
	if len(f.pub.published) != 0 || len(f.pub.timers) != 1 || f.pub.timers[0].attrs[AttrTimer] != TimerSettle || f.pub.timers[0].delay != 2*time.Second {
		t.Fatalf("published %d, timers %+v: want one settle timer", len(f.pub.published), f.pub.timers)
	}
	if len(f.ec2.tags) != 0 {
		t.Errorf("leases refreshed for a finished job")
	}
	jf, err := events.DecodeJobFinished(f.pub.timers[0].body)
	if err != nil {
		t.Fatal(err)
	}
	if jf.Outcome != events.OutcomeFailed || jf.FailingInstance != "i-0000000000000000b" || jf.LogTail[0] != "tail of s0" {
		t.Errorf("settled verdict %+v", jf)
	}
	// The logs outside .sortie, rendered with the job's parameters, for the reaper.
	if !slices.Equal(jf.Logs, []string{"logs/side.log", "logs/abc.log"}) {
		t.Errorf("settled verdict logs %q, want logs/side.log and logs/abc.log", jf.Logs)
	}

	// The settle timer: totals read after a flush, then JobFinished and the finished stage.
	f.stats.sums[metrics.TasksSucceeded], f.stats.sums[metrics.TasksFailed] = 40, 2
	msg := &bus.Message{Payload: f.pub.timers[0].body, Attributes: map[string]string{AttrTimer: TimerSettle}, ReceiveCount: 1}
	if err := f.m.handleTimer(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	if f.sink.flushes != 1 || len(f.pub.published) != 1 {
		t.Fatalf("flushes %d, published %d", f.sink.flushes, len(f.pub.published))
	}
	got := f.pub.published[0]
	if got.TasksSucceeded != 40 || got.TasksFailed != 2 || got.Outcome != events.OutcomeFailed || !got.Time.Equal(clock) || !slices.Equal(got.Logs, jf.Logs) {
		t.Errorf("JobFinished %+v", got)
	}
	last := f.ec2.tags[len(f.ec2.tags)-1]
	if aws.ToString(last.Tags[0].Key) != tags.Stage || aws.ToString(last.Tags[0].Value) != StageFinished || len(last.Resources) != 2 {
		t.Errorf("last tags %+v, want stage finished on both", last)
	}
}

// watched starts watching e's planned job as handleBootstrapped does (the watching stage
// done, with what InstanceLost carries), and returns the armed check's body.
func watched(t *testing.T, f fakes, e events.FleetBootstrapped) []byte {
	t.Helper()
	// The planner planned the job first.
	c, err := f.m.ledger.Claim(context.Background(), e.JobID, ledger.Planned)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Done(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	b := cloudtest.Encode(t, e)
	if err := f.m.handleBootstrapped(context.Background(), &bus.Message{Payload: b, ReceiveCount: 1}); err != nil {
		t.Fatal(err)
	}
	f.pub.timers = nil
	return b
}

func TestCheckTerminatedInstanceIsLostNotFatal(t *testing.T) {
	t.Parallel()
	const a, b, c = "i-0000000000000000a", "i-0000000000000000b", "i-0000000000000000c"
	probes := fakeProber{a: {ID: a, Steps: steps(running(), exited(0), exited(0))}}
	f := newFakes(t, probes)
	e := fleetEvent()
	e.JobID, e.FleetID = cloudtest.Unique("job-lost"), e.JobID
	e.FleetID = e.JobID
	body := watched(t, f, e)
	f.ec2.states = map[string]ec2types.InstanceStateName{b: ec2types.InstanceStateNameTerminated}
	ctx := context.Background()
	l := f.m.ledger.(*ledger.Ledger)
	check := func() {
		t.Helper()
		f.pub.timers = nil
		if err := f.m.check(ctx, e, body, nil, nil); err != nil {
			t.Fatal(err)
		}
	}

	// b is gone: told once, not fatal; the next check is armed.
	check()
	if len(f.pub.lost) != 1 || len(f.pub.timers) != 1 || f.pub.timers[0].attrs[AttrTimer] != TimerCheck {
		t.Fatalf("lost %+v, timers %+v: want one InstanceLost and the next check", f.pub.lost, f.pub.timers)
	}
	got := f.pub.lost[0]
	if got.InstanceID != b || got.Cause != events.LostTerminated || got.HostKey != e.HostKey || got.KeyName != e.KeyName ||
		got.Template != e.Template || got.PlanRevision != 1 || !slices.Equal(got.Logs, []string{"logs/side.log"}) {
		t.Errorf("InstanceLost %+v", got)
	}
	rec, err := l.Get(ctx, e.JobID)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Lost()[b] != events.LostTerminated || !rec.LostSent(b) {
		t.Errorf("ledger lost %v, sent %v", rec.Lost(), rec.LostSent(b))
	}

	// Then a's workloads all exit 0, but the planner has not answered for b: no verdict.
	probes[a] = instanceCheck{ID: a, Steps: steps(exited(0), exited(0), exited(0))}
	check()
	if len(f.pub.lost) != 1 || len(f.pub.timers) != 1 || f.pub.timers[0].attrs[AttrTimer] != TimerCheck {
		t.Fatalf("lost %d, timers %+v: want no second InstanceLost and the next check (a replacement is pending)", len(f.pub.lost), f.pub.timers)
	}

	// The planner replaces b with revision 2; until it is bootstrapped, still no verdict.
	if err := l.CoverLost(ctx, e.JobID, []string{b}, "2"); err != nil {
		t.Fatal(err)
	}
	if err := l.SetRevisionState(ctx, e.JobID, 2, ledger.RevPlanned); err != nil {
		t.Fatal(err)
	}
	if err := l.Note(ctx, e.JobID, ledger.Fields{ledger.AttrPlanRevision: 2}); err != nil {
		t.Fatal(err)
	}
	check()
	if len(f.pub.timers) != 1 || f.pub.timers[0].attrs[AttrTimer] != TimerCheck {
		t.Fatalf("timers %+v: want the next check while revision 2 is on its way", f.pub.timers)
	}

	// Revision 2's instance c is bootstrapped (its own host key) and watched with a.
	r2 := bootstrapped(okInstance(c, "127.0.0.1:2203"))
	r2.JobID, r2.FleetID, r2.PlanRevision = e.JobID, e.FleetID, 2
	r2.HostKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA5EfU179m4Y/k1+KN0+/jjG6fLd6KHjDw33lU4cu1Qb"
	if err := f.m.handleBootstrapped(ctx, &bus.Message{Payload: cloudtest.Encode(t, r2), ReceiveCount: 1}); err != nil {
		t.Fatal(err)
	}
	probes[c] = instanceCheck{ID: c, Steps: steps(running(), exited(0), exited(0))}
	check()
	if len(f.pub.timers) != 1 || f.pub.timers[0].attrs[AttrTimer] != TimerCheck {
		t.Fatalf("timers %+v: want the next check while c runs", f.pub.timers)
	}
	if last := f.ec2.tags[len(f.ec2.tags)-1]; !slices.Equal(last.Resources, []string{a, c}) {
		t.Errorf("leases refreshed on %v, want a and the replacement c", last.Resources)
	}

	// c finishes: the job succeeds, naming the lost instance and its replacement; the
	// reaper is handed c with its own key.
	probes[c] = instanceCheck{ID: c, Steps: steps(exited(0), exited(0), exited(0))}
	check()
	if len(f.pub.timers) != 1 || f.pub.timers[0].attrs[AttrTimer] != TimerSettle {
		t.Fatalf("timers %+v: want the settle timer", f.pub.timers)
	}
	jf, err := events.DecodeJobFinished(f.pub.timers[0].body)
	if err != nil {
		t.Fatal(err)
	}
	if jf.Outcome != events.OutcomeSucceeded || !strings.Contains(jf.Reason, b+" (terminated, replaced by revision 2)") {
		t.Errorf("verdict %s: %s", jf.Outcome, jf.Reason)
	}
	if len(jf.Instances) != 2 || jf.Instances[1].ID != c || jf.Instances[1].HostKey != r2.HostKey || jf.Instances[0].HostKey != "" {
		t.Errorf("JobFinished instances %+v, want a (the fleet's key) and c with its own", jf.Instances)
	}
}

func TestEveryInstanceLostAndNoneReplacedFails(t *testing.T) {
	t.Parallel()
	const a, b = "i-0000000000000000a", "i-0000000000000000b"
	f := newFakes(t, fakeProber{})
	e := fleetEvent()
	e.JobID = cloudtest.Unique("job-alllost")
	e.FleetID = e.JobID
	body := watched(t, f, e)
	f.ec2.states = map[string]ec2types.InstanceStateName{a: ec2types.InstanceStateNameTerminated, b: ec2types.InstanceStateNameStopped}
	ctx := context.Background()
	if err := f.m.check(ctx, e, body, nil, nil); err != nil {
		t.Fatal(err)
	}
	if len(f.pub.lost) != 2 || f.pub.lost[1].Cause != events.LostStopped {
		t.Fatalf("lost %+v, want a terminated and b stopped", f.pub.lost)
	}
	l := f.m.ledger.(*ledger.Ledger)
	if err := l.CoverLost(ctx, e.JobID, []string{a, b}, "none: no fleet can finish 200 items by the deadline"); err != nil {
		t.Fatal(err)
	}
	f.pub.timers = nil
	if err := f.m.check(ctx, e, body, nil, nil); err != nil {
		t.Fatal(err)
	}
	if len(f.pub.timers) != 1 || f.pub.timers[0].attrs[AttrTimer] != TimerSettle {
		t.Fatalf("timers %+v: want a verdict", f.pub.timers)
	}
	jf, err := events.DecodeJobFinished(f.pub.timers[0].body)
	if err != nil {
		t.Fatal(err)
	}
	if jf.Outcome != events.OutcomeFailed || !strings.Contains(jf.Reason, "every instance of the job was lost") ||
		!strings.Contains(jf.Reason, "none: no fleet can finish") {
		t.Errorf("verdict %s: %s", jf.Outcome, jf.Reason)
	}
}

func TestEC2Notices(t *testing.T) {
	t.Parallel()
	const a = "i-0000000000000000a"
	f := newFakes(t, fakeProber{})
	e := fleetEvent()
	e.JobID = cloudtest.Unique("job-notice")
	e.FleetID = e.JobID
	watched(t, f, e)
	f.ec2.extra = map[string]string{tags.JobID: e.JobID, tags.Fleet: e.FleetID, tags.PlanRevision: "1"}
	w := ec2events.Where{Region: "us-east-1", Account: "000000000000"}
	notice := func(env ec2events.Envelope) *bus.Message {
		b, err := json.Marshal(env)
		if err != nil {
			t.Fatal(err)
		}
		return &bus.Message{Payload: b, ReceiveCount: 1}
	}
	ctx := context.Background()
	warned := clock.Add(-10 * time.Second)
	tests := []struct {
		name      string
		msg       *bus.Message
		foreign   bool
		onDemand  bool                       // EC2 describes the instance as on demand
		state     ec2types.InstanceStateName // EC2's state of it ("" running)
		wantLost  int
		permanent bool
	}{
		{name: "running: nothing lost", msg: notice(ec2events.StateChange(w, "e0", a, "running", warned))},
		{name: "another stack's instance", msg: notice(ec2events.SpotWarning(w, "e1", a, warned)), foreign: true},
		{name: "not an EC2 notice: dropped", msg: &bus.Message{Payload: []byte(`{"source":"aws.s3","detail-type":"Object Created","detail":{}}`)}},
		{name: "garbage: dead-lettered", msg: &bus.Message{Payload: []byte(`{{{`)}, permanent: true},
		{name: "larger than any EventBridge event: dead-lettered", msg: &bus.Message{Payload: []byte(`{"source":"aws.ec2","detail":"` + strings.Repeat("x", 300<<10) + `"}`)}, permanent: true},
		{name: "forged: a spot warning for an on-demand instance", msg: notice(ec2events.SpotWarning(w, "e2", a, warned)), onDemand: true},
		{name: "forged: a termination of an instance EC2 says runs", msg: notice(ec2events.StateChange(w, "e3", a, "terminated", warned))},
		{name: "spot warning", msg: notice(ec2events.SpotWarning(w, "e4", a, warned)), wantLost: 1},
		{name: "its termination after the warning: told once", msg: notice(ec2events.StateChange(w, "e5", a, "terminated", warned.Add(2*time.Minute))),
			state: ec2types.InstanceStateNameTerminated, wantLost: 1},
	}
	for _, tt := range tests {
		f.ec2.foreign = map[string]bool{a: tt.foreign}
		f.ec2.spot = !tt.onDemand
		f.ec2.states = map[string]ec2types.InstanceStateName{a: tt.state}
		err := f.m.handleEC2Notice(ctx, tt.msg)
		if bus.IsPermanent(err) != tt.permanent || (err != nil && !tt.permanent) {
			t.Fatalf("%s: err = %v, permanent want %v", tt.name, err, tt.permanent)
		}
		if len(f.pub.lost) != tt.wantLost {
			t.Fatalf("%s: %d InstanceLost, want %d", tt.name, len(f.pub.lost), tt.wantLost)
		}
	}
	got := f.pub.lost[0]
	if got.Cause != events.LostSpotInterruption || !got.NoticeDeadline.Equal(warned.Add(2*time.Minute)) || got.InstanceID != a || got.FleetID != e.FleetID {
		t.Errorf("InstanceLost %+v", got)
	}
}

func TestCheckStopsWhenFinished(t *testing.T) {
	t.Parallel()
	f := newFakes(t, nil)
	f.ec2.stage = StageFinished
	e := fleetEvent()
	if err := f.m.check(context.Background(), e, cloudtest.Encode(t, e), nil, nil); err != nil {
		t.Fatal(err)
	}
	if len(f.pub.timers)+len(f.pub.published)+len(f.ec2.tags) != 0 {
		t.Errorf("a finished job was checked on: %+v %+v", f.pub, f.ec2.tags)
	}
}

func TestFinishWhenTotalsAreUnreadable(t *testing.T) {
	t.Parallel()
	e := fleetEvent()
	jf := jobFinished(e, verdict{Done: true, Outcome: events.OutcomeSucceeded}, nil, clock)
	for _, tc := range []struct {
		receiveCount int
		wantErr      bool
	}{{1, true}, {bus.MaxReceiveCount - 1, false}} {
		f := newFakes(t, nil)
		f.stats.err = &smithy.GenericAPIError{Code: "ServiceUnavailable"}
		err := f.m.finish(context.Background(), jf, tc.receiveCount)
		if (err != nil) != tc.wantErr {
			t.Errorf("delivery %d: finish = %v, want error %v", tc.receiveCount, err, tc.wantErr)
		}
		if published := len(f.pub.published) == 1; published == tc.wantErr {
			t.Errorf("delivery %d: published %d JobFinished", tc.receiveCount, len(f.pub.published))
		}
	}
}

// TestFinishOnce: two check chains reaching their verdict at once (a FleetBootstrapped
// delivered twice) and a settle timer delivered again publish one JobFinished; the ledger
// records its outcome.
func TestFinishOnce(t *testing.T) {
	t.Parallel()
	f := newFakes(t, nil)
	jf := jobFinished(fleetEvent(), verdict{Done: true, Outcome: events.OutcomeSucceeded}, nil, clock)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			// One that finds the stage held is retried later (an error wrapping ErrTaken).
			if err := f.m.finish(context.Background(), jf, 1); err != nil && !errors.Is(err, ledger.ErrTaken) {
				t.Errorf("finish: %v", err)
			}
		})
	}
	wg.Wait()
	if err := f.m.finish(context.Background(), jf, 2); err != nil {
		t.Fatal(err)
	}
	f.pub.mu.Lock()
	n := len(f.pub.published)
	f.pub.mu.Unlock()
	if n != 1 {
		t.Errorf("JobFinished published %d times, want once", n)
	}
	rec, err := f.m.ledger.(*ledger.Ledger).Get(context.Background(), jf.JobID)
	if err != nil {
		t.Fatal(err)
	}
	if rec.DoneAt(ledger.Finished) == "" || rec.Attrs["outcome"] != events.OutcomeSucceeded {
		t.Errorf("ledger record %v, want finished with the outcome", rec.Attrs)
	}
}

func TestHandleBootstrapped(t *testing.T) {
	t.Parallel()
	t.Run("arms the first check", func(t *testing.T) {
		f := newFakes(t, nil)
		b := cloudtest.Encode(t, fleetEvent())
		if err := f.m.handleBootstrapped(context.Background(), &bus.Message{Payload: b}); err != nil {
			t.Fatal(err)
		}
		if len(f.pub.timers) != 1 || string(f.pub.timers[0].body) != string(b) || f.pub.timers[0].attrs[AttrTimer] != TimerCheck {
			t.Errorf("timers %+v", f.pub.timers)
		}
	})
	t.Run("unknown recipe finishes the job", func(t *testing.T) {
		f := newFakes(t, nil)
		e := fleetEvent()
		e.Recipe = "gone"
		if err := f.m.handleBootstrapped(context.Background(), &bus.Message{Payload: cloudtest.Encode(t, e), ReceiveCount: 1}); err != nil {
			t.Fatal(err)
		}
		if len(f.pub.published) != 1 || f.pub.published[0].Outcome != events.OutcomeFailed ||
			!strings.Contains(f.pub.published[0].Reason, `unknown recipe "gone"`) || len(f.pub.published[0].Instances) != 2 {
			t.Errorf("published %+v", f.pub.published)
		}
	})
	t.Run("invalid event is permanent", func(t *testing.T) {
		f := newFakes(t, nil)
		err := f.m.handleBootstrapped(context.Background(), &bus.Message{Payload: []byte(`{"schema_version":1}`)})
		if !bus.IsPermanent(err) {
			t.Errorf("error %v is not permanent", err)
		}
	})
}

func TestHandleTaskReported(t *testing.T) {
	t.Parallel()
	f := newFakes(t, nil)
	tr := events.TaskReported{Header: events.NewHeader("job-1", "c", clock), FleetID: "job-1", InstanceID: "i-0000000000000000a",
		TaskID: "a.txt", Outcome: events.OutcomeFailed, DurationMS: 12, Detail: "boom"}
	if err := f.m.handleTaskReported(context.Background(), &bus.Message{Payload: cloudtest.Encode(t, tr)}); err != nil {
		t.Fatal(err)
	}
	if len(f.sink.data) != 2 || f.sink.data[0].Name != metrics.TasksFailed || !f.sink.data[0].Counter ||
		f.sink.data[1].Name != metrics.TaskDuration || f.sink.data[1].Value != 12 {
		t.Errorf("metrics %+v", f.sink.data)
	}
	if f.sink.data[0].Dimensions[metrics.DimJobID] != "job-1" || f.sink.data[0].Dimensions[metrics.DimTask] != metrics.DefaultTask {
		t.Errorf("dimensions %v", f.sink.data[0].Dimensions)
	}
	err := f.m.handleTaskReported(context.Background(), &bus.Message{Payload: []byte(`{"outcome":"maybe"}`)})
	if !bus.IsPermanent(err) || len(f.sink.data) != 2 {
		t.Errorf("invalid report: error %v (permanent %v), %d metrics", err, bus.IsPermanent(err), len(f.sink.data))
	}
}

func TestUnknownTimer(t *testing.T) {
	t.Parallel()
	f := newFakes(t, nil)
	err := f.m.handleTimer(context.Background(), &bus.Message{Payload: []byte(`{}`), Attributes: map[string]string{AttrTimer: "nap"}})
	if !bus.IsPermanent(err) || !strings.Contains(err.Error(), `"nap"`) {
		t.Errorf("unknown timer: %v", err)
	}
}

// TestTaskReportedCountedOnce: a task report delivered three times (twice at once) sends
// its metrics once, flushed before the handler returns.
func TestTaskReportedCountedOnce(t *testing.T) {
	t.Parallel()
	f := newFakes(t, nil)
	tr := events.TaskReported{Header: events.NewHeader("job-tasks", "corr", clock), FleetID: "job-tasks",
		InstanceID: "i-0000000000000000a", TaskID: "input/file-1", Outcome: events.OutcomeSucceeded, DurationMS: 12}
	body := cloudtest.Encode(t, tr)
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			if err := f.m.handleTaskReported(context.Background(), &bus.Message{Payload: body}); err != nil {
				t.Errorf("handle: %v", err)
			}
		})
	}
	wg.Wait()
	if err := f.m.handleTaskReported(context.Background(), &bus.Message{Payload: body}); err != nil {
		t.Fatal(err)
	}
	f.sink.mu.Lock()
	defer f.sink.mu.Unlock()
	if len(f.sink.data) != len(metrics.TaskData(tr)) || f.sink.flushes < 1 {
		t.Errorf("%d data points, %d flushes; want the task's %d once, flushed", len(f.sink.data), f.sink.flushes, len(metrics.TaskData(tr)))
	}
}

// exitReport is the wrapper's report that a workload on instance id exited with code.
func exitReport(e events.FleetBootstrapped, id string, code int) events.TaskReported {
	outcome := events.OutcomeSucceeded
	if code != 0 {
		outcome = events.OutcomeFailed
	}
	return events.TaskReported{Header: events.NewHeader(e.JobID, e.CorrelationID, clock), FleetID: e.FleetID, InstanceID: id,
		TaskID: "s0", Outcome: outcome, Kind: events.ReportExited, ExitCode: &code}
}

// TestExitReport: a workload's exit report makes the monitor check its fleet at once and
// finish the job when every workload has ended or one failed, with no timer; otherwise
// (others still run, a fleet it never saw, a report from outside the fleet) it does
// nothing and the periodic check stays in charge. Exit reports are not tasks.
func TestExitReport(t *testing.T) {
	t.Parallel()
	const a, b = "i-0000000000000000a", "i-0000000000000000b"
	tests := []struct {
		name     string
		probes   fakeProber
		seen     bool   // the replica handled the fleet's FleetBootstrapped
		from     string // the reporting instance
		code     int
		finished string // the JobFinished outcome; empty: none published
	}{
		{"last workload exits 0", fakeProber{a: {ID: a, Steps: steps(exited(0))}, b: {ID: b, Steps: steps(exited(0))}}, true, b, 0, events.OutcomeSucceeded},
		{"a workload fails", fakeProber{a: {ID: a, Steps: steps(running())}, b: {ID: b, Steps: steps(exited(2))}}, true, b, 2, events.OutcomeFailed},
		{"others still run", fakeProber{a: {ID: a, Steps: steps(running())}, b: {ID: b, Steps: steps(exited(0))}}, true, b, 0, ""},
		{"an instance unreachable is no miss", fakeProber{a: {ID: a, Err: errors.New("refused")}, b: {ID: b, Steps: steps(exited(0))}}, true, b, 0, ""},
		{"fleet not seen by this replica", fakeProber{a: {ID: a, Steps: steps(exited(0))}, b: {ID: b, Steps: steps(exited(0))}}, false, b, 0, ""},
		{"instance outside the fleet", fakeProber{a: {ID: a, Steps: steps(exited(0))}, b: {ID: b, Steps: steps(exited(0))}}, true, "i-0000000000000000c", 0, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakes(t, tc.probes)
			e := fleetEvent()
			if tc.seen {
				if err := f.m.handleBootstrapped(context.Background(), &bus.Message{Payload: cloudtest.Encode(t, e)}); err != nil {
					t.Fatal(err)
				}
			}
			timers := len(f.pub.timers)
			msg := &bus.Message{Payload: cloudtest.Encode(t, exitReport(e, tc.from, tc.code)), ReceiveCount: 1}
			if err := f.m.handleTaskReported(context.Background(), msg); err != nil {
				t.Fatal(err)
			}
			if len(f.pub.timers) != timers {
				t.Errorf("the exit report armed %d timers: the periodic check is the only chain", len(f.pub.timers)-timers)
			}
			for _, d := range f.sink.data {
				if d.Name == metrics.TasksSucceeded || d.Name == metrics.TasksFailed {
					t.Errorf("an exit report counted as a task: %+v", d)
				}
			}
			if tc.finished == "" {
				if len(f.pub.published) != 0 {
					t.Errorf("published %+v, want nothing", f.pub.published)
				}
				return
			}
			if len(f.pub.published) != 1 || f.pub.published[0].Outcome != tc.finished {
				t.Fatalf("published %+v, want one JobFinished %s", f.pub.published, tc.finished)
			}
			if _, still := f.m.fleets.get(e.FleetID); still {
				t.Error("the finished fleet is still cached")
			}
		})
	}
}

// An instance the event names that EC2 does not describe as this stack's and this fleet's
// is never probed nor tagged: the job fails with the reason, and JobFinished hands only
// the fleet's own instances to the reaper.
func TestCheckRefusesForeignInstances(t *testing.T) {
	t.Parallel()
	f := newFakes(t, fakeProber{}) // a probe of any instance would return an empty check
	f.ec2.foreign = map[string]bool{"i-0000000000000000b": true}
	e := fleetEvent()
	if err := f.m.check(context.Background(), e, cloudtest.Encode(t, e), nil, nil); err != nil {
		t.Fatal(err)
	}
	if len(f.ec2.tags) != 0 {
		t.Errorf("tagged %v: no lease may be refreshed on a fleet with a foreign instance", f.ec2.tags[0].Resources)
	}
	if len(f.pub.timers) != 1 || f.pub.timers[0].attrs[AttrTimer] != TimerSettle {
		t.Fatalf("timers %+v, want the settled verdict", f.pub.timers)
	}
	jf, err := events.DecodeJobFinished(f.pub.timers[0].body)
	if err != nil {
		t.Fatal(err)
	}
	if jf.Outcome != events.OutcomeFailed || !strings.Contains(jf.Reason, "instance i-0000000000000000b is not an instance of fleet job-1 in stack sortie") {
		t.Errorf("verdict %s: %q", jf.Outcome, jf.Reason)
	}
	msg := &bus.Message{Payload: f.pub.timers[0].body, Attributes: map[string]string{AttrTimer: TimerSettle}, ReceiveCount: 1}
	if err := f.m.handleTimer(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	if len(f.pub.published) != 1 {
		t.Fatalf("published %d JobFinished, want 1", len(f.pub.published))
	}
	got := f.pub.published[0]
	if len(got.Instances) != 1 || got.Instances[0].ID != "i-0000000000000000a" || got.FailingInstance != "" {
		t.Errorf("JobFinished lists %+v (failing %q), want only the fleet's own instance", got.Instances, got.FailingInstance)
	}
	for _, tg := range f.ec2.tags {
		if slices.Contains(tg.Resources, "i-0000000000000000b") {
			t.Errorf("the foreign instance was tagged %s", aws.ToString(tg.Tags[0].Key))
		}
	}
}

// TestExitReportInvalid: an exit report without its code (or of an unknown kind) is
// invalid input: dead-lettered with the reason, nothing probed, nothing published.
func TestExitReportInvalid(t *testing.T) {
	t.Parallel()
	f := newFakes(t, nil)
	e := fleetEvent()
	if err := f.m.handleBootstrapped(context.Background(), &bus.Message{Payload: cloudtest.Encode(t, e)}); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{
		"no exit code": `"kind":"exited"`,
		"unknown kind": `"kind":"finished"`,
	} {
		t.Run(name, func(t *testing.T) {
			r := exitReport(e, "i-0000000000000000a", 0)
			r.Kind, r.ExitCode = "", nil
			valid := cloudtest.Encode(t, r)
			bad := strings.Replace(string(valid), `"outcome"`, body+`,"outcome"`, 1)
			published := len(f.pub.published)
			err := f.m.handleTaskReported(context.Background(), &bus.Message{Payload: []byte(bad), ReceiveCount: 1})
			if !errors.Is(err, events.ErrInvalid) {
				t.Fatalf("got %v, want an invalid-event error (dead-lettered)", err)
			}
			if len(f.pub.published) != published {
				t.Error("an invalid report published a JobFinished")
			}
		})
	}
}

// TestWarningDuringBootstrap: a spot warning that comes before the job is watched is told
// at once, and the bootstrap of the warned instance failing does not fail the job.
func TestWarningDuringBootstrap(t *testing.T) {
	t.Parallel()
	const b = "i-0000000000000000b"
	f := newFakes(t, fakeProber{})
	e := fleetEvent()
	e.JobID = cloudtest.Unique("job-early")
	e.FleetID = e.JobID
	e.Instances[1] = events.InstanceResult{ID: b, SSHEndpoint: "127.0.0.1:2202", Error: "connection reset by peer"}
	ctx := context.Background()
	c, err := f.m.ledger.Claim(ctx, e.JobID, ledger.Planned)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Done(ctx, nil); err != nil {
		t.Fatal(err)
	}
	f.ec2.extra = map[string]string{tags.JobID: e.JobID, tags.Fleet: e.FleetID}
	f.ec2.spot = true
	body, err := json.Marshal(ec2events.SpotWarning(ec2events.Where{Region: "us-east-1", Account: "000000000000"}, "e1", b, clock))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.m.handleEC2Notice(ctx, &bus.Message{Payload: body, ReceiveCount: 1}); err != nil {
		t.Fatal(err)
	}
	if len(f.pub.lost) != 1 || f.pub.lost[0].InstanceID != b || f.pub.lost[0].KeyName != "sortie-test" {
		t.Fatalf("lost %+v, want b told before the job is watched, with the key pair EC2 names", f.pub.lost)
	}
	if err := f.m.handleBootstrapped(ctx, &bus.Message{Payload: cloudtest.Encode(t, e), ReceiveCount: 1}); err != nil {
		t.Fatal(err)
	}
	if len(f.pub.published) != 0 || len(f.pub.timers) != 1 || f.pub.timers[0].attrs[AttrTimer] != TimerCheck {
		t.Fatalf("published %+v, timers %+v: want the job watched, not failed", f.pub.published, f.pub.timers)
	}
}
