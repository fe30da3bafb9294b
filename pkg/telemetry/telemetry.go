// Package telemetry is what a Sortie service tells its operators over HTTP: /healthz,
// /readyz (queues reachable, ops config loaded, not draining) and Prometheus /metrics
// from a registry of its own (so `sortie dev` can run five services in one process).
package telemetry

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/sortie-fleet/sortie/pkg/bus"
)

// Namespace prefixes every metric name.
const Namespace = "sortie"

// Telemetry holds one service's metrics and readiness. Every method is safe for
// concurrent use, and a nil *Telemetry does nothing, so stage code may call the stage
// figures (InstancesLaunched, ...) whether or not it runs under a service.
type Telemetry struct {
	// Registry holds the service's metrics, served on /metrics.
	Registry *prometheus.Registry
	service  string

	messages      *prometheus.CounterVec
	handleSeconds *prometheus.HistogramVec
	inFlight      prometheus.Gauge
	oldestAge     *oldestAges
	ageAtReceipt  *prometheus.HistogramVec
	configReloads *prometheus.CounterVec
	configLoaded  prometheus.Gauge
	ready         prometheus.Gauge

	launched      *prometheus.CounterVec
	bootstrapStep *prometheus.HistogramVec
	archiveBytes  prometheus.Counter
	terminated    prometheus.Counter
	planned       prometheus.Counter

	mu       sync.Mutex
	config   error            // why the ops config is not loaded; nil once it is
	queues   map[string]error // every queue the router uses: nil or why it is not reachable
	draining bool
}

var _ bus.Observer = (*Telemetry)(nil)

// New returns the telemetry of the named service: a registry with the Go runtime and
// process collectors and Sortie's metrics, every one labelled service=<name>. It is not
// ready until ConfigLoaded is called and the router has checked its queues.
func New(service string) *Telemetry {
	reg := prometheus.NewRegistry()
	t := &Telemetry{
		Registry: reg,
		service:  service,
		config:   errors.New("ops config not loaded yet"),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "messages_total",
			Help: "Deliveries handled, by event type and outcome: handled (deleted), failed (left for SQS to redeliver) or dead_lettered (a permanent error sent it to the DLQ).",
		}, []string{"event_type", "outcome"}),
		handleSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "handler_duration_seconds",
			Help:    "Time to handle one delivery, retries included, by event type.",
			Buckets: []float64{0.005, 0.025, 0.1, 0.25, 1, 2.5, 10, 30, 60, 180, 600},
		}, []string{"event_type"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "handlers_in_flight",
			Help: "Messages being handled now.",
		}),
		oldestAge: newOldestAges(oldestWindow),
		ageAtReceipt: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "message_age_at_receipt_seconds",
			Help:    "Time messages waited in the queue (since SQS accepted them) before this service received them.",
			Buckets: []float64{0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600},
		}, []string{"queue"}),
		configReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "config_reloads_total",
			Help: "Reloads of the ops config, by result: applied, unchanged or rejected (invalid or unreadable; the running config was kept).",
		}, []string{"result"}),
		configLoaded: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "config_last_applied_timestamp_seconds",
			Help: "When the ops config in force was applied (Unix time).",
		}),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "ready",
			Help: "1 when /readyz answers 200.",
		}),
		launched: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "instances_launched_total",
			Help: "Instances the provisioner launched, by instance type.",
		}, []string{"instance_type"}),
		bootstrapStep: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "bootstrap_step_duration_seconds",
			Help:    "Time one bootstrap step took on one instance, by step kind (fetch, upload, run, start) and result (ok, failed).",
			Buckets: []float64{0.05, 0.25, 1, 5, 15, 60, 300, 900},
		}, []string{"kind", "result"}),
		archiveBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "archive_bytes_total",
			Help: "Bytes of log archives the reaper stored in S3.",
		}),
		terminated: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "instances_terminated_total",
			Help: "Instances the reaper terminated (fleets reaped and orphans swept).",
		}),
		planned: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "fleets_planned_total",
			Help: "Fleets the planner planned.",
		}),
	}
	r := prometheus.WrapRegistererWith(prometheus.Labels{"service": service}, reg)
	r.MustRegister(t.messages, t.handleSeconds, t.inFlight, t.oldestAge, t.ageAtReceipt,
		t.configReloads, t.configLoaded, t.ready,
		t.launched, t.bootstrapStep, t.archiveBytes, t.terminated, t.planned)
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return t
}

// Service returns the name the telemetry was made for.
func (t *Telemetry) Service() string { return t.service }

// --- readiness

// ConfigLoaded records that the ops config is loaded (err nil) or why it is not.
func (t *Telemetry) ConfigLoaded(err error) {
	if t == nil {
		return
	}
	t.mu.Lock()
	t.config = err
	t.mu.Unlock()
	t.updateReady()
}

