package reaper_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	cwtypes "github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/fleetview"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
	"github.com/sortie-fleet/sortie/pkg/metrics"
	"github.com/sortie-fleet/sortie/pkg/service"
	"github.com/sortie-fleet/sortie/pkg/tags"
	"github.com/sortie-fleet/sortie/services/reaper"
)

// TestReaper runs the reaper against the real local cloud: real instances (SSH hosts),
// real S3 objects, real SNS/SQS messages and its real sweep timer.
func TestReaper(t *testing.T) {
	e := newEnv(t)
	out := e.Subscribe(t, bus.FleetTerminated)
	hk := cloudtest.NewHostKey(t)
	hostKey, userData := hk.Authorized, hk.UserData
	otherUserData := cloudtest.NewHostKey(t).UserData
	live := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)

	// The fleet: A and B reachable, C listed but presenting another host key than the
	// fleet's (its archive fails), D tagged with the fleet (an earlier plan revision, another
	// host key) but not in the event.
	stack := e.Topology.Prefix
	// A job id of its own per run: CloudWatch's JobCost points (kumo's state is per process)
	// would otherwise add up under -count.
	jobID := "job-reap" + cloudtest.Unique("-")
	// Every instance of the fleet was launched at the profile's price of $0.17 an hour.
	const price = 0.17
	fleetTags := map[string]string{tags.Stack: stack, tags.JobID: jobID, tags.Fleet: jobID, tags.LeaseExpires: live,
		tags.Market: events.MarketOnDemand, tags.HourlyPrice: "0.17", tags.PlannedCost: "0.0123"}
	fleet := e.launch(2, userData, fleetTags)
	extra := e.launch(2, otherUserData, fleetTags)
	a, b, c, d := fleet[0], fleet[1], extra[0], extra[1]
	// Instances the event names that are not the fleet's in this stack: never touched.
	with := func(m map[string]string, k, v string) map[string]string {
		out := maps.Clone(m)
		if v == "" {
			delete(out, k)
		} else {
			out[k] = v
		}
		return out
	}
	otherFleet := e.launch(1, userData, with(fleetTags, tags.Fleet, "job-other"))[0]
	otherStack := e.launch(1, userData, with(fleetTags, tags.Stack, "t-someone-else"))[0]
	noStack := e.launch(1, userData, with(fleetTags, tags.Stack, ""))[0]
	prodDB := e.launch(1, userData, map[string]string{tags.Name: "prod-db"})[0]
	const unknown = "i-0000000000000dead"
	// The sweep's instances: an expired lease, a live one, none (launched now), garbage;
	// and expired leases on instances of another stack and of no stack.
	sweepTags := func(lease string) map[string]string {
		m := map[string]string{tags.Stack: stack, tags.JobID: "job-sweep", tags.Fleet: "job-sweep"}
		if lease != "" {
			m[tags.LeaseExpires] = lease
		}
		return m
	}
	past := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	expired := e.launch(1, userData, sweepTags(past))[0]
	// Expired an hour ago, beyond SweepArchiveWindow: terminated without an archive attempt.
	longGone := e.launch(1, userData, sweepTags(time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)))[0]
	leased := e.launch(1, userData, sweepTags(live))[0]
	unleased := e.launch(1, userData, sweepTags(""))[0]
	garbage := e.launch(1, userData, sweepTags("next tuesday"))[0]
	expiredOtherStack := e.launch(1, userData, with(sweepTags(past), tags.Stack, "t-someone-else"))[0]
	expiredNoStack := e.launch(1, userData, with(sweepTags(past), tags.Stack, ""))[0]
	untouched := []events.InstanceRef{otherFleet, otherStack, noStack, prodDB, expiredOtherStack, expiredNoStack}
	for _, in := range []events.InstanceRef{a, b, c, d, expired, longGone, expiredOtherStack, expiredNoStack} {
		e.writeLog(in.ID, "log of "+in.ID+"\n")
	}
	// A workload log outside .sortie, named in JobFinished.Logs: written on A only (a
	// missing one must not fail the others' archives).
	cloudtest.WriteFile(t, filepath.Join(e.Cloud.InstanceDir(a.ID), "logs/resize.log"), []byte("resized on "+a.ID+"\n"), 0o600)

	e.start()

	bogus := cloudtest.FreeAddr(t)
	ev := events.JobFinished{
		Header:          events.NewHeader(jobID, "corr-reap", time.Now()),
		FleetID:         jobID,
		Template:        "test",
		Outcome:         events.OutcomeFailed,
		Reason:          "worker exited with status 1 on " + b.ID,
		FailingInstance: b.ID,
		LogTail:         []string{"boom"},
		// The event's endpoints are never used: A's points nowhere, yet A is archived.
		Instances:      []events.InstanceRef{{ID: a.ID, SSHEndpoint: bogus}, b, c, otherFleet, otherStack, noStack, prodDB, {ID: unknown, SSHEndpoint: bogus}},
		HostKey:        hostKey,
		KeyName:        e.key.Name,
		Logs:           []string{"logs/resize.log"},
		TasksSucceeded: 10,
		TasksFailed:    1,
	}
	allIDs := sortedIDs(a, b, c, d)
	// EC2 states a termination time in whole seconds: let the fleet live two of them, so
	// that its instance-seconds cannot round to nothing.
	cloudtest.Eventually(t, 10*time.Second, func() error {
		for _, l := range e.launchTimes(allIDs...) {
			if time.Since(l) < 2*time.Second {
				return errors.New("the fleet is younger than 2s")
			}
		}
		return nil
	})
	e.Publish(t, ev)
	got := e.receive(t, out, jobID)

	t.Run("instances not the fleet's in this stack: refused with the reason, untouched", func(t *testing.T) {
		want := []events.RefusedInstance{
			{InstanceID: otherFleet.ID, Reason: events.RefusedOtherFleet},
			{InstanceID: otherStack.ID, Reason: events.RefusedOtherStack},
			{InstanceID: noStack.ID, Reason: events.RefusedUntagged},
			{InstanceID: prodDB.ID, Reason: events.RefusedUntagged},
			{InstanceID: unknown, Reason: events.RefusedUnknown},
		}
		slices.SortFunc(want, func(x, y events.RefusedInstance) int { return strings.Compare(x.InstanceID, y.InstanceID) })
		if len(got.Refused) != len(want) {
			t.Fatalf("Refused = %+v, want %+v", got.Refused, want)
		}
		for i, r := range got.Refused {
			if r.InstanceID != want[i].InstanceID || r.Reason != want[i].Reason || r.Detail == "" {
				t.Errorf("Refused[%d] = %+v, want %+v with a detail", i, r, want[i])
			}
		}
		for id, st := range e.states(sortedIDs(untouched...)...) {
			if st != ec2types.InstanceStateNameRunning {
				t.Errorf("instance %s, not this fleet's in this stack, is %s", id, st)
			}
		}
		for _, in := range untouched[:4] {
			if _, err := e.S3.HeadObject(t.Context(), &s3.HeadObjectInput{Bucket: aws.String(e.Topology.BucketName()), Key: aws.String(reaper.ArchiveKey(jobID, in.ID))}); err == nil {
				t.Errorf("instance %s, refused, was archived", in.ID)
			}
		}
	})

	t.Run("the failed archive is in the event and in the metric", func(t *testing.T) {
		if len(got.ArchiveFailures) != 1 || got.ArchiveFailures[0].InstanceID != c.ID || !strings.Contains(got.ArchiveFailures[0].Error, "host key mismatch") {
			t.Fatalf("ArchiveFailures = %+v, want %s's host key mismatch", got.ArchiveFailures, c.ID)
		}
		cw := metrics.NewClient(e.AWS)
		cloudtest.Eventually(t, 20*time.Second, func() error {
			st, err := cw.GetMetricStatistics(t.Context(), &cloudwatch.GetMetricStatisticsInput{
				Namespace: aws.String(metrics.Namespace), MetricName: aws.String(metrics.ArchiveFailures),
				Dimensions: []cwtypes.Dimension{{Name: aws.String(metrics.DimStack), Value: aws.String(stack)}},
				StartTime:  aws.Time(time.Now().Add(-time.Hour)), EndTime: aws.Time(time.Now().Add(time.Hour)),
				Period: aws.Int32(60), Statistics: []cwtypes.Statistic{cwtypes.StatisticSum},
			})
			if err != nil {
				return err
			}
			var sum float64
			for _, p := range st.Datapoints {
				sum += aws.ToFloat64(p.Sum)
			}
			if sum < 1 {
				return fmt.Errorf("%s of stack %s = %v, want at least 1", metrics.ArchiveFailures, stack, sum)
			}
			return nil
		})
	})

	t.Run("every instance terminated", func(t *testing.T) {
		if !slices.Equal(got.TerminatedInstanceIDs, allIDs) {
			t.Fatalf("TerminatedInstanceIDs = %v, want %v (the unreachable one and the unlisted one included)", got.TerminatedInstanceIDs, allIDs)
		}
		for id, st := range e.states(allIDs...) {
			if st != ec2types.InstanceStateNameTerminated {
				t.Errorf("instance %s is %s, want terminated", id, st)
			}
		}
	})

	t.Run("archives are valid tar.gz with the worker log and the logs outside .sortie, SSE aws:kms", func(t *testing.T) {
		want := sortedIDs(a, b, d) // C's host key is not the fleet's
		var ids []string
		for _, arch := range got.Archives {
			ids = append(ids, arch.InstanceID)
			if arch.Bucket != e.Topology.BucketName() || arch.Key != "logs/"+jobID+"/"+arch.InstanceID+".tar.gz" {
				t.Errorf("archive %+v: wrong place", arch)
			}
			body, head := cloudtest.Download(t, e.S3, e.Topology.BucketName(), arch.Key)
			if head.ServerSideEncryption != "aws:kms" {
				t.Errorf("%s: SSE %q, want aws:kms", arch.Key, head.ServerSideEncryption)
			}
			if aws.ToInt64(head.ContentLength) != arch.SizeBytes || int64(len(body)) != arch.SizeBytes {
				t.Errorf("%s: %d bytes stored, %d downloaded, event says %d", arch.Key, aws.ToInt64(head.ContentLength), len(body), arch.SizeBytes)
			}
			files := cloudtest.Untar(t, body)
			if log := files[".sortie/worker/worker.log"]; log != "log of "+arch.InstanceID+"\n" {
				t.Errorf("%s: worker.log = %q", arch.Key, log)
			}
			log, ok := files["logs/resize.log"]
			switch {
			case arch.InstanceID == a.ID && log != "resized on "+a.ID+"\n":
				t.Errorf("%s: logs/resize.log = %q, %v; want the log outside .sortie archived", arch.Key, log, ok)
			case arch.InstanceID != a.ID && ok:
				t.Errorf("%s: holds logs/resize.log, which the instance never had", arch.Key)
			}
		}
		if !slices.Equal(ids, want) {
			t.Fatalf("archives of %v, want %v", ids, want)
		}
		if !strings.Contains(e.Logs.String(), "logs not archived; terminating the instance anyway") {
			t.Error("the unreachable instance's missing archive was not logged")
		}
	})

	t.Run("outcome and instance-seconds", func(t *testing.T) {
		if got.Outcome != events.OutcomeFailed || got.Reason != ev.Reason || got.FleetID != jobID || got.CorrelationID != "corr-reap" {
			t.Fatalf("FleetTerminated %+v does not carry JobFinished's outcome", got)
		}
		var upper float64
		for _, l := range e.launchTimes(allIDs...) {
			upper += time.Since(l).Seconds()
		}
		if got.InstanceSeconds <= 0 || got.InstanceSeconds > upper {
			t.Fatalf("InstanceSeconds = %v, want within (0, %v]", got.InstanceSeconds, upper)
		}
	})

	t.Run("cost is instance-seconds × the configured price, next to the planned cost, and in CloudWatch", func(t *testing.T) {
		want := got.InstanceSeconds * price / 3600
		if got.Cost <= 0 || math.Abs(got.Cost-want) > 1e-9*want {
			t.Fatalf("Cost = %v, want %v s × $%v / 3600 = %v", got.Cost, got.InstanceSeconds, price, want)
		}
		if got.PlannedCost != 0.0123 {
			t.Errorf("PlannedCost = %v, want the plan's 0.0123", got.PlannedCost)
		}
		cw := metrics.NewClient(e.AWS)
		cloudtest.Eventually(t, 20*time.Second, func() error {
			st, err := cw.GetMetricStatistics(t.Context(), &cloudwatch.GetMetricStatisticsInput{
				Namespace: aws.String(metrics.Namespace), MetricName: aws.String(metrics.JobCost),
				Dimensions: []cwtypes.Dimension{{Name: aws.String(metrics.DimJobID), Value: aws.String(jobID)}},
				StartTime:  aws.Time(time.Now().Add(-time.Hour)), EndTime: aws.Time(time.Now().Add(time.Hour)),
				Period: aws.Int32(60), Statistics: []cwtypes.Statistic{cwtypes.StatisticMaximum},
			})
			if err != nil {
				return err
			}
			for _, p := range st.Datapoints {
				if math.Abs(aws.ToFloat64(p.Maximum)-got.Cost) <= 1e-9*got.Cost {
					return nil
				}
			}
			return fmt.Errorf("%s of %s: %d data points, none with the cost %v", metrics.JobCost, jobID, len(st.Datapoints), got.Cost)
		})
	})

	t.Run("duplicate JobFinished: nothing reaped or published again", func(t *testing.T) {
		e.Publish(t, ev)
		cloudtest.Eventually(t, 30*time.Second, func() error {
			if !strings.Contains(e.Logs.String(), `"duplicate JobFinished: nothing to do"`) {
				return errors.New("the duplicate is not handled yet")
			}
			return nil
		})
		if extra := cloudtest.Collect(t, e.SQS, out, 2*time.Second, nil)[jobID]; len(extra) != 0 {
			t.Errorf("%d FleetTerminated after the duplicate, want none", len(extra))
		}
	})

	t.Run("sweep terminates the expired lease only", func(t *testing.T) {
		deadline := time.Now().Add(20 * time.Second)
		cloudtest.Eventually(t, 20*time.Second, func() error {
			if st := e.states(expired.ID)[expired.ID]; st == ec2types.InstanceStateNameRunning {
				return errors.New("instance " + expired.ID + " with an expired lease still running")
			}
			return nil
		})
		// Let at least two more sweeps pass over the others.
		sweeps := e.sweeps()
		cloudtest.Eventually(t, time.Until(deadline.Add(10*time.Second)), func() error {
			if e.sweeps() < sweeps+2 {
				return errors.New("the sweep timer stopped")
			}
			return nil
		})
		cloudtest.Eventually(t, 20*time.Second, func() error {
			if st := e.states(longGone.ID)[longGone.ID]; st == ec2types.InstanceStateNameRunning {
				return errors.New("instance " + longGone.ID + " expired an hour ago still running")
			}
			return nil
		})
		if _, err := e.S3.HeadObject(t.Context(), &s3.HeadObjectInput{Bucket: aws.String(e.Topology.BucketName()), Key: aws.String(reaper.ArchiveKey("job-sweep", longGone.ID))}); err == nil {
			t.Errorf("instance %s, expired beyond the archive window, was archived before termination", longGone.ID)
		}
		for id, st := range e.states(leased.ID, unleased.ID, garbage.ID) {
			if st != ec2types.InstanceStateNameRunning {
				t.Errorf("instance %s with a live lease is %s", id, st)
			}
		}
		for id, st := range e.states(expiredOtherStack.ID, expiredNoStack.ID) {
			if st != ec2types.InstanceStateNameRunning {
				t.Errorf("instance %s with an expired lease outside the stack is %s", id, st)
			}
		}
		for _, in := range []events.InstanceRef{expiredOtherStack, expiredNoStack} {
			if _, err := e.S3.HeadObject(t.Context(), &s3.HeadObjectInput{Bucket: aws.String(e.Topology.BucketName()), Key: aws.String(reaper.ArchiveKey("job-sweep", in.ID))}); err == nil {
				t.Errorf("instance %s outside the stack was archived by the sweep", in.ID)
			}
		}
		body, _ := cloudtest.Download(t, e.S3, e.Topology.BucketName(), "logs/job-sweep/"+expired.ID+".tar.gz")
		if log := cloudtest.Untar(t, body)[".sortie/worker/worker.log"]; log != "log of "+expired.ID+"\n" {
			t.Errorf("the swept instance's archive holds %q", log)
		}
	})
}

