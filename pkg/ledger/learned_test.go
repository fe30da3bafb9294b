package ledger_test

import (
	"context"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/sortie-fleet/sortie/pkg/learn"
	"github.com/sortie-fleet/sortie/pkg/ledger"
)

// TestLearnCountsAJobOnce: recording a job's sample twice (a FleetTerminated delivered
// again, a reaper that retried) counts it once; another job's sample counts.
func TestLearnCountsAJobOnce(t *testing.T) {
	l, api, table := newLedger(t, ledger.Config{})
	ctx := t.Context()
	s := learn.Sample{Profile: "batch", InstanceType: "m3.medium", Rate: 8}
	first, err := l.Learn(ctx, "job-1", s, 0.3)
	if err != nil || !first.Counted || first.Estimate.Samples != 1 || first.Estimate.Mean != 8 {
		t.Fatalf("first Learn = %+v, %v; want counted, 1 sample of mean 8", first, err)
	}
	again, err := l.Learn(ctx, "job-1", learn.Sample{Profile: "batch", InstanceType: "m3.medium", Rate: 100}, 0.3)
	if err != nil || again.Counted || again.Estimate.Samples != 1 || again.Estimate.Mean != 8 {
		t.Fatalf("second Learn of job-1 = %+v, %v; want not counted, still 1 sample of mean 8", again, err)
	}
	next, err := l.Learn(ctx, "job-2", learn.Sample{Profile: "batch", InstanceType: "m3.medium", Rate: 10}, 0.5)
	if err != nil || !next.Counted || next.Estimate.Samples != 2 || next.Estimate.Mean != 9 || next.Estimate.Variance != 1 {
		t.Fatalf("Learn of job-2 = %+v, %v; want 2 samples, mean 9, variance 1", next, err)
	}
	got, err := l.LearnedRate(ctx, "batch", "m3.medium")
	if err != nil || got.Samples != 2 || got.Mean != 9 || got.Variance != 1 || got.Updated.IsZero() {
		t.Fatalf("LearnedRate = %+v, %v; want what was recorded", got, err)
	}
	if none, err := l.LearnedRate(ctx, "batch", "c5.large"); err != nil || none.Samples != 0 {
		t.Fatalf("LearnedRate of a type never recorded = %+v, %v; want no samples", none, err)
	}
	// The job items are untouched: listing jobs finds none, listing rates finds one.
	if jobs, err := ledger.List(ctx, api, table); err != nil || len(jobs) != 0 {
		t.Fatalf("List = %v, %v; want no jobs (rate and observation items are not jobs)", jobs, err)
	}
	all, err := ledger.ListLearned(ctx, api, table)
	if err != nil || len(all) != 1 || all[0].Profile != "batch" || all[0].InstanceType != "m3.medium" || all[0].Samples != 2 {
		t.Fatalf("ListLearned = %+v, %v; want batch on m3.medium with 2 samples", all, err)
	}
	// The observation keeps the job's TTL; the estimate has none (it outlives jobs).
	obs, err := api.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(table), Key: map[string]ddbtypes.AttributeValue{ledger.AttrKey: &ddbtypes.AttributeValueMemberS{Value: "obs#job-1"}}})
	if err != nil || obs.Item[ledger.AttrExpires] == nil {
		t.Fatalf("observation item %v, %v; want one with %s", obs.Item, err, ledger.AttrExpires)
	}
	est, err := api.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(table), Key: map[string]ddbtypes.AttributeValue{ledger.AttrKey: &ddbtypes.AttributeValueMemberS{Value: "learn#batch#m3.medium"}}})
	if err != nil || est.Item == nil || est.Item[ledger.AttrExpires] != nil {
		t.Fatalf("estimate item %v, %v; want one without %s", est.Item, err, ledger.AttrExpires)
	}
}

