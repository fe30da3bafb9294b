// Package metrics batches Sortie's CloudWatch metrics (PutMetricData) and reads a job's task totals back.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"

	"github.com/sortie-fleet/sortie/pkg/awsx"
)

// CloudWatch's limits on one PutMetricData call.
const (
	// MaxDatumsPerCall is how many MetricDatum one call may carry ("no more than 1000
	// different metrics" per request).
	MaxDatumsPerCall = 1000
	// MaxValuesPerDatum is how many distinct values one datum's Values array may hold.
	MaxValuesPerDatum = 150
	// MaxDimensions is how many dimensions one metric may have.
	MaxDimensions = 30
	// maxRequestBytes keeps a call's estimated body well under the 1 MB request limit.
	maxRequestBytes = 512 << 10
)

// Defaults of Config's zero fields.
const (
	DefaultFlushInterval = time.Second
	// DefaultMaxPending bounds what waits for a flush: distinct (metric, dimensions, value)
	// entries. Counters take one entry per metric and dimensions however often they are
	// added; a sample takes one per distinct value.
	DefaultMaxPending = 100_000
	// defaultFlushTimeout bounds a background flush.
	defaultFlushTimeout = 30 * time.Second
)

// PutAPI is the CloudWatch call the Batcher makes.
type PutAPI interface {
	PutMetricData(ctx context.Context, params *cloudwatch.PutMetricDataInput, optFns ...func(*cloudwatch.Options)) (*cloudwatch.PutMetricDataOutput, error)
}

var _ PutAPI = (*cloudwatch.Client)(nil)

// NewClient returns a CloudWatch client for cfg with request compression switched off:
// kumo cannot read gzip request bodies (it answers "Failed to parse request body"), and
// the Batcher's requests are small enough that compression buys little on AWS.
func NewClient(cfg aws.Config) *cloudwatch.Client {
	return cloudwatch.NewFromConfig(cfg, func(o *cloudwatch.Options) { o.DisableRequestCompression = true })
}

// Datum is one observation of a metric.
type Datum struct {
	Name       string
	Unit       types.StandardUnit // empty: types.StandardUnitNone
	Dimensions map[string]string
	Value      float64
	// Counter says the values are increments to be summed: the Batcher sends one data
	// point per flush whose value is their total, so a Sum statistic is exact on AWS and on
	// emulators alike (SampleCount then counts flushes, not increments). Otherwise the
	// values are samples, sent as a Values/Counts distribution (up to MaxValuesPerDatum
	// distinct values per datum) that keeps Average, Minimum, Maximum and percentiles.
	Counter bool
}

// Config configures a Batcher.
type Config struct {
	API       PutAPI
	Namespace string // default Namespace
	// FlushInterval is how often pending data is sent (default DefaultFlushInterval).
	// Data is also sent as soon as a full call's worth (MaxDatumsPerCall) is pending.
	FlushInterval time.Duration
	MaxPending    int          // default DefaultMaxPending
	Logger        *slog.Logger // nil: slog.Default()
}

// Batcher collects metric data and sends it with as few PutMetricData calls as
// possible. Data that fails to send is kept (up to MaxPending entries) and sent again
// with the next flush. It is safe for concurrent use.
//
// Data points carry no Timestamp: CloudWatch stamps them on arrival (and kumo rejects
// PutMetricData with one), so a flush interval is also the metrics' time resolution.
type Batcher struct {
	cfg Config

	mu      sync.Mutex
	pending map[seriesKey]*series
	entries int // distinct pending entries, bounded by MaxPending
	datums  int // datums the pending data makes
	dropped int // data dropped since the last flush: invalid, or over the bound

	flushMu sync.Mutex // one flush at a time
	full    chan struct{}
	done    chan struct{}
	stopped chan struct{}
	close   sync.Once
}