// env is one test's stack, with a login key pair, and the reaper running on it.
type env struct {
	*cloudtest.Stack
	t   *testing.T
	key cloudtest.KeyPair
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvOn(t, cloudtest.NewCloud(t, localcloud.Options{BootDelay: 30 * time.Millisecond, ShutdownDelay: 50 * time.Millisecond}))
}

// newEnvOn makes a stack of its own on cloud, which other stacks may share.
func newEnvOn(t *testing.T, cloud *localcloud.Cloud) *env {
	t.Helper()
	s := cloudtest.NewStack(t, cloud)
	return &env{Stack: s, t: t, key: cloudtest.NewKeyPair(t, s.EC2, s.Topology.Prefix+"-login")}
}

// start runs the reaper until the test ends, with short timeouts and a 1 s sweep.
func (e *env) start() {
	t := e.t
	t.Helper()
	ops := cloudtest.LoadOps(t, "testdata/ops.yaml")
	cfg := reaper.Config{
		Base:                service.Base{Prefix: e.Topology.Prefix, LocalMode: true},
		SSHKey:              e.key.Path,
		ArchiveTimeout:      1500 * time.Millisecond,
		SweepInterval:       time.Second,
		SweepArchiveTimeout: 5 * time.Second,
		SweepArchiveWindow:  10 * time.Minute,
		WaiterMinDelay:      100 * time.Millisecond,
		WaiterMaxDelay:      500 * time.Millisecond,
		TerminateTimeout:    20 * time.Second,
		PollWait:            time.Second,
		MetricsFlush:        200 * time.Millisecond,
	}
	e.Serve(t, func(ctx context.Context) error {
		return reaper.Run(ctx, cfg, e.Deps(ops))
	})
}

