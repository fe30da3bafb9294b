package ledger

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/sortie-fleet/sortie/pkg/learn"
)

// Learned rates: one item per (profile, instance type), "learn#<profile>#<type>" (names
// never hold "#", and job items start "job#", so neither collides), holding the
// exponentially weighted estimate and a version for optimistic concurrency; it has no TTL.
// Each job whose rate was recorded leaves an item "obs#<job id>" (with the job's TTL), put
// in the same transaction as the estimate, so a job counts once however often its end is
// delivered.
const (
	learnPrefix     = "learn#"
	attrProfile     = "profile"
	attrType        = "instance_type"
	attrMean        = "mean"
	attrVariance    = "variance"
	attrSamples     = "samples"
	attrUpdated     = "updated_at"
	attrVersion     = "version"
	attrRate        = "rate"
	learnMaxRetries = 50
)

func learnKey(profile, instanceType string) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{AttrKey: str(learnPrefix + profile + "#" + instanceType)}
}

func obsKey(jobID string) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{AttrKey: str("obs#" + jobID)}
}

func float(v float64) types.AttributeValue {
	return &types.AttributeValueMemberN{Value: strconv.FormatFloat(v, 'f', -1, 64)}
}

// Learned is the learned rate of one profile on one instance type.
type Learned struct {
	Profile      string
	InstanceType string
	learn.Estimate
}

// Recorded says what Learn did with a job's sample.
type Recorded struct {
	// Counted is false when the job's sample was recorded before (a duplicate delivery).
	Counted  bool
	Estimate learn.Estimate // the estimate after the sample (as it stands, for a duplicate)
}

// Learn folds the job's observed rate into its (profile, type) estimate with weight
// alpha, once per job: the job's observation item and the estimate are written in one
// transaction, the first only if the job has none, the second only if its version is the
// one read (another recorder's update in between makes this one read again and retry).
func (l *Ledger) Learn(ctx context.Context, jobID string, s learn.Sample, alpha float64) (Recorded, error) {
	if err := errors.Join(learn.CheckSample(s.Rate), learn.CheckAlpha(alpha)); err != nil {
		return Recorded{}, fmt.Errorf("learning the rate of job %s: %w", jobID, err)
	}
	if s.Profile == "" || s.InstanceType == "" || strings.Contains(s.Profile+s.InstanceType, "#") {
		return Recorded{}, fmt.Errorf("learning the rate of job %s: profile %q and instance type %q must be set, without '#'", jobID, s.Profile, s.InstanceType)
	}
	for attempt := range learnMaxRetries {
		cur, version, err := l.learned(ctx, s.Profile, s.InstanceType)
		if err != nil {
			return Recorded{}, fmt.Errorf("learning the rate of job %s: %w", jobID, err)
		}
		now := l.cfg.Now()
		next := cur.Update(s.Rate, alpha, now)
		obs := obsKey(jobID)
		obs[AttrJobID] = str(jobID)
		obs[attrProfile], obs[attrType], obs[attrRate] = str(s.Profile), str(s.InstanceType), float(s.Rate)
		obs[AttrExpires] = num(now.Add(l.cfg.TTL).Unix())
		est := learnKey(s.Profile, s.InstanceType)
		est[attrProfile], est[attrType] = str(s.Profile), str(s.InstanceType)
		est[attrMean], est[attrVariance] = float(next.Mean), float(next.Variance)
		est[attrSamples] = num(int64(next.Samples))
		est[attrUpdated] = str(now.UTC().Format(time.RFC3339Nano))
		est[attrVersion] = num(version + 1)
		put := &types.Put{TableName: aws.String(l.cfg.Table), Item: est, ExpressionAttributeNames: map[string]string{"#k": AttrKey}}
		if version == 0 {
			put.ConditionExpression = aws.String("attribute_not_exists(#k)")
		} else {
			put.ConditionExpression = aws.String("#v = :v")
			put.ExpressionAttributeNames = map[string]string{"#v": attrVersion}
			put.ExpressionAttributeValues = map[string]types.AttributeValue{":v": num(version)}
		}
		_, err = l.cfg.API.TransactWriteItems(ctx, &dynamodb.TransactWriteItemsInput{TransactItems: []types.TransactWriteItem{
			{Put: &types.Put{
				TableName: aws.String(l.cfg.Table), Item: obs,
				ConditionExpression:      aws.String("attribute_not_exists(#k)"),
				ExpressionAttributeNames: map[string]string{"#k": AttrKey},
			}},
			{Put: put},
		}})
		if err == nil {
			return Recorded{Counted: true, Estimate: next}, nil
		}
		var tce *types.TransactionCanceledException
		if !errors.As(err, &tce) {
			return Recorded{}, fmt.Errorf("learning the rate of job %s: %w", jobID, err)
		}
		out, err := l.cfg.API.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(l.cfg.Table), Key: obsKey(jobID), ConsistentRead: aws.Bool(true)})
		if err != nil {
			return Recorded{}, fmt.Errorf("learning the rate of job %s: %w", jobID, err)
		}
		if out.Item != nil {
			return Recorded{Estimate: cur}, nil // recorded before
		}
		// Another recorder updated the estimate since it was read: read it again, after a
		// short random pause so that contenders spread out.
		select {
		case <-ctx.Done():
			return Recorded{}, fmt.Errorf("learning the rate of job %s: %w", jobID, ctx.Err())
		case <-time.After(time.Duration(1+rand.IntN(10*(attempt+1))) * time.Millisecond):
		}
	}
	return Recorded{}, fmt.Errorf("learning the rate of job %s: the estimate of %s on %s changed under %d attempts", jobID, s.Profile, s.InstanceType, learnMaxRetries)
}

