package telemetry

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/sortie-fleet/sortie/pkg/bus"
)

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(body)
}

// TestReadiness walks a service's life: not ready before its config and queues, ready
// once both are there, not ready while a queue cannot be received from, and not ready
// for good once draining; /healthz answers 200 throughout.
func TestReadiness(t *testing.T) {
	tel := New("planner")
	h := tel.Handler()
	steps := []struct {
		name     string
		do       func()
		wantCode int
		want     []string // substrings of the /readyz body
	}{
		{"at start", func() {}, 503, []string{"ops config not loaded yet", "queues not checked yet"}},
		{"config loaded", func() { tel.ConfigLoaded(nil) }, 503, []string{"queues not checked yet"}},
		{"a queue is missing", func() {
			tel.QueuesChecked(map[string]error{"q": nil, "q-dlq": &bus.MissingError{Kind: "queue", Name: "q-dlq"}})
		}, 503, []string{"queue q-dlq does not exist", "sortie infra up"}},
		{"every queue there", func() { tel.QueuesChecked(map[string]error{"q": nil, "q-dlq": nil}) }, 200, []string{"ready"}},
		{"receiving fails", func() { tel.QueueStatus("q", errors.New("receiving from queue q: connection refused")) }, 503, []string{"connection refused"}},
		{"receiving works again", func() { tel.QueueStatus("q", nil) }, 200, []string{"ready"}},
		{"draining", tel.Drain, 503, []string{"draining"}},
		{"draining stays", func() { tel.QueuesChecked(map[string]error{"q": nil}) }, 503, []string{"draining"}},
	}
	for _, st := range steps {
		st.do()
		code, body := get(t, h, "/readyz")
		if code != st.wantCode {
			t.Errorf("%s: /readyz %d %q, want %d", st.name, code, body, st.wantCode)
		}
		for _, w := range st.want {
			if !strings.Contains(body, w) {
				t.Errorf("%s: /readyz body %q lacks %q", st.name, body, w)
			}
		}
		wantReady := 0.0
		if st.wantCode == 200 {
			wantReady = 1
		}
		if v := gaugeValue(t, tel); v != wantReady {
			t.Errorf("%s: sortie_ready = %v, want %v", st.name, v, wantReady)
		}
		if code, _ := get(t, h, "/healthz"); code != 200 {
			t.Errorf("%s: /healthz %d, want 200", st.name, code)
		}
	}
}

// TestMetrics: what the router and the stages report appears on /metrics under the
// service's label.
func TestMetrics(t *testing.T) {
	tel := New("reaper")
	tel.HandlerStarted(bus.JobFinished)
	tel.HandlerStarted(bus.JobFinished)
	tel.HandlerDone(bus.JobFinished, 1500*time.Millisecond, bus.OutcomeHandled)
	tel.HandlerStarted(bus.TimerEventType)
	tel.HandlerDone(bus.TimerEventType, time.Millisecond, bus.OutcomeDeadLettered)
	tel.MessageReceived("t-reaper-job-finished", 42*time.Second)
	tel.MessageReceived("t-reaper-job-finished", 3*time.Second)
	tel.ArchiveStored(1000)
	tel.ArchiveStored(24)
	tel.InstancesTerminated(3)
	tel.InstancesLaunched("m3.medium", 2)
	tel.BootstrapStep("run", 2*time.Second, nil)
	tel.BootstrapStep("start", time.Second, errors.New("exit status 1"))
	tel.FleetPlanned()
	tel.ConfigReloaded("rejected")

	code, body := get(t, tel.Handler(), "/metrics")
	if code != 200 {
		t.Fatalf("/metrics %d", code)
	}
	for _, want := range []string{
		`sortie_messages_total{event_type="JobFinished",outcome="handled",service="reaper"} 1`,
		`sortie_messages_total{event_type="timer",outcome="dead_lettered",service="reaper"} 1`,
		`sortie_handlers_in_flight{service="reaper"} 1`,
		`sortie_handler_duration_seconds_bucket{event_type="JobFinished",service="reaper",le="2.5"} 1`,
		`sortie_handler_duration_seconds_bucket{event_type="JobFinished",service="reaper",le="1"} 0`,
		`sortie_oldest_message_age_seconds{queue="t-reaper-job-finished",service="reaper"} 42`,
		`sortie_message_age_at_receipt_seconds_count{queue="t-reaper-job-finished",service="reaper"} 2`,
		`sortie_archive_bytes_total{service="reaper"} 1024`,
		`sortie_instances_terminated_total{service="reaper"} 3`,
		`sortie_instances_launched_total{instance_type="m3.medium",service="reaper"} 2`,
		`sortie_bootstrap_step_duration_seconds_count{kind="start",result="failed",service="reaper"} 1`,
		`sortie_fleets_planned_total{service="reaper"} 1`,
		`sortie_config_reloads_total{result="rejected",service="reaper"} 1`,
		`go_goroutines `,
		`process_resident_memory_bytes `,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func TestNilTelemetryDoesNothing(t *testing.T) {
	var tel *Telemetry
	tel.InstancesLaunched("m3.medium", 1)
	tel.BootstrapStep("run", time.Second, nil)
	tel.ArchiveStored(1)
	tel.InstancesTerminated(1)
	tel.FleetPlanned()
	tel.ConfigLoaded(nil)
	tel.Drain()
	tel.HandlerStarted("x")
	tel.HandlerDone("x", 0, bus.OutcomeHandled)
}

func TestWindowMax(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var w windowMax
	w.add(t0, 10*time.Second)
	w.add(t0.Add(time.Second), 30*time.Second)
	w.add(t0.Add(2*time.Second), 20*time.Second)
	w.add(t0.Add(3*time.Second), 5*time.Second)
	tests := []struct {
		since time.Time
		want  time.Duration
	}{
		{t0, 30 * time.Second},
		{t0.Add(1500 * time.Millisecond), 20 * time.Second},
		{t0.Add(2500 * time.Millisecond), 5 * time.Second},
		{t0.Add(time.Hour), 0},
	}
	for _, tt := range tests {
		if got := w.max(tt.since); got != tt.want {
			t.Errorf("max since +%s = %s, want %s", tt.since.Sub(t0), got, tt.want)
		}
	}
	if len(w.samples) != 0 {
		t.Errorf("%d samples kept after the window passed", len(w.samples))
	}
}

func gaugeValue(t *testing.T, tel *Telemetry) float64 {
	t.Helper()
	var m dto.Metric
	if err := tel.ready.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}
