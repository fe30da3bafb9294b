package metrics

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"

	"github.com/sortie-fleet/sortie/pkg/events"
)

// Namespace is Sortie's CloudWatch namespace.
const Namespace = "Sortie"

// Sortie's metrics.
const (
	TasksSucceeded      = "TasksSucceeded"      // Count, a counter: one per succeeded task
	TasksFailed         = "TasksFailed"         // Count, a counter: one per failed task
	TaskDuration        = "TaskDuration"        // Milliseconds, samples: one per task
	FleetInstancesAlive = "FleetInstancesAlive" // Count, samples: instances with a live workload, at each check
	ArchiveFailures     = "ArchiveFailures"     // Count, a counter: one per instance the reaper terminated without archiving its logs
	JobCost             = "JobCost"             // None (dollars), samples: a job's fleet cost, once per reap (read its Maximum)
)

// Dimension names.
const (
	DimJobID   = "JobId"
	DimTask    = "Task"
	DimFleetID = "FleetId"
	DimStack   = "Stack"
)

// DefaultTask is the Task dimension of every task metric. TaskReported does not say which
// recipe or kind of task it reports, and the monitor keeps no per-fleet state to look it
// up, so every task of a job is counted under this one value; JobId tells jobs apart.
const DefaultTask = "item"

// TaskDimensions are the dimensions of a job's task metrics.
func TaskDimensions(jobID string) map[string]string {
	return map[string]string{DimJobID: jobID, DimTask: DefaultTask}
}

// TaskData is what one TaskReported adds: TasksSucceeded or TasksFailed by one, and its
// TaskDuration.
func TaskData(e events.TaskReported) []Datum {
	name := TasksSucceeded
	if e.Outcome != events.OutcomeSucceeded {
		name = TasksFailed
	}
	return []Datum{
		{Name: name, Unit: types.StandardUnitCount, Dimensions: TaskDimensions(e.JobID), Value: 1, Counter: true},
		{Name: TaskDuration, Unit: types.StandardUnitMilliseconds, Dimensions: TaskDimensions(e.JobID), Value: float64(e.DurationMS)},
	}
}

// FleetAlive is a fleet's count of instances with a live workload at one check.
func FleetAlive(jobID, fleetID string, alive int) Datum {
	return Datum{
		Name:       FleetInstancesAlive,
		Unit:       types.StandardUnitCount,
		Dimensions: map[string]string{DimJobID: jobID, DimFleetID: fleetID},
		Value:      float64(alive),
	}
}

// ArchiveFailed counts one instance of a stack whose logs the reaper could not archive
// before terminating it.
func ArchiveFailed(stack string) Datum {
	return Datum{Name: ArchiveFailures, Unit: types.StandardUnitCount, Dimensions: map[string]string{DimStack: stack}, Value: 1, Counter: true}
}

// FleetCost is a job's fleet cost in dollars as the reaper computed it. It is a sample,
// not a counter: a duplicate reap sends the same value again, and Maximum stays the cost.
func FleetCost(jobID string, dollars float64) Datum {
	return Datum{Name: JobCost, Unit: types.StandardUnitNone, Dimensions: map[string]string{DimJobID: jobID}, Value: dollars}
}

// StatisticsAPI is the CloudWatch call JobTotals makes.
type StatisticsAPI interface {
	GetMetricStatistics(ctx context.Context, params *cloudwatch.GetMetricStatisticsInput, optFns ...func(*cloudwatch.Options)) (*cloudwatch.GetMetricStatisticsOutput, error)
}

var _ StatisticsAPI = (*cloudwatch.Client)(nil)

// Totals are a job's task counts as CloudWatch has them.
type Totals struct {
	Succeeded, Failed int
}

// JobTotals sums TasksSucceeded and TasksFailed of a job over [start, end]. CloudWatch
// answers at most 1440 data points per call, so the period is the smallest that fits the
// window (see Period). Pass an end a little in the future to include data just sent.
func JobTotals(ctx context.Context, api StatisticsAPI, jobID string, start, end time.Time) (Totals, error) {
	if !end.After(start) {
		return Totals{}, fmt.Errorf("task totals of job %s: empty window %s..%s", jobID, start, end)
	}
	period := Period(end.Sub(start))
	sum := func(metric string) (int, error) {
		out, err := api.GetMetricStatistics(ctx, &cloudwatch.GetMetricStatisticsInput{
			Namespace:  aws.String(Namespace),
			MetricName: aws.String(metric),
			Dimensions: []types.Dimension{
				{Name: aws.String(DimJobID), Value: aws.String(jobID)},
				{Name: aws.String(DimTask), Value: aws.String(DefaultTask)},
			},
			StartTime:  aws.Time(start),
			EndTime:    aws.Time(end),
			Period:     aws.Int32(int32(period / time.Second)),
			Statistics: []types.Statistic{types.StatisticSum},
		})
		if err != nil {
			return 0, fmt.Errorf("reading %s of job %s: %w", metric, jobID, err)
		}
		var total float64
		for _, dp := range out.Datapoints {
			total += aws.ToFloat64(dp.Sum)
		}
		return int(math.Round(total)), nil
	}
	ok, err := sum(TasksSucceeded)
	if err != nil {
		return Totals{}, err
	}
	failed, err := sum(TasksFailed)
	if err != nil {
		return Totals{}, err
	}
	return Totals{Succeeded: ok, Failed: failed}, nil
}

// maxDatapoints is GetMetricStatistics' limit on data points per call.
const maxDatapoints = 1440

// Period returns the GetMetricStatistics period for a window ending about now: at most
// maxDatapoints periods, in whole units of the granularity CloudWatch keeps for data as
// old as the window's start (1 minute up to 15 days, 5 minutes up to 63 days, 1 hour beyond).
func Period(window time.Duration) time.Duration {
	const day = 24 * time.Hour
	unit := time.Minute
	switch {
	case window > 63*day:
		unit = time.Hour
	case window > 15*day:
		unit = 5 * time.Minute
	}
	p := (window + maxDatapoints - 1) / maxDatapoints
	return ((p + unit - 1) / unit) * unit
}
