package devstack

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/sortie-fleet/sortie/pkg/events"
)

// BenchmarkSubmittedToLaunched measures, on the full in-process stack, the latency from
// publishing a JobSubmitted to seeing its FleetLaunched (planner, provisioner, and the
// local cloud's 200 ms boot delay), over 50 one-instance jobs submitted one after
// another; it reports the median and the 90th percentile. Each job then runs to its end
// (bootstrap, monitor, reaper) while the next is submitted.
//
//	go test -run '^$' -bench SubmittedToLaunched -benchtime 1x ./pkg/devstack
func BenchmarkSubmittedToLaunched(b *testing.B) {
	const jobs = 50
	e := startE2E(b)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var lat []time.Duration
	b.ResetTimer()
	for i := range b.N * jobs {
		job := events.JobSubmitted{Header: events.NewHeader(fmt.Sprintf("bench-%d-%d", b.N, i), "corr-bench", time.Now()),
			Template: "demo", Profile: "demo-fast", Recipe: "quick", Work: events.WorkSource{Count: 1}, DeadlineSeconds: 60}
		start := time.Now()
		if err := e.Publisher.Publish(ctx, job); err != nil {
			b.Fatal(err)
		}
		for {
			ev, err := e.w.Next(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if id, _ := ev.IDs(); id == job.JobID && ev.EventType() == events.TypeFleetLaunched {
				break
			}
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "ms-median")
	b.ReportMetric(float64(lat[len(lat)*9/10].Milliseconds()), "ms-p90")
	b.ReportMetric(0, "ns/op")
}
