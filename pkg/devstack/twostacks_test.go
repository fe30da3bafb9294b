package devstack

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/fleetview"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
	"github.com/sortie-fleet/sortie/pkg/tags"
)

// TestTwoStacksAtOnce runs two whole stacks (prefixes of their own, five services each) in
// one local cloud, and a job in each at the same time. Each stack launches, reaps and lists
// its own fleet only; an instance carrying Sortie's tags for one of the jobs but no stack
// tag is never touched by either stack's reaper or sweep. Both stacks run the same job id:
// the provisioner's ClientToken includes the stack, so EC2 launches two fleets, not one.
func TestTwoStacksAtOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: starts two whole stacks")
	}
	cloud := cloudtest.NewCloud(t, localcloud.Options{BootDelay: 200 * time.Millisecond})
	run := cloudtest.Unique("-")
	jobID := "two-stacks" + run
	jobIDs := []string{jobID, jobID}
	prefixes := []string{"two-a" + strings.ReplaceAll(run, "-", "")[:4], "two-b" + strings.ReplaceAll(run, "-", "")[:4]}
	type started struct {
		st   *Stack
		logs *cloudtest.Buffer
	}
	var stacks []started
	for _, p := range prefixes {
		logs := &cloudtest.Buffer{}
		// Key pairs are per account: each stack's ops name its own.
		ops := e2eOps(t)
		for name, tmpl := range ops.Templates {
			tmpl.KeyName = p + "-" + tmpl.KeyName
			ops.Templates[name] = tmpl
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		st, err := Start(ctx, Options{Cloud: cloud, Prefix: p, Ops: ops, Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := st.Close(); err != nil {
				t.Errorf("closing stack %s: %v", p, err)
			}
		})
		stacks = append(stacks, started{st, logs})
	}
	ec2c := stacks[0].st.EC2
	// The stray: Sortie's tags for the same job and fleet id, an expired lease, no stack.
	stray, err := ec2c.RunInstances(t.Context(), &ec2.RunInstancesInput{
		ImageId: aws.String(cloudtest.Image), InstanceType: ec2types.InstanceTypeT3Micro, MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
		TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance, Tags: []ec2types.Tag{
			{Key: aws.String(tags.JobID), Value: aws.String(jobID)}, {Key: aws.String(tags.Fleet), Value: aws.String(jobID)},
			{Key: aws.String(tags.LeaseExpires), Value: aws.String(time.Now().Add(-time.Hour).UTC().Format(time.RFC3339))},
		}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	strayID := aws.ToString(stray.Instances[0].InstanceId)

	// The same job in both stacks, at once.
	type outcome struct {
		tr  Trace
		log string
		err error
	}
	results := make([]chan outcome, len(stacks))
	for i, s := range stacks {
		results[i] = make(chan outcome, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			w, err := s.st.Watch(ctx)
			if err != nil {
				results[i] <- outcome{err: err}
				return
			}
			defer w.Close(context.Background())
			job := events.JobSubmitted{Header: events.NewHeader(jobIDs[i], "corr-"+s.st.Topology.Prefix, time.Now()),
				Template: "demo", Profile: "demo-fast", Recipe: "quick", Work: events.WorkSource{Count: DemoFiles}, DeadlineSeconds: 20}
			if err := s.st.Publisher.Publish(ctx, job); err != nil {
				results[i] <- outcome{err: err}
				return
			}
			var log bytes.Buffer
			tr, err := Follow(ctx, w, jobIDs[i], &log)
			results[i] <- outcome{tr, log.String(), err}
		}()
	}
	traces := make([]Trace, len(stacks))
	for i, s := range stacks {
		o := <-results[i]
		if o.err != nil || o.tr.Terminated == nil || o.tr.Launched == nil {
			t.Fatalf("stack %s: %v (services: %v)\n%s", s.st.Topology.Prefix, o.err, s.st.Err(), o.log)
		}
		traces[i] = o.tr
	}

	for i, s := range stacks {
		prefix := s.st.Topology.Prefix
		tr := traces[i]
		var launched []string
		for _, in := range tr.Launched.Instances {
			launched = append(launched, in.ID)
		}
		slices.Sort(launched)
		t.Run(prefix+": its fleet, nothing else", func(t *testing.T) {
			if tr.Terminated.Outcome != events.OutcomeSucceeded || len(tr.Terminated.Refused) != 0 || len(tr.Terminated.ArchiveFailures) != 0 {
				t.Errorf("FleetTerminated = %+v, want success, nothing refused or failed", *tr.Terminated)
			}
			if !slices.Equal(tr.Terminated.TerminatedInstanceIDs, launched) {
				t.Errorf("terminated %v, want the stack's launched %v", tr.Terminated.TerminatedInstanceIDs, launched)
			}
			for _, in := range cloudtest.DescribeInstances(t, ec2c, &ec2.DescribeInstancesInput{InstanceIds: launched}) {
				if got := cloudtest.Tags(in)[tags.Stack]; got != prefix {
					t.Errorf("instance %s launched by %s is tagged %s=%q", aws.ToString(in.InstanceId), prefix, tags.Stack, got)
				}
			}
			insts, err := fleetview.Describe(t.Context(), ec2c, fleetview.Query{Stack: prefix, All: true})
			if err != nil {
				t.Fatal(err)
			}
			var listed []string
			for _, in := range insts {
				listed = append(listed, aws.ToString(in.InstanceId))
			}
			slices.Sort(listed)
			if !slices.Equal(listed, launched) {
				t.Errorf("status of %s lists %v, want %v", prefix, listed, launched)
			}
		})
	}

	t.Run("the stray without a stack lives through both stacks' sweeps", func(t *testing.T) {
		sweeps := func() []int {
			var n []int
			for _, s := range stacks {
				n = append(n, strings.Count(s.logs.String(), `"msg":"sweep"`))
			}
			return n
		}
		before := sweeps()
		cloudtest.Eventually(t, time.Minute, func() error {
			for i, n := range sweeps() {
				if n < before[i]+1 {
					return fmt.Errorf("stack %s has not swept again", stacks[i].st.Topology.Prefix)
				}
			}
			return nil
		})
		in := cloudtest.DescribeInstances(t, ec2c, &ec2.DescribeInstancesInput{InstanceIds: []string{strayID}})[0]
		if in.State.Name != ec2types.InstanceStateNameRunning {
			t.Errorf("the stray %s is %s", strayID, in.State.Name)
		}
		for _, s := range stacks {
			if strings.Contains(s.logs.String(), strayID) {
				t.Errorf("stack %s's services mention the stray %s", s.st.Topology.Prefix, strayID)
			}
		}
	})
}