// TestLearnConcurrentLosesNothing: recorders racing on one estimate (two reapers ending
// jobs of one profile at once) lose no sample, and the mean is the one sequential updates
// give whatever the order (all samples equal), while the job items stay separate.
func TestLearnConcurrentLosesNothing(t *testing.T) {
	l, api, table := newLedger(t, ledger.Config{})
	ctx := t.Context()
	const recorders, each = 4, 5
	var wg sync.WaitGroup
	for r := range recorders {
		wg.Go(func() {
			for i := range each {
				job := fmt.Sprintf("job-%d-%d", r, i)
				rec, err := l.Learn(ctx, job, learn.Sample{Profile: "batch", InstanceType: "c5.large", Rate: 20}, 0.3)
				if err != nil || !rec.Counted {
					t.Errorf("Learn %s = %+v, %v", job, rec, err)
				}
				// Each job's end delivered twice, concurrently with the others.
				if rec, err := l.Learn(ctx, job, learn.Sample{Profile: "batch", InstanceType: "c5.large", Rate: 1}, 0.3); err != nil || rec.Counted {
					t.Errorf("Learn %s again = %+v, %v; want not counted", job, rec, err)
				}
			}
		})
	}
	wg.Wait()
	got, err := l.LearnedRate(ctx, "batch", "c5.large")
	if err != nil || got.Samples != recorders*each || math.Abs(got.Mean-20) > 1e-9 || got.Variance > 1e-9 {
		t.Fatalf("LearnedRate = %+v, %v; want %d samples of mean 20 and no spread", got, err, recorders*each)
	}
	all, err := ledger.ListLearned(ctx, api, table)
	if err != nil || len(all) != 1 || all[0].Samples != recorders*each {
		t.Fatalf("ListLearned = %+v, %v", all, err)
	}
}

// TestLearnRefusesBadSamples: a rate that is not a positive number, an alpha outside
// (0, 1] or names that could forge another key are refused, and nothing is written.
func TestLearnRefusesBadSamples(t *testing.T) {
	l, api, table := newLedger(t, ledger.Config{})
	ctx := t.Context()
	for _, tt := range []struct {
		s     learn.Sample
		alpha float64
		want  string
	}{
		{learn.Sample{Profile: "p", InstanceType: "t.x", Rate: 0}, 0.3, "want a finite number > 0"},
		{learn.Sample{Profile: "p", InstanceType: "t.x", Rate: math.Inf(1)}, 0.3, "want a finite number > 0"},
		{learn.Sample{Profile: "p", InstanceType: "t.x", Rate: 5}, 0, "want 0 < alpha"},
		{learn.Sample{Profile: "p#q", InstanceType: "t.x", Rate: 5}, 0.3, "without '#'"},
		{learn.Sample{Profile: "", InstanceType: "t.x", Rate: 5}, 0.3, "must be set"},
	} {
		if _, err := l.Learn(ctx, "job-bad", tt.s, tt.alpha); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Learn(%+v, %v) = %v; want an error saying %q", tt.s, tt.alpha, err, tt.want)
		}
	}
	if all, err := ledger.ListLearned(ctx, api, table); err != nil || len(all) != 0 {
		t.Fatalf("ListLearned after refusals = %+v, %v; want none", all, err)
	}
}

// interloper runs another recorder's Learn just before the first transaction it sees, so
// the estimate changes between this recorder's read and its write.
type interloper struct {
	ledger.API
	once  sync.Once
	other func()
}

func (i *interloper) TransactWriteItems(ctx context.Context, in *dynamodb.TransactWriteItemsInput, opts ...func(*dynamodb.Options)) (*dynamodb.TransactWriteItemsOutput, error) {
	i.once.Do(i.other)
	return i.API.TransactWriteItems(ctx, in, opts...)
}

// TestLearnRetriesOnAConflict: an estimate updated by another recorder between this one's
// read and write is read again: both samples count, in the order they were written.
func TestLearnRetriesOnAConflict(t *testing.T) {
	plain, api, table := newLedger(t, ledger.Config{})
	ctx := t.Context()
	if _, err := plain.Learn(ctx, "job-0", learn.Sample{Profile: "batch", InstanceType: "m3.medium", Rate: 10}, 0.5); err != nil {
		t.Fatal(err)
	}
	wrapped := &interloper{API: api}
	wrapped.other = func() {
		if rec, err := plain.Learn(ctx, "job-other", learn.Sample{Profile: "batch", InstanceType: "m3.medium", Rate: 14}, 0.5); err != nil || !rec.Counted {
			t.Errorf("the other recorder: %+v, %v", rec, err)
		}
	}
	l, err := ledger.New(ledger.Config{API: wrapped, Table: table})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := l.Learn(ctx, "job-1", learn.Sample{Profile: "batch", InstanceType: "m3.medium", Rate: 6}, 0.5)
	// 10 → (14) mean 12, variance 0.5·(0 + 0.5·16) = 4 → (6) d = −6: mean 9, variance 0.5·(4 + 0.5·36) = 11
	if err != nil || !rec.Counted || rec.Estimate.Samples != 3 || rec.Estimate.Mean != 9 || rec.Estimate.Variance != 11 {
		t.Fatalf("Learn after a conflict = %+v, %v; want 3 samples, mean 9, variance 11", rec, err)
	}
}
