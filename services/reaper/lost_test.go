package reaper_test

import (
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/tags"
	"github.com/sortie-fleet/sortie/services/reaper"
)

// TestInstanceLost runs the reaper's InstanceLost handling on the local cloud: a spot
// instance warned of its interruption has its logs archived (SSE-KMS, where a finished
// fleet's go) while it runs, and keeps running; the job's later FleetTerminated lists that
// archive although the instance is gone by then. An InstanceLost naming another fleet's or
// another stack's instance, or an instance already gone, archives nothing, and one that
// does not validate is dead-lettered without ending its job. The job's end releases the
// capacity of every plan revision.
func TestInstanceLost(t *testing.T) {
	e := newEnv(t)
	out := e.Subscribe(t, bus.FleetTerminated)
	hk := cloudtest.NewHostKey(t)
	stack := e.Topology.Prefix
	jobID := "job-lost" + cloudtest.Unique("-")
	fleetTags := map[string]string{tags.Stack: stack, tags.JobID: jobID, tags.Fleet: jobID,
		tags.LeaseExpires: time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}
	with := func(k, v string) map[string]string {
		m := maps.Clone(fleetTags)
		m[k] = v
		return m
	}
	fleet := e.launch(3, hk.UserData, fleetTags)
	kept, lost, gone := fleet[0], fleet[1], fleet[2]
	// A replacement of plan revision 2: a host key of its own, which JobFinished names.
	hk2 := cloudtest.NewHostKey(t)
	repl := e.launch(1, hk2.UserData, with(tags.PlanRevision, "2"))[0]
	otherFleet := e.launch(1, hk.UserData, with(tags.Fleet, "job-other"))[0]
	otherStack := e.launch(1, hk.UserData, with(tags.Stack, "t-someone-else"))[0]
	for _, in := range []events.InstanceRef{kept, lost, gone, repl, otherFleet, otherStack} {
		e.writeLog(in.ID, "log of "+in.ID+"\n")
	}
	cloudtest.WriteFile(t, filepath.Join(e.Cloud.InstanceDir(lost.ID), "logs/resize.log"), []byte("resized on "+lost.ID+"\n"), 0o600)
	terminate := func(t *testing.T, ids ...string) {
		t.Helper()
		if _, err := e.EC2.TerminateInstances(t.Context(), &ec2.TerminateInstancesInput{InstanceIds: ids}); err != nil {
			t.Fatal(err)
		}
		cloudtest.Eventually(t, 20*time.Second, func() error {
			for id, st := range e.states(ids...) {
				if st != ec2types.InstanceStateNameTerminated {
					return fmt.Errorf("%s is %s", id, st)
				}
			}
			return nil
		})
	}
	terminate(t, gone.ID) // taken away by someone else before the reaper hears of it
	e.start()

	warning := func(id string) events.InstanceLost {
		return events.InstanceLost{
			Header: events.NewHeader(jobID, "corr-lost", time.Now()), FleetID: jobID, PlanRevision: 1,
			InstanceID: id, Cause: events.LostSpotInterruption, NoticeDeadline: time.Now().Add(2 * time.Minute).UTC(),
			Detail: "instance-action: terminate", Template: "test", HostKey: hk.Authorized, KeyName: e.key.Name,
			Logs: []string{"logs/resize.log"},
		}
	}
	archived := func(id string) bool {
		_, err := e.S3.HeadObject(t.Context(), &s3.HeadObjectInput{Bucket: aws.String(e.Topology.BucketName()), Key: aws.String(reaper.ArchiveKey(jobID, id))})
		return err == nil
	}
	// logged waits for a log line with msg about the instance.
	logged := func(t *testing.T, msg, id string) {
		t.Helper()
		cloudtest.Eventually(t, 30*time.Second, func() error {
			for _, l := range strings.Split(e.Logs.String(), "\n") {
				if strings.Contains(l, `"msg":"`+msg+`"`) && strings.Contains(l, `"instance":"`+id+`"`) {
					return nil
				}
			}
			return fmt.Errorf("no %q logged for %s yet", msg, id)
		})
	}
	download := func(t *testing.T, id string) map[string]string {
		t.Helper()
		body, head := cloudtest.Download(t, e.S3, e.Topology.BucketName(), reaper.ArchiveKey(jobID, id))
		if head.ServerSideEncryption != "aws:kms" {
			t.Errorf("archive of %s: SSE %q, want aws:kms", id, head.ServerSideEncryption)
		}
		return cloudtest.Untar(t, body)
	}

	t.Run("a warned instance's logs are archived while it runs, and it keeps running", func(t *testing.T) {
		e.Publish(t, warning(lost.ID))
		logged(t, "lost instance's logs archived", lost.ID)
		files := download(t, lost.ID)
		if files[".sortie/worker/worker.log"] != "log of "+lost.ID+"\n" || files["logs/resize.log"] != "resized on "+lost.ID+"\n" {
			t.Errorf("archive holds %v, want the worker log and logs/resize.log", files)
		}
		if st := e.states(lost.ID)[lost.ID]; st != ec2types.InstanceStateNameRunning {
			t.Errorf("the lost instance is %s, want it left running (EC2 takes it)", st)
		}
	})

	t.Run("delivered again: not archived again", func(t *testing.T) {
		e.writeLog(lost.ID, "written after the archive\n")
		e.Publish(t, warning(lost.ID))
		logged(t, "lost instance's logs archived before: not archiving again", lost.ID)
		if got := download(t, lost.ID)[".sortie/worker/worker.log"]; got != "log of "+lost.ID+"\n" {
			t.Errorf("the archive was made again: worker.log = %q", got)
		}
	})

	t.Run("another fleet's or stack's instance: refused, nothing archived", func(t *testing.T) {
		for _, in := range []events.InstanceRef{otherFleet, otherStack} {
			e.Publish(t, warning(in.ID))
			logged(t, "lost instance refused: not this fleet's in this stack; nothing archived", in.ID)
			if archived(in.ID) {
				t.Errorf("instance %s, not this fleet's in this stack, was archived", in.ID)
			}
			if st := e.states(in.ID)[in.ID]; st != ec2types.InstanceStateNameRunning {
				t.Errorf("instance %s is %s, want it untouched", in.ID, st)
			}
		}
	})

	t.Run("an instance already gone: nothing to archive", func(t *testing.T) {
		ev := warning(gone.ID)
		ev.Cause, ev.NoticeDeadline = events.LostTerminated, time.Time{}
		e.Publish(t, ev)
		logged(t, "lost instance already gone: nothing to archive", gone.ID)
		if archived(gone.ID) {
			t.Errorf("instance %s, terminated, has an archive", gone.ID)
		}
	})

	t.Run("an invalid InstanceLost is dead-lettered; the job is not ended", func(t *testing.T) {
		bad := warning(kept.ID)
		bad.JobID = "job-badlost" + cloudtest.Unique("-")
		if err := e.Publisher.PublishBody(t.Context(), bad, []byte(`{"schema_version":1,"job_id":"`+bad.JobID+`","cause":"eaten"}`)); err != nil {
			t.Fatal(err)
		}
		dlq := bus.DLQName(e.Topology.QueueName(bus.Reaper, bus.InstanceLost))
		dead := cloudtest.DeadLetters(t, e.SQS, dlq, 30*time.Second, bad.JobID)
		if r := dead[bad.JobID][0].Reason; !strings.Contains(r, "cause") {
			t.Errorf("DLQ reason %q, want the invalid cause named", r)
		}
		rec, err := e.Ledger().Get(t.Context(), bad.JobID)
		if err != nil {
			t.Fatal(err)
		}
		if rec.DoneAt(ledger.Rejected) != "" {
			t.Errorf("the job was rejected: %s", rec.Attrs["reason"])
		}
		if got := cloudtest.Collect(t, e.SQS, out, 2*time.Second, nil)[bad.JobID]; len(got) != 0 {
			t.Errorf("%d FleetTerminated for the job of the invalid InstanceLost, want none", len(got))
		}
		if st := e.states(kept.ID)[kept.ID]; st != ec2types.InstanceStateNameRunning {
			t.Errorf("instance %s is %s", kept.ID, st)
		}
	})

	t.Run("FleetTerminated lists the lost instance's archive although it is gone", func(t *testing.T) {
		terminate(t, lost.ID) // EC2 reclaims it at the end of its notice
		// The job holds capacity for its first plan (3) and for its replacement (1).
		l := e.Ledger()
		if err := l.Note(t.Context(), jobID, ledger.Fields{ledger.AttrPlanRevision: "2"}); err != nil {
			t.Fatal(err)
		}
		for rev, n := range map[int]int{1: 3, 2: 1} {
			if ok, err := l.Reserve(t.Context(), ledger.ReservationID(jobID, rev), ledger.Reservation{Instances: n, Template: "test"}, ledger.Limits{}); !ok || err != nil {
				t.Fatalf("reserving revision %d: %t %v", rev, ok, err)
			}
		}
		if n, _, _, err := l.InUse(t.Context()); err != nil || n != 4 {
			t.Fatalf("%d instances reserved (%v), want 4", n, err)
		}
		e.Publish(t, events.JobFinished{
			Header: events.NewHeader(jobID, "corr-lost", time.Now()), FleetID: jobID, Template: "test",
			Outcome: events.OutcomeSucceeded, HostKey: hk.Authorized, KeyName: e.key.Name,
			Instances: []events.InstanceRef{kept, {ID: repl.ID, SSHEndpoint: repl.SSHEndpoint, HostKey: hk2.Authorized}},
		})
		got := e.receive(t, out, jobID)
		var ids []string
		for _, a := range got.Archives {
			ids = append(ids, a.InstanceID)
		}
		if want := sortedIDs(kept, lost, repl); !slices.Equal(ids, want) {
			t.Errorf("archives of %v, want %v (the lost one's from before, the replacement's pinned with its own key)", ids, want)
		}
		if len(got.ArchiveFailures) != 1 || got.ArchiveFailures[0].InstanceID != gone.ID {
			t.Errorf("archive failures %+v, want only %s, gone before anything was archived", got.ArchiveFailures, gone.ID)
		}
		if want := sortedIDs(kept, lost, gone, repl); !slices.Equal(got.TerminatedInstanceIDs, want) {
			t.Errorf("terminated %v, want %v", got.TerminatedInstanceIDs, want)
		}
		logged(t, "logs archived earlier", lost.ID)
		if n, _, _, err := l.InUse(t.Context()); err != nil || n != 0 {
			t.Errorf("%d instances still reserved (%v) after FleetTerminated, want every revision's released", n, err)
		}
		if files := download(t, repl.ID); files[".sortie/worker/worker.log"] != "log of "+repl.ID+"\n" {
			t.Errorf("the replacement's archive holds %v", files)
		}
		for _, in := range []events.InstanceRef{otherFleet, otherStack} {
			if st := e.states(in.ID)[in.ID]; st != ec2types.InstanceStateNameRunning {
				t.Errorf("instance %s, not this fleet's in this stack, is %s", in.ID, st)
			}
		}
	})
	if t.Failed() {
		return
	}
	if strings.Contains(e.Logs.String(), `"msg":"lost instance's logs not archived"`) {
		t.Error("an archive of a lost instance failed")
	}
}