// sweeps counts the sweeps the reaper has run so far.
func (e *env) sweeps() int { return strings.Count(e.Logs.String(), `"msg":"sweep"`) }

// launch runs n tagged instances and waits until they are running with an SSH endpoint.
func (e *env) launch(n int, userData string, tags map[string]string) []events.InstanceRef {
	e.t.Helper()
	var refs []events.InstanceRef
	for _, in := range cloudtest.Launch(e.t, e.EC2, n, cloudtest.LaunchSpec{KeyName: e.key.Name, UserData: userData, Tags: tags}) {
		refs = append(refs, events.InstanceRef{ID: in.ID, SSHEndpoint: in.SSHEndpoint})
	}
	return refs
}

// writeLog puts a worker log where the recipe's start step writes it.
func (e *env) writeLog(id, content string) {
	e.t.Helper()
	cloudtest.WriteFile(e.t, filepath.Join(e.Cloud.InstanceDir(id), ".sortie/worker/worker.log"), []byte(content), 0o600)
}

func (e *env) describe(ids ...string) []ec2types.Instance {
	e.t.Helper()
	return cloudtest.DescribeInstances(e.t, e.EC2, &ec2.DescribeInstancesInput{InstanceIds: ids})
}

func (e *env) states(ids ...string) map[string]ec2types.InstanceStateName {
	out := map[string]ec2types.InstanceStateName{}
	for _, in := range e.describe(ids...) {
		out[aws.ToString(in.InstanceId)] = in.State.Name
	}
	return out
}

