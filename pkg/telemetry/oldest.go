package telemetry

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// oldestAges is the sortie_oldest_message_age_seconds collector: per queue, the largest
// age at receipt of the messages received within oldestWindow before a scrape.
type oldestAges struct {
	desc   *prometheus.Desc
	window time.Duration
	now    func() time.Time

	mu     sync.Mutex
	queues map[string]*windowMax
}

func newOldestAges(window time.Duration) *oldestAges {
	return &oldestAges{
		desc: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "oldest_message_age_seconds"),
			"Largest age (time since SQS accepted it) of the messages received from the queue in the last minute, at their receipt; 0 when none was received. The queue's backlog delay as this replica sees it.",
			[]string{"queue"}, nil),
		window: window,
		now:    time.Now,
		queues: map[string]*windowMax{},
	}
}

func (o *oldestAges) add(queue string, age time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	w := o.queues[queue]
	if w == nil {
		w = &windowMax{}
		o.queues[queue] = w
	}
	w.add(o.now(), age)
}

// Describe implements prometheus.Collector.
func (o *oldestAges) Describe(ch chan<- *prometheus.Desc) { ch <- o.desc }

// Collect implements prometheus.Collector.
func (o *oldestAges) Collect(ch chan<- prometheus.Metric) {
	o.mu.Lock()
	defer o.mu.Unlock()
	since := o.now().Add(-o.window)
	for q, w := range o.queues {
		ch <- prometheus.MustNewConstMetric(o.desc, prometheus.GaugeValue, w.max(since).Seconds(), q)
	}
}

// windowMax keeps the maximum of a sliding window of samples: a deque of samples with
// strictly decreasing ages (a sample older and smaller than a later one can never be the
// maximum again), so it holds few samples whatever the message rate.
type windowMax struct {
	samples []sample
}

type sample struct {
	at  time.Time
	age time.Duration
}

func (w *windowMax) add(at time.Time, age time.Duration) {
	for len(w.samples) > 0 && w.samples[len(w.samples)-1].age <= age {
		w.samples = w.samples[:len(w.samples)-1]
	}
	w.samples = append(w.samples, sample{at, age})
}

// max drops the samples taken before since and returns the largest age left, 0 if none.
func (w *windowMax) max(since time.Time) time.Duration {
	i := 0
	for i < len(w.samples) && w.samples[i].at.Before(since) {
		i++
	}
	w.samples = w.samples[i:]
	if len(w.samples) == 0 {
		return 0
	}
	return w.samples[0].age
}