// NewBatcher starts a Batcher; Close stops it after a last flush.
func NewBatcher(cfg Config) (*Batcher, error) {
	if cfg.API == nil {
		return nil, errors.New("metrics batcher: no CloudWatch client")
	}
	if cfg.Namespace == "" {
		cfg.Namespace = Namespace
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = DefaultFlushInterval
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = DefaultMaxPending
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	b := &Batcher{
		cfg:     cfg,
		pending: map[seriesKey]*series{},
		full:    make(chan struct{}, 1),
		done:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	go b.loop()
	return b, nil
}

// seriesKey identifies one metric stream: name, unit, dimensions, counter or samples.
type seriesKey struct {
	name    string
	unit    types.StandardUnit
	dims    string // canonical: sorted name=value pairs joined by NUL
	counter bool
}

type series struct {
	key    seriesKey
	dims   []types.Dimension
	sum    float64             // counter
	values map[float64]float64 // samples: value → count
}

// datums is how many MetricDatum the series makes.
func (s *series) datums() int {
	if s.key.counter {
		return 1
	}
	return (len(s.values) + MaxValuesPerDatum - 1) / MaxValuesPerDatum
}

func (s *series) entries() int {
	if s.key.counter {
		return 1
	}
	return len(s.values)
}

// Add queues d for the next flush. Invalid data (no name, a value CloudWatch rejects,
// too many dimensions, an empty dimension) is dropped and counted in the next flush's log.
func (b *Batcher) Add(d Datum) {
	if err := d.validate(); err != nil {
		b.mu.Lock()
		b.dropped++
		b.mu.Unlock()
		b.cfg.Logger.Warn("dropping invalid metric datum", "metric", d.Name, "error", err.Error())
		return
	}
	key, dims := d.key()
	b.mu.Lock()
	b.addLocked(key, dims, d.Value, 1)
	isFull := b.datums >= MaxDatumsPerCall
	b.mu.Unlock()
	if isFull {
		select {
		case b.full <- struct{}{}:
		default:
		}
	}
}

// addLocked adds count observations of v to the series key (for a counter, v*count to its sum).
func (b *Batcher) addLocked(key seriesKey, dims []types.Dimension, v, count float64) bool {
	s := b.pending[key]
	if s == nil {
		if b.entries >= b.cfg.MaxPending {
			b.dropped++
			return false
		}
		s = &series{key: key, dims: dims}
		if !key.counter {
			s.values = map[float64]float64{}
		}
		b.pending[key] = s
		b.entries++
		b.datums++
		if key.counter {
			s.sum = v * count
			return true
		}
		s.values[v] = count
		return true
	}
	if key.counter {
		s.sum += v * count
		return true
	}
	if _, ok := s.values[v]; !ok {
		if b.entries >= b.cfg.MaxPending {
			b.dropped++
			return false
		}
		before := s.datums()
		s.values[v] = 0
		b.entries++
		b.datums += s.datums() - before
	}
	s.values[v] += count
	return true
}

func (d Datum) validate() error {
	var errs []error
	if d.Name == "" || len(d.Name) > 255 {
		errs = append(errs, fmt.Errorf("metric name %q: want 1-255 characters", d.Name))
	}
	if math.IsNaN(d.Value) || math.IsInf(d.Value, 0) || math.Abs(d.Value) > 1e100 {
		errs = append(errs, fmt.Errorf("value %g: CloudWatch rejects it", d.Value))
	}
	if len(d.Dimensions) > MaxDimensions {
		errs = append(errs, fmt.Errorf("%d dimensions: want at most %d", len(d.Dimensions), MaxDimensions))
	}
	for k, v := range d.Dimensions {
		if k == "" || len(k) > 255 || v == "" || len(v) > 1024 {
			errs = append(errs, fmt.Errorf("dimension %q=%q: want a 1-255 character name and a 1-1024 character value", k, v))
		}
	}
	return errors.Join(errs...)
}

func (d Datum) key() (seriesKey, []types.Dimension) {
	names := slices.Sorted(maps.Keys(d.Dimensions))
	dims := make([]types.Dimension, len(names))
	parts := make([]string, len(names))
	for i, n := range names {
		dims[i] = types.Dimension{Name: aws.String(n), Value: aws.String(d.Dimensions[n])}
		parts[i] = n + "=" + d.Dimensions[n]
	}
	unit := d.Unit
	if unit == "" {
		unit = types.StandardUnitNone
	}
	return seriesKey{name: d.Name, unit: unit, dims: strings.Join(parts, "\x00"), counter: d.Counter}, dims
}

// Pending returns how many datums the data waiting for a flush makes.
func (b *Batcher) Pending() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.datums
}

// Flush sends everything pending now, in calls of at most MaxDatumsPerCall datums. On
// an error the data not sent stays pending for the next flush (data CloudWatch rejects
// as invalid is dropped instead, so that it cannot block the rest forever).
func (b *Batcher) Flush(ctx context.Context) error {
	b.flushMu.Lock()
	defer b.flushMu.Unlock()

	b.mu.Lock()
	batch := b.pending
	dropped := b.dropped
	b.pending, b.entries, b.datums, b.dropped = map[seriesKey]*series{}, 0, 0, 0
	b.mu.Unlock()
	if dropped > 0 {
		b.cfg.Logger.Warn("metric data dropped since the last flush", "dropped", dropped)
	}
	if len(batch) == 0 {
		return nil
	}
	calls := split(batch)
	for i, c := range calls {
		_, err := b.cfg.API.PutMetricData(ctx, &cloudwatch.PutMetricDataInput{
			Namespace:  aws.String(b.cfg.Namespace),
			MetricData: c.data,
		})
		if err == nil {
			continue
		}
		if awsx.IsPermanent(err) {
			b.cfg.Logger.Error("CloudWatch rejected metric data; dropping it", "datums", len(c.data), "error", err.Error())
			continue
		}
		b.requeue(calls[i:])
		return fmt.Errorf("putting %d metric datums to CloudWatch: %w", len(c.data), err)
	}
	return nil
}

// requeue puts unsent calls back in front of what was added since the flush started.
func (b *Batcher) requeue(calls []call) {
	b.mu.Lock()
	defer b.mu.Unlock()
	lost := 0
	for _, c := range calls {
		for _, p := range c.parts {
			if p.key.counter {
				if !b.addLocked(p.key, p.dims, p.sum, 1) {
					lost++
				}
				continue
			}
			for v, n := range p.values {
				if !b.addLocked(p.key, p.dims, v, n) {
					lost++
				}
			}
		}
	}
	if lost > 0 {
		b.cfg.Logger.Warn("metric buffer full: dropping unsent data", "entries", lost)
	}
}

// call is one PutMetricData call's data, and the series parts it carries (to requeue).
type call struct {
	data  []types.MetricDatum
	parts []*series
	bytes int
}

// split turns the pending series into calls within CloudWatch's limits, in a stable order.
func split(batch map[seriesKey]*series) []call {
	keys := slices.SortedFunc(maps.Keys(batch), func(a, b seriesKey) int {
		return strings.Compare(a.name+"\x01"+a.dims+"\x01"+string(a.unit), b.name+"\x01"+b.dims+"\x01"+string(b.unit))
	})
	var calls []call
	cur := call{}
	add := func(d types.MetricDatum, part *series) {
		size := estimateBytes(d)
		if len(cur.data) > 0 && (len(cur.data) >= MaxDatumsPerCall || cur.bytes+size > maxRequestBytes) {
			calls = append(calls, cur)
			cur = call{}
		}
		cur.data = append(cur.data, d)
		cur.parts = append(cur.parts, part)
		cur.bytes += size
	}
	for _, k := range keys {
		s := batch[k]
		if k.counter {
			add(types.MetricDatum{
				MetricName: aws.String(k.name),
				Unit:       k.unit,
				Dimensions: s.dims,
				Value:      aws.Float64(s.sum),
			}, s)
			continue
		}
		values := slices.Sorted(maps.Keys(s.values))
		for chunk := range slices.Chunk(values, MaxValuesPerDatum) {
			part := &series{key: k, dims: s.dims, values: make(map[float64]float64, len(chunk))}
			counts := make([]float64, len(chunk))
			for i, v := range chunk {
				counts[i] = s.values[v]
				part.values[v] = s.values[v]
			}
			add(types.MetricDatum{
				MetricName: aws.String(k.name),
				Unit:       k.unit,
				Dimensions: s.dims,
				Values:     chunk,
				Counts:     counts,
			}, part)
		}
	}
	if len(cur.data) > 0 {
		calls = append(calls, cur)
	}
	return calls
}

// estimateBytes over-estimates a datum's share of a request body in any of CloudWatch's
// wire protocols (query string, JSON, CBOR).
func estimateBytes(d types.MetricDatum) int {
	n := 120 + len(aws.ToString(d.MetricName)) + len(d.Unit)
	for _, dim := range d.Dimensions {
		n += 100 + len(aws.ToString(dim.Name)) + len(aws.ToString(dim.Value))
	}
	return n + 80*(len(d.Values)+len(d.Counts))
}

// loop flushes every FlushInterval and whenever a full call is pending.
func (b *Batcher) loop() {
	defer close(b.stopped)
	t := time.NewTicker(b.cfg.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-b.done:
			return
		case <-t.C:
		case <-b.full:
		}
		for {
			ctx, cancel := context.WithTimeout(context.Background(), defaultFlushTimeout)
			err := b.Flush(ctx)
			cancel()
			if err != nil {
				b.cfg.Logger.Warn("flushing metrics; retrying at the next flush", "error", err.Error())
				break
			}
			if b.Pending() < MaxDatumsPerCall {
				break
			}
		}
	}
}

// Close stops the background flushes and sends what is pending, within ctx.
func (b *Batcher) Close(ctx context.Context) error {
	b.close.Do(func() { close(b.done) })
	<-b.stopped
	return b.Flush(ctx)
}
