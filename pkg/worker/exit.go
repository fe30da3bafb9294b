package worker

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/events"
)

// ExitReport is the report a start step's wrapper publishes the moment its workload
// ends: a TaskReported of kind exited naming the step, with the exit code. env holds the
// job's ids (LoadJobEnv).
func ExitReport(env JobEnv, step string, code int, now time.Time) (events.TaskReported, error) {
	outcome := events.OutcomeSucceeded
	if code != 0 {
		outcome = events.OutcomeFailed
	}
	e := events.TaskReported{
		Header:     events.NewHeader(env.JobID, env.CorrelationID, now),
		FleetID:    env.FleetID,
		InstanceID: env.InstanceID,
		TaskID:     step,
		Outcome:    outcome,
		Kind:       events.ReportExited,
		ExitCode:   &code,
		Detail:     fmt.Sprintf("exit code %d", code),
	}
	if err := e.Validate(); err != nil {
		return events.TaskReported{}, fmt.Errorf("exit report: %w", err)
	}
	return e, nil
}

// PublishExit publishes the exit report of step on the TaskReported topic of env's
// stack, with the instance's AWS access (the instance profile may publish only there).
func PublishExit(ctx context.Context, cfg aws.Config, env JobEnv, step string, code int) error {
	e, err := ExitReport(env, step, code, time.Now())
	if err != nil {
		return err
	}
	pub, err := bus.NewPublisher(bus.PublisherConfig{
		Topology: bus.Topology{Prefix: env.Prefix},
		AWS:      cfg,
		Logger:   slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return fmt.Errorf("exit report: %w", err)
	}
	defer pub.Close()
	if err := pub.Publish(ctx, e); err != nil {
		return fmt.Errorf("publishing the exit report of step %s: %w", step, err)
	}
	return nil
}
