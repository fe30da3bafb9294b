package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/events"
)

// Report is one task's result as any workload reports it (`sortie-worker report`: a shell
// script, an Ansible callback, a program of its own).
type Report struct {
	Task     string        // the workload's name for the task (printable, ≤ events.MaxTaskIDBytes)
	Outcome  string        // events.OutcomeSucceeded or events.OutcomeFailed
	Duration time.Duration // how long the task took (≥ 0)
	Detail   string        // optional: why it failed, or a note
}

// TaskReported is the event r makes for the job in env, at now. Its error says everything
// that is wrong with the report and the ids at once (wrapping events.ErrInvalid).
func (r Report) TaskReported(env JobEnv, now time.Time) (events.TaskReported, error) {
	ev := events.TaskReported{
		Header:     events.NewHeader(env.JobID, env.CorrelationID, now),
		FleetID:    env.FleetID,
		InstanceID: env.InstanceID,
		TaskID:     r.Task,
		Outcome:    r.Outcome,
		DurationMS: r.Duration.Milliseconds(),
		Detail:     r.Detail,
	}
	var errs []error
	if r.Duration < 0 {
		errs = append(errs, fmt.Errorf("duration %s: must not be negative", r.Duration))
	}
	if err := ev.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return events.TaskReported{}, fmt.Errorf("task report: %w", err)
	}
	return ev, nil
}

// Publish validates r and publishes it as a TaskReported on the stack env.Prefix names, with
// the instance's own credentials (the worker role, TaskReported's only producer). Nothing
// is published when the report or the ids are invalid.
func Publish(ctx context.Context, cfg aws.Config, env JobEnv, r Report) error {
	ev, err := r.TaskReported(env, time.Now())
	if err != nil {
		return err
	}
	pub, err := bus.NewPublisher(bus.PublisherConfig{
		Topology: bus.Topology{Prefix: env.Prefix},
		AWS:      cfg,
		Logger:   slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return fmt.Errorf("task report: %w", err)
	}
	defer pub.Close()
	if err := pub.Publish(ctx, ev); err != nil {
		return fmt.Errorf("reporting task %q: %w", r.Task, err)
	}
	return nil
}
