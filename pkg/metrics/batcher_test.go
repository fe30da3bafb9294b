package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"
	"github.com/aws/smithy-go"

	"github.com/sortie-fleet/sortie/pkg/cloudtest"
)

// fakeCW records PutMetricData calls; fail, when set, decides each call's error.
type fakeCW struct {
	mu    sync.Mutex
	calls []*cloudwatch.PutMetricDataInput
	fail  func(n int) error // n counts calls from 0, failed ones included
	n     int
}

func (f *fakeCW) PutMetricData(_ context.Context, in *cloudwatch.PutMetricDataInput, _ ...func(*cloudwatch.Options)) (*cloudwatch.PutMetricDataOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.n
	f.n++
	if f.fail != nil {
		if err := f.fail(n); err != nil {
			return nil, err
		}
	}
	f.calls = append(f.calls, in)
	return &cloudwatch.PutMetricDataOutput{}, nil
}

func (f *fakeCW) sent() []*cloudwatch.PutMetricDataInput {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// totals sums, per metric name, what the successful calls carried: counters' values and
// samples' counts (as CloudWatch's Sum and SampleCount would).
func (f *fakeCW) totals() (sum, samples map[string]float64) {
	sum, samples = map[string]float64{}, map[string]float64{}
	for _, c := range f.sent() {
		for _, d := range c.MetricData {
			name := aws.ToString(d.MetricName)
			if d.Value != nil {
				sum[name] += *d.Value
				samples[name]++
				continue
			}
			for i, v := range d.Values {
				sum[name] += v * d.Counts[i]
				samples[name] += d.Counts[i]
			}
		}
	}
	return sum, samples
}

// hasCalls returns an Eventually check satisfied once the API received n calls.
func (f *fakeCW) hasCalls(n int) func() error {
	return func() error {
		if got := len(f.sent()); got != n {
			return fmt.Errorf("%d PutMetricData calls, want %d", got, n)
		}
		return nil
	}
}

var _ PutAPI = (*fakeCW)(nil)

func newBatcher(t *testing.T, api PutAPI, cfg Config) (*Batcher, *cloudtest.Buffer) {
	t.Helper()
	logs := &cloudtest.Buffer{}
	cfg.API = api
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = time.Hour // tests flush explicitly unless they test the timer
	}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	b, err := NewBatcher(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	return b, logs
}

func counter(job string) Datum {
	return Datum{Name: TasksSucceeded, Unit: types.StandardUnitCount, Dimensions: TaskDimensions(job), Value: 1, Counter: true}
}

func sample(name string, v float64) Datum {
	return Datum{Name: name, Unit: types.StandardUnitMilliseconds, Dimensions: TaskDimensions("job-1"), Value: v}
}

func TestCountersAggregate(t *testing.T) {
	t.Parallel()
	api := &fakeCW{}
	b, _ := newBatcher(t, api, Config{})
	for range 2500 {
		b.Add(counter("job-1"))
	}
	b.Add(counter("job-2"))
	if got := b.Pending(); got != 2 {
		t.Fatalf("Pending = %d, want 2 (one datum per counter series)", got)
	}
	if err := b.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	calls := api.sent()
	if len(calls) != 1 || len(calls[0].MetricData) != 2 {
		t.Fatalf("sent %d calls, want 1 with 2 datums: %+v", len(calls), calls)
	}
	if ns := aws.ToString(calls[0].Namespace); ns != Namespace {
		t.Errorf("namespace %q, want %q", ns, Namespace)
	}
	byJob := map[string]float64{}
	for _, d := range calls[0].MetricData {
		if d.Timestamp != nil {
			t.Errorf("datum carries a Timestamp %v; kumo rejects it", d.Timestamp)
		}
		if d.Unit != types.StandardUnitCount {
			t.Errorf("unit %q, want Count", d.Unit)
		}
		var job, task string
		for _, dim := range d.Dimensions {
			switch aws.ToString(dim.Name) {
			case DimJobID:
				job = aws.ToString(dim.Value)
			case DimTask:
				task = aws.ToString(dim.Value)
			}
		}
		if task != DefaultTask {
			t.Errorf("Task dimension %q, want %q", task, DefaultTask)
		}
		byJob[job] = aws.ToFloat64(d.Value)
	}
	if byJob["job-1"] != 2500 || byJob["job-2"] != 1 {
		t.Errorf("counter values %v, want job-1: 2500, job-2: 1", byJob)
	}
	if b.Pending() != 0 {
		t.Errorf("Pending = %d after a flush", b.Pending())
	}
}

func TestSamplesBecomeDistributions(t *testing.T) {
	t.Parallel()
	api := &fakeCW{}
	b, _ := newBatcher(t, api, Config{})
	// 200 distinct values, each twice, and one value 10 times more.
	for i := range 200 {
		b.Add(sample(TaskDuration, float64(i)))
		b.Add(sample(TaskDuration, float64(i)))
	}
	for range 10 {
		b.Add(sample(TaskDuration, 7))
	}
	if got := b.Pending(); got != 2 {
		t.Fatalf("Pending = %d, want 2 (200 distinct values, %d per datum)", got, MaxValuesPerDatum)
	}
	if err := b.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	calls := api.sent()
	if len(calls) != 1 {
		t.Fatalf("%d calls, want 1", len(calls))
	}
	var sizes []int
	for _, d := range calls[0].MetricData {
		sizes = append(sizes, len(d.Values))
		if len(d.Counts) != len(d.Values) || d.Value != nil {
			t.Errorf("datum has %d values, %d counts, value %v: want Values with matching Counts", len(d.Values), len(d.Counts), d.Value)
		}
		if !slices.IsSorted(d.Values) || len(slices.Compact(slices.Clone(d.Values))) != len(d.Values) {
			t.Errorf("values not distinct and sorted: %v", d.Values)
		}
	}
	if !slices.Equal(sizes, []int{150, 50}) {
		t.Errorf("values per datum %v, want [150 50]", sizes)
	}
	sum, n := api.totals()
	wantSum := 2*float64(199*200/2) + 10*7
	if sum[TaskDuration] != wantSum || n[TaskDuration] != 410 {
		t.Errorf("sum %v count %v, want %v and 410", sum[TaskDuration], n[TaskDuration], wantSum)
	}
}

func TestCallsSplitAtTheLimit(t *testing.T) {
	t.Parallel()
	batch := map[seriesKey]*series{}
	b := &Batcher{pending: batch, cfg: Config{MaxPending: math.MaxInt}}
	for i := range 2500 {
		key, dims := counter(fmt.Sprintf("job-%d", i)).key() // 2500 series
		b.addLocked(key, dims, 1, 1)
	}
	if b.datums != 2500 {
		t.Fatalf("datums = %d, want 2500", b.datums)
	}
	var sizes []int
	for _, c := range split(batch) {
		sizes = append(sizes, len(c.data))
	}
	if !slices.Equal(sizes, []int{1000, 1000, 500}) {
		t.Errorf("datums per call %v, want [1000 1000 500]", sizes)
	}
}

func TestCallsSplitBySize(t *testing.T) {
	t.Parallel()
	// 40 series of 150 distinct values: ~12 KB each by the estimate, ~480 KB in all.
	batch := map[seriesKey]*series{}
	b := &Batcher{pending: batch, cfg: Config{MaxPending: math.MaxInt}}
	for s := range 80 {
		d := sample(fmt.Sprintf("M%d", s), 0)
		key, dims := d.key()
		for v := range MaxValuesPerDatum {
			b.addLocked(key, dims, float64(v), 1)
		}
	}
	calls := split(batch)
	if len(calls) < 2 {
		t.Fatalf("%d calls for ~1 MB of values, want at least 2", len(calls))
	}
	datums := 0
	for _, c := range calls {
		if c.bytes > maxRequestBytes {
			t.Errorf("a call's estimate is %d bytes, limit %d", c.bytes, maxRequestBytes)
		}
		datums += len(c.data)
	}
	if datums != 80 {
		t.Errorf("%d datums, want 80", datums)
	}
}

func TestFlushesWhenFull(t *testing.T) {
	t.Parallel()
	api := &fakeCW{}
	b, _ := newBatcher(t, api, Config{FlushInterval: time.Hour})
	for i := range MaxDatumsPerCall {
		b.Add(counter(fmt.Sprintf("job-%d", i)))
	}
	cloudtest.Eventually(t, 5*time.Second, api.hasCalls(1)) // a full call flushes without waiting for the interval
	if n := len(api.sent()[0].MetricData); n != MaxDatumsPerCall {
		t.Errorf("flushed %d datums, want %d", n, MaxDatumsPerCall)
	}
}

func TestFlushesOnInterval(t *testing.T) {
	t.Parallel()
	api := &fakeCW{}
	b, _ := newBatcher(t, api, Config{FlushInterval: 20 * time.Millisecond})
	b.Add(counter("job-1"))
	cloudtest.Eventually(t, 5*time.Second, api.hasCalls(1)) // a flush after the interval
	b.Add(counter("job-1"))
	b.Add(counter("job-1"))
	cloudtest.Eventually(t, 5*time.Second, api.hasCalls(2)) // a second flush
	if sum, _ := api.totals(); sum[TasksSucceeded] != 3 {
		t.Errorf("sum %v, want 3", sum[TasksSucceeded])
	}
}

func TestFailedFlushIsRetried(t *testing.T) {
	t.Parallel()
	throttled := &smithy.GenericAPIError{Code: "Throttling", Message: "Rate exceeded"}
	api := &fakeCW{fail: func(n int) error {
		if n == 0 {
			return throttled
		}
		return nil
	}}
	b, _ := newBatcher(t, api, Config{})
	for range 5 {
		b.Add(counter("job-1"))
	}
	b.Add(sample(TaskDuration, 12))
	err := b.Flush(context.Background())
	if !errors.Is(err, throttled) {
		t.Fatalf("Flush = %v, want the throttling error", err)
	}
	if b.Pending() != 2 {
		t.Fatalf("Pending = %d after a failed flush, want the 2 datums kept", b.Pending())
	}
	for range 2 {
		b.Add(counter("job-1"))
	}
	b.Add(sample(TaskDuration, 12))
	if err := b.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	sum, n := api.totals()
	if sum[TasksSucceeded] != 7 || sum[TaskDuration] != 24 || n[TaskDuration] != 2 {
		t.Errorf("after the retry: succeeded %v, duration sum %v count %v; want 7, 24, 2", sum[TasksSucceeded], sum[TaskDuration], n[TaskDuration])
	}
}

func TestBufferIsBounded(t *testing.T) {
	t.Parallel()
	api := &fakeCW{fail: func(int) error { return errors.New("connection refused") }}
	b, logs := newBatcher(t, api, Config{MaxPending: 10})
	for i := range 25 {
		b.Add(sample(TaskDuration, float64(i)))
	}
	if b.Pending() != 1 {
		t.Fatalf("Pending = %d, want 1 datum of 10 values", b.Pending())
	}
	if err := b.Flush(context.Background()); err == nil {
		t.Fatal("Flush succeeded against a failing API")
	}
	b.Add(counter("job-1")) // over the bound: dropped
	api.mu.Lock()
	api.fail = nil
	api.mu.Unlock()
	if err := b.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, n := api.totals()
	if n[TaskDuration] != 10 || n[TasksSucceeded] != 0 {
		t.Errorf("sent %v duration samples and %v counters, want the 10 kept samples only", n[TaskDuration], n[TasksSucceeded])
	}
	for _, want := range []string{"dropped=15", "dropped=1\n"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
}

func TestRejectedDataIsDropped(t *testing.T) {
	t.Parallel()
	api := &fakeCW{fail: func(n int) error {
		if n == 0 {
			return &smithy.GenericAPIError{Code: "InvalidParameterValue", Message: "bad"}
		}
		return nil
	}}
	b, _ := newBatcher(t, api, Config{})
	b.Add(counter("job-1"))
	if err := b.Flush(context.Background()); err != nil {
		t.Fatalf("Flush = %v: data CloudWatch rejects must be dropped, not retried forever", err)
	}
	if b.Pending() != 0 {
		t.Errorf("Pending = %d", b.Pending())
	}
}

func TestInvalidDataIsDropped(t *testing.T) {
	t.Parallel()
	for name, d := range map[string]Datum{
		"no name":         {Value: 1},
		"NaN":             {Name: "M", Value: math.NaN()},
		"infinite":        {Name: "M", Value: math.Inf(1)},
		"empty dimension": {Name: "M", Value: 1, Dimensions: map[string]string{"JobId": ""}},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b, logs := newBatcher(t, &fakeCW{}, Config{})
			b.Add(d)
			if b.Pending() != 0 {
				t.Errorf("Pending = %d, want the datum dropped", b.Pending())
			}
			if !strings.Contains(logs.String(), "dropping invalid metric datum") {
				t.Errorf("not logged: %s", logs)
			}
		})
	}
}

func TestCloseFlushes(t *testing.T) {
	t.Parallel()
	api := &fakeCW{}
	b, err := NewBatcher(Config{API: api, FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	b.Add(counter("job-1"))
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(api.sent()) != 1 {
		t.Errorf("Close sent %d calls, want 1", len(api.sent()))
	}
}

func TestPeriod(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		window, want time.Duration
	}{
		{time.Minute, time.Minute},
		{time.Hour, time.Minute},
		{24 * time.Hour, time.Minute},
		{25 * time.Hour, 2 * time.Minute},
		{8 * 24 * time.Hour, 8 * time.Minute},
		{20 * 24 * time.Hour, 20 * time.Minute},
		{21 * 24 * time.Hour, 25 * time.Minute},
		{90 * 24 * time.Hour, 2 * time.Hour},
	} {
		t.Run(tc.window.String(), func(t *testing.T) {
			got := Period(tc.window)
			if got != tc.want {
				t.Errorf("Period(%s) = %s, want %s", tc.window, got, tc.want)
			}
			if n := tc.window / got; n > maxDatapoints {
				t.Errorf("%d data points, limit %d", n, maxDatapoints)
			}
		})
	}
}
