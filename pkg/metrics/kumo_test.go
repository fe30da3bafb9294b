package metrics

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"
	"github.com/sivchari/kumo"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/events"
)

// TestAgainstKumo sends a job's task metrics through the Batcher to a real CloudWatch API
// (kumo) in several calls and reads the totals back with JobTotals.
func TestAgainstKumo(t *testing.T) {
	t.Parallel()
	srv := kumo.NewServer()
	t.Cleanup(srv.Close)
	client := NewClient(awsx.ForEndpoint(srv.URL))
	b, _ := newBatcher(t, client, Config{})
	start := time.Now().Add(-time.Minute)

	job := fmt.Sprintf("job-kumo-%d", time.Now().UnixNano())
	const succeeded, failed = 1203, 97
	for i := range succeeded + failed {
		outcome := events.OutcomeSucceeded
		if i >= succeeded {
			outcome = events.OutcomeFailed
		}
		e := events.TaskReported{Header: events.NewHeader(job, "corr-1", time.Now()), Outcome: outcome, DurationMS: int64(i)}
		for _, d := range TaskData(e) {
			b.Add(d)
		}
	}
	// Other series, enough for more than one call: 1500 fleets' alive counts.
	for i := range 1500 {
		b.Add(FleetAlive(job, fmt.Sprintf("fleet-%d", i), 3))
	}
	b.Add(counter("other-job")) // must not count for job
	if err := b.Flush(context.Background()); err != nil {
		t.Fatalf("Flush: %v", err)
	}

	got, err := JobTotals(context.Background(), client, job, start, time.Now().Add(time.Minute))
	if err != nil {
		t.Fatalf("JobTotals: %v", err)
	}
	if got != (Totals{Succeeded: succeeded, Failed: failed}) {
		t.Errorf("JobTotals = %+v, want %d succeeded, %d failed", got, succeeded, failed)
	}

	// Every duration was distinct, so kumo (which ignores Counts) agrees with AWS here.
	out, err := client.GetMetricStatistics(context.Background(), &cloudwatch.GetMetricStatisticsInput{
		Namespace:  aws.String(Namespace),
		MetricName: aws.String(TaskDuration),
		Dimensions: []types.Dimension{{Name: aws.String(DimJobID), Value: aws.String(job)}, {Name: aws.String(DimTask), Value: aws.String(DefaultTask)}},
		StartTime:  aws.Time(start),
		EndTime:    aws.Time(time.Now().Add(time.Minute)),
		Period:     aws.Int32(60),
		Statistics: []types.Statistic{types.StatisticSampleCount, types.StatisticMaximum},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Datapoints) != 1 || aws.ToFloat64(out.Datapoints[0].SampleCount) != succeeded+failed ||
		aws.ToFloat64(out.Datapoints[0].Maximum) != succeeded+failed-1 {
		t.Errorf("TaskDuration statistics %+v, want %d samples, maximum %d", out.Datapoints, succeeded+failed, succeeded+failed-1)
	}
}