// Drain marks the service as shutting down: from now on it is not ready.
func (t *Telemetry) Drain() {
	if t == nil {
		return
	}
	t.mu.Lock()
	t.draining = true
	t.mu.Unlock()
	t.updateReady()
}

// Ready returns nil when the service is ready to work, or every reason it is not.
func (t *Telemetry) Ready() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var errs []error
	if t.draining {
		errs = append(errs, errors.New("draining: shutting down after SIGTERM"))
	}
	if t.config != nil {
		errs = append(errs, t.config)
	}
	if len(t.queues) == 0 {
		errs = append(errs, errors.New("queues not checked yet"))
	}
	for _, q := range slices.Sorted(maps.Keys(t.queues)) {
		if err := t.queues[q]; err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (t *Telemetry) updateReady() {
	if t.Ready() == nil {
		t.ready.Set(1)
	} else {
		t.ready.Set(0)
	}
}

// QueuesChecked implements bus.Observer: the router's check of every queue it uses.
func (t *Telemetry) QueuesChecked(status map[string]error) {
	if t == nil {
		return
	}
	t.mu.Lock()
	t.queues = maps.Clone(status)
	t.mu.Unlock()
	t.updateReady()
}

// QueueStatus implements bus.Observer: a queue became unreachable (err) or reachable again.
func (t *Telemetry) QueueStatus(queue string, err error) {
	if t == nil {
		return
	}
	t.mu.Lock()
	if t.queues == nil {
		t.queues = map[string]error{}
	}
	t.queues[queue] = err
	t.mu.Unlock()
	t.updateReady()
}

// --- the bus's figures

// oldestWindow is how long a received message's age counts towards oldest_message_age_seconds.
const oldestWindow = time.Minute

// MessageReceived implements bus.Observer.
func (t *Telemetry) MessageReceived(queue string, age time.Duration) {
	if t == nil {
		return
	}
	t.ageAtReceipt.WithLabelValues(queue).Observe(age.Seconds())
	t.oldestAge.add(queue, age)
}

// HandlerStarted implements bus.Observer.
func (t *Telemetry) HandlerStarted(string) {
	if t == nil {
		return
	}
	t.inFlight.Inc()
}

// HandlerDone implements bus.Observer.
func (t *Telemetry) HandlerDone(eventType string, took time.Duration, outcome bus.Outcome) {
	if t == nil {
		return
	}
	t.inFlight.Dec()
	t.handleSeconds.WithLabelValues(eventType).Observe(took.Seconds())
	t.messages.WithLabelValues(eventType, string(outcome)).Inc()
}

// --- the ops config's figures

// ConfigReloaded counts one load of the ops config by its result (applied, unchanged,
// rejected: see opsload.Result).
func (t *Telemetry) ConfigReloaded(result string) {
	if t == nil {
		return
	}
	t.configReloads.WithLabelValues(result).Inc()
}

// ConfigApplied records when a new ops config was put in force.
func (t *Telemetry) ConfigApplied(at time.Time) {
	if t == nil {
		return
	}
	t.configLoaded.Set(float64(at.UnixNano()) / 1e9)
}

// --- each stage's figures

// FleetPlanned counts a fleet the planner planned.
func (t *Telemetry) FleetPlanned() {
	if t == nil {
		return
	}
	t.planned.Inc()
}

// InstancesLaunched counts n instances of instanceType the provisioner launched.
func (t *Telemetry) InstancesLaunched(instanceType string, n int) {
	if t == nil || n <= 0 {
		return
	}
	t.launched.WithLabelValues(instanceType).Add(float64(n))
}

// BootstrapStep records how long one bootstrap step of the given kind took on one
// instance, and whether it succeeded.
func (t *Telemetry) BootstrapStep(kind string, took time.Duration, err error) {
	if t == nil {
		return
	}
	result := "ok"
	if err != nil {
		result = "failed"
	}
	t.bootstrapStep.WithLabelValues(kind, result).Observe(took.Seconds())
}

// ArchiveStored counts the bytes of a log archive the reaper stored.
func (t *Telemetry) ArchiveStored(bytes int64) {
	if t == nil || bytes <= 0 {
		return
	}
	t.archiveBytes.Add(float64(bytes))
}

// InstancesTerminated counts n instances the reaper terminated.
func (t *Telemetry) InstancesTerminated(n int) {
	if t == nil || n <= 0 {
		return
	}
	t.terminated.Add(float64(n))
}

// String names the telemetry in logs.
func (t *Telemetry) String() string { return fmt.Sprintf("telemetry(%s)", t.service) }