func (e *env) launchTimes(ids ...string) []time.Time {
	var out []time.Time
	for _, in := range e.describe(ids...) {
		out = append(out, aws.ToTime(in.LaunchTime))
	}
	return out
}

// receive waits for the next FleetTerminated of a job on the test queue.
func (e *env) receive(t *testing.T, queueURL, jobID string) events.FleetTerminated {
	t.Helper()
	return cloudtest.NextEvent(t, e.SQS, queueURL, jobID, time.Minute, events.DecodeFleetTerminated)
}

func sortedIDs(refs ...events.InstanceRef) []string {
	var ids []string
	for _, r := range refs {
		ids = append(ids, r.ID)
	}
	slices.Sort(ids)
	return ids
}

// TestTwoStacks runs two stacks (two prefixes, each with its reaper and sweep) in one local
// cloud at the same time, with fleets of the same id: each stack's reaper, sweep and status
// touch only its own instances, and an instance with Sortie's tags but no stack tag is
// never touched.
func TestTwoStacks(t *testing.T) {
	cloud := cloudtest.NewCloud(t, localcloud.Options{BootDelay: 30 * time.Millisecond, ShutdownDelay: 50 * time.Millisecond})
	one, two := newEnvOn(t, cloud), newEnvOn(t, cloud)
	hk := cloudtest.NewHostKey(t)
	live := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	past := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	const fleetID = "job-same"
	type stackInstances struct {
		fleet   []events.InstanceRef
		expired events.InstanceRef
	}
	launch := func(e *env) stackInstances {
		fleetTags := map[string]string{tags.Stack: e.Topology.Prefix, tags.JobID: fleetID, tags.Fleet: fleetID, tags.LeaseExpires: live}
		sweepTags := map[string]string{tags.Stack: e.Topology.Prefix, tags.JobID: "job-expired", tags.Fleet: "job-expired", tags.LeaseExpires: past}
		return stackInstances{fleet: e.launch(2, hk.UserData, fleetTags), expired: e.launch(1, hk.UserData, sweepTags)[0]}
	}
	a, b := launch(one), launch(two)
	// Sortie's tags, the same fleet id, no stack: neither stack's. One with an expired lease.
	stray := one.launch(1, hk.UserData, map[string]string{tags.JobID: fleetID, tags.Fleet: fleetID, tags.LeaseExpires: live})[0]
	strayExpired := one.launch(1, hk.UserData, map[string]string{tags.JobID: "job-expired", tags.Fleet: "job-expired", tags.LeaseExpires: past})[0]

	t.Run("status lists each stack's own instances", func(t *testing.T) {
		for _, c := range []struct {
			e    *env
			want []string
		}{{one, sortedIDs(append(slices.Clone(a.fleet), a.expired)...)}, {two, sortedIDs(append(slices.Clone(b.fleet), b.expired)...)}} {
			insts, err := fleetview.Describe(t.Context(), c.e.EC2, fleetview.Query{Stack: c.e.Topology.Prefix, All: true})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, in := range insts {
				got = append(got, aws.ToString(in.InstanceId))
			}
			slices.Sort(got)
			if !slices.Equal(got, c.want) {
				t.Errorf("status of %s lists %v, want %v", c.e.Topology.Prefix, got, c.want)
			}
		}
	})

	outs := []string{one.Subscribe(t, bus.FleetTerminated), two.Subscribe(t, bus.FleetTerminated)}
	one.start()
	two.start()
	jobFinished := func(e *env, refs ...events.InstanceRef) events.JobFinished {
		return events.JobFinished{
			Header: events.NewHeader(fleetID, "corr-"+e.Topology.Prefix, time.Now()), FleetID: fleetID, Template: "test",
			Outcome: events.OutcomeSucceeded, Instances: refs, HostKey: hk.Authorized, KeyName: e.key.Name,
		}
	}
	// Stack one is also told to reap stack two's fleet and the stray: it must not.
	one.Publish(t, jobFinished(one, append(slices.Clone(a.fleet), append(slices.Clone(b.fleet), stray)...)...))
	two.Publish(t, jobFinished(two, b.fleet...))
	gotOne, gotTwo := one.receive(t, outs[0], fleetID), two.receive(t, outs[1], fleetID)

	t.Run("each reaper terminates its own fleet only", func(t *testing.T) {
		if want := sortedIDs(a.fleet...); !slices.Equal(gotOne.TerminatedInstanceIDs, want) {
			t.Errorf("stack one terminated %v, want %v", gotOne.TerminatedInstanceIDs, want)
		}
		if want := sortedIDs(b.fleet...); !slices.Equal(gotTwo.TerminatedInstanceIDs, want) {
			t.Errorf("stack two terminated %v, want %v", gotTwo.TerminatedInstanceIDs, want)
		}
		reasons := map[string]string{}
		for _, r := range gotOne.Refused {
			reasons[r.InstanceID] = r.Reason
		}
		want := map[string]string{b.fleet[0].ID: events.RefusedOtherStack, b.fleet[1].ID: events.RefusedOtherStack, stray.ID: events.RefusedUntagged}
		if !maps.Equal(reasons, want) {
			t.Errorf("stack one refused %v, want %v", reasons, want)
		}
		if len(gotTwo.Refused) != 0 || len(gotOne.Archives) != 2 || len(gotTwo.Archives) != 2 {
			t.Errorf("stack two refused %v; archives %d and %d, want 2 each", gotTwo.Refused, len(gotOne.Archives), len(gotTwo.Archives))
		}
	})

	t.Run("each sweep takes its own expired instance; the strays live on", func(t *testing.T) {
		cloudtest.Eventually(t, 30*time.Second, func() error {
			for id, st := range one.states(a.expired.ID, b.expired.ID) {
				if st == ec2types.InstanceStateNameRunning {
					return fmt.Errorf("expired instance %s still running", id)
				}
			}
			return nil
		})
		before := []int{one.sweeps(), two.sweeps()}
		cloudtest.Eventually(t, 30*time.Second, func() error {
			if one.sweeps() < before[0]+2 || two.sweeps() < before[1]+2 {
				return errors.New("fewer than two more sweeps in each stack")
			}
			return nil
		})
		for id, st := range one.states(stray.ID, strayExpired.ID) {
			if st != ec2types.InstanceStateNameRunning {
				t.Errorf("instance %s with Sortie's tags but no stack is %s", id, st)
			}
		}
		for _, c := range []struct {
			e    *env
			mine string
		}{{one, a.expired.ID}, {two, b.expired.ID}} {
			lines := strings.Split(c.e.Logs.String(), "\n")
			for _, id := range []string{a.expired.ID, b.expired.ID, strayExpired.ID} {
				swept := slices.ContainsFunc(lines, func(l string) bool {
					return strings.Contains(l, `"msg":"sweeping instance"`) && strings.Contains(l, `"instance":"`+id+`"`)
				})
				if swept != (id == c.mine) {
					t.Errorf("stack %s swept %s: %v, want %v", c.e.Topology.Prefix, id, swept, id == c.mine)
				}
			}
		}
	})
}