// LearnedRate reads the estimate of a profile on an instance type (no samples when there
// is none).
func (l *Ledger) LearnedRate(ctx context.Context, profile, instanceType string) (learn.Estimate, error) {
	e, _, err := l.learned(ctx, profile, instanceType)
	return e, err
}

func (l *Ledger) learned(ctx context.Context, profile, instanceType string) (learn.Estimate, int64, error) {
	out, err := l.cfg.API.GetItem(ctx, &dynamodb.GetItemInput{
		TableName: aws.String(l.cfg.Table), Key: learnKey(profile, instanceType), ConsistentRead: aws.Bool(true),
	})
	if err != nil {
		return learn.Estimate{}, 0, fmt.Errorf("reading the learned rate of %s on %s: %w", profile, instanceType, err)
	}
	if out.Item == nil {
		return learn.Estimate{}, 0, nil
	}
	le, version, err := parseLearned(flatten(out.Item))
	if err != nil {
		return learn.Estimate{}, 0, fmt.Errorf("reading the learned rate of %s on %s: %w", profile, instanceType, err)
	}
	return le.Estimate, version, nil
}

func parseLearned(a map[string]string) (Learned, int64, error) {
	var errs []error
	f := func(k string) float64 {
		v, err := strconv.ParseFloat(a[k], 64)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %q is not a number", k, a[k]))
		}
		return v
	}
	le := Learned{Profile: a[attrProfile], InstanceType: a[attrType]}
	le.Mean, le.Variance = f(attrMean), f(attrVariance)
	le.Samples = int(f(attrSamples))
	version := int64(f(attrVersion))
	if t, err := time.Parse(time.RFC3339Nano, a[attrUpdated]); err == nil {
		le.Updated = t
	}
	return le, version, errors.Join(errs...)
}

// ListLearned returns every learned rate of the table, by profile and instance type.
func ListLearned(ctx context.Context, api ScanAPI, table string) ([]Learned, error) {
	var out []Learned
	p := dynamodb.NewScanPaginator(api, &dynamodb.ScanInput{
		TableName:                 aws.String(table),
		FilterExpression:          aws.String("begins_with(#k, :p)"),
		ExpressionAttributeNames:  map[string]string{"#k": AttrKey},
		ExpressionAttributeValues: map[string]types.AttributeValue{":p": str(learnPrefix)},
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing the learned rates of %s: %w", table, err)
		}
		for _, item := range page.Items {
			le, _, err := parseLearned(flatten(item))
			if err != nil {
				return nil, fmt.Errorf("listing the learned rates of %s: %w", table, err)
			}
			out = append(out, le)
		}
	}
	slices.SortFunc(out, func(a, b Learned) int {
		return strings.Compare(a.Profile+"\x00"+a.InstanceType, b.Profile+"\x00"+b.InstanceType)
	})
	return out, nil
}
