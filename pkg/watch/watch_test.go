package watch_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
	"github.com/sortie-fleet/sortie/pkg/watch"
)

func finished(jobID, outcome string) events.FleetTerminated {
	return events.FleetTerminated{Header: events.NewHeader(jobID, "corr-"+jobID, time.Now()), FleetID: jobID, Outcome: outcome,
		Reason: "test"}
}

func TestFollow(t *testing.T) {
	s := cloudtest.NewStack(t, cloudtest.NewCloud(t, localcloud.Options{}))
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	w, err := watch.Open(ctx, s.SNS, s.SQS, s.Topology, "t1")
	if err != nil {
		t.Fatal(err)
	}

	t.Run("events of the job in order, others ignored, ends at FleetTerminated", func(t *testing.T) {
		task := events.TaskReported{Header: events.NewHeader("job-a", "corr-job-a", time.Now()), FleetID: "job-a",
			InstanceID: "i-0123456789abcdef0", TaskID: "input/1", Outcome: events.OutcomeSucceeded, DurationMS: 3}
		s.Publish(t, finished("job-other", events.OutcomeFailed))
		s.Publish(t, task)
		s.Publish(t, finished("job-a", events.OutcomeSucceeded))
		var seen []string
		ft, err := w.Follow(ctx, "job-a", func(ev events.Event) { seen = append(seen, ev.EventType()+" "+watch.Describe(ev)) })
		if err != nil {
			t.Fatal(err)
		}
		if ft.JobID != "job-a" || ft.Outcome != events.OutcomeSucceeded {
			t.Errorf("FleetTerminated = %+v", ft)
		}
		if len(seen) != 2 || !strings.HasPrefix(seen[0], "TaskReported") || !strings.Contains(seen[0], "input/1 succeeded") {
			t.Errorf("seen = %q", seen)
		}
	})

	t.Run("a dead-lettered job ends the follow with its reason", func(t *testing.T) {
		body, err := events.Encode(events.JobSubmitted{Header: events.NewHeader("job-b", "corr-b", time.Now()),
			Template: "nope", Profile: "p", Recipe: "r", Work: events.WorkSource{Count: 1}, DeadlineSeconds: 60})
		if err != nil {
			t.Fatal(err)
		}
		dlq := bus.DLQName(s.Topology.QueueName(bus.Planner, bus.JobSubmitted))
		url := cloudtest.QueueURL(t, s.SQS, dlq)
		if _, err := s.SQS.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: aws.String(url), MessageBody: aws.String(string(body)),
			MessageAttributes: map[string]sqstypes.MessageAttributeValue{
				bus.AttrJobID:     {DataType: aws.String("String"), StringValue: aws.String("job-b")},
				bus.AttrEventType: {DataType: aws.String("String"), StringValue: aws.String(bus.JobSubmitted)},
				bus.AttrError:     {DataType: aws.String("String"), StringValue: aws.String(`unknown template "nope"`)},
			}}); err != nil {
			t.Fatal(err)
		}
		_, err = w.Follow(ctx, "job-b", nil)
		var rej *watch.RejectedError
		if !errors.As(err, &rej) || rej.Queue != dlq || rej.Reason != `unknown template "nope"` || rej.EventType != bus.JobSubmitted {
			t.Fatalf("err = %v (%+v)", err, rej)
		}
		// The watcher only peeks: the message is visible again at once, for operators.
		out, err := s.SQS.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: aws.String(url), WaitTimeSeconds: 1})
		if err != nil {
			t.Fatal(err)
		}
		if len(out.Messages) != 1 {
			t.Errorf("dead letter not visible after the watcher's peek: %d messages", len(out.Messages))
		}
	})

	t.Run("close removes the watch queue", func(t *testing.T) {
		if err := w.Close(ctx); err != nil {
			t.Fatal(err)
		}
		_, err := s.SQS.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String(s.Topology.Prefix + "-watch-t1")})
		if err == nil {
			t.Error("watch queue still exists after Close")
		}
	})
}

func TestOpenRefusesLongNames(t *testing.T) {
	_, err := watch.Open(t.Context(), nil, nil, bus.Topology{Prefix: "sortie"}, strings.Repeat("x", 80))
	if err == nil || !strings.Contains(err.Error(), "80 characters") {
		t.Fatalf("err = %v", err)
	}
}

func TestDescribeFleetTerminated(t *testing.T) {
	e := finished("job-d", events.OutcomeSucceeded)
	plain := watch.Describe(e)
	if strings.Contains(plain, "refused") || strings.Contains(plain, "not archived") {
		t.Errorf("a clean FleetTerminated reads %q", plain)
	}
	e.ArchiveFailures = []events.ArchiveFailure{{InstanceID: "i-00000001", Error: "dialing ssh: refused"}}
	e.Refused = []events.RefusedInstance{{InstanceID: "i-00000002", Reason: events.RefusedOtherStack, Detail: "sortie:stack is \"b\""}}
	got := watch.Describe(e)
	for _, want := range []string{"i-00000001 not archived: dialing ssh: refused", `i-00000002 refused (other-stack: sortie:stack is "b")`} {
		if !strings.Contains(got, want) {
			t.Errorf("Describe = %q, want it to say %q", got, want)
		}
	}
}

func TestDescribeReplacements(t *testing.T) {
	at := time.Date(2026, 12, 2, 16, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		ev   events.Event
		want string
	}{
		{events.FleetPlanned{PlanRevision: 1, Rationale: "3 instances"}, "FleetPlanned       3 instances"},
		{events.FleetPlanned{PlanRevision: 2, Rationale: "replan 2 …"}, "FleetPlanned       revision 2: replan 2 …"},
		{events.FleetLaunched{PlanRevision: 2, Instances: []events.Instance{{ID: "i-0b", SSHEndpoint: "10.0.0.2:22"}}}, "FleetLaunched      revision 2: 1 instances: i-0b@10.0.0.2:22"},
		{events.FleetBootstrapped{PlanRevision: 2, Instances: []events.InstanceResult{{ID: "i-0b", OK: true}}}, "FleetBootstrapped  revision 2: 1/1 instances bootstrapped"},
		{events.InstanceLost{InstanceID: "i-0a", PlanRevision: 1, Cause: events.LostSpotInterruption, NoticeDeadline: at},
			"InstanceLost       i-0a (plan revision 1): spot-interruption, taken at 2026-12-02T16:00:00Z"},
		{events.InstanceLost{InstanceID: "i-0a", PlanRevision: 1, Cause: events.LostTerminated}, "InstanceLost       i-0a (plan revision 1): terminated"},
	} {
		if got := watch.Describe(tt.ev); got != tt.want {
			t.Errorf("Describe(%T) = %q, want %q", tt.ev, got, tt.want)
		}
	}
}