// TestArchiveFailureStillTerminates: one instance unreachable over SSH, and S3 refusing
// every upload (the log bucket is gone): both instances are terminated all the same, each
// failure is in FleetTerminated.
func TestArchiveFailureStillTerminates(t *testing.T) {
	e := newEnv(t)
	out := e.Subscribe(t, bus.FleetTerminated)
	hk := cloudtest.NewHostKey(t)
	fleetTags := map[string]string{tags.Stack: e.Topology.Prefix, tags.JobID: "job-fail", tags.Fleet: "job-fail",
		tags.LeaseExpires: time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}
	fleet := e.launch(2, hk.UserData, fleetTags)
	unreachable, refused := fleet[0], fleet[1]
	e.writeLog(refused.ID, "log\n")
	// EC2 says the unreachable one listens where nobody does.
	if _, err := e.EC2.CreateTags(t.Context(), &ec2.CreateTagsInput{Resources: []string{unreachable.ID},
		Tags: []ec2types.Tag{{Key: aws.String(tags.SSHEndpoint), Value: aws.String(cloudtest.FreeAddr(t))}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.S3.DeleteBucket(t.Context(), &s3.DeleteBucketInput{Bucket: aws.String(e.Topology.BucketName())}); err != nil {
		t.Fatal(err)
	}
	e.start()
	e.Publish(t, events.JobFinished{
		Header: events.NewHeader("job-fail", "corr-fail", time.Now()), FleetID: "job-fail", Template: "test",
		Outcome: events.OutcomeSucceeded, Instances: fleet, HostKey: hk.Authorized, KeyName: e.key.Name,
	})
	got := e.receive(t, out, "job-fail")
	if want := sortedIDs(fleet...); !slices.Equal(got.TerminatedInstanceIDs, want) {
		t.Fatalf("terminated %v, want %v", got.TerminatedInstanceIDs, want)
	}
	for id, st := range e.states(unreachable.ID, refused.ID) {
		if st != ec2types.InstanceStateNameTerminated {
			t.Errorf("instance %s is %s, want terminated", id, st)
		}
	}
	failures := map[string]string{}
	for _, f := range got.ArchiveFailures {
		failures[f.InstanceID] = f.Error
	}
	if len(got.Archives) != 0 || len(failures) != 2 {
		t.Fatalf("archives %+v, failures %+v: want two failures", got.Archives, got.ArchiveFailures)
	}
	if !strings.Contains(failures[unreachable.ID], "dialing ssh") {
		t.Errorf("unreachable instance's failure %q does not say SSH", failures[unreachable.ID])
	}
	if !strings.Contains(failures[refused.ID], "s3://"+e.Topology.BucketName()) {
		t.Errorf("refused upload's failure %q does not name the bucket", failures[refused.ID])
	}
}
