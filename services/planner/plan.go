package planner

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/hostkey"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/recipe"
	"github.com/sortie-fleet/sortie/pkg/sizing"
)

// QueueAPI is the SQS calls the planner makes to measure a work queue.
type QueueAPI interface {
	GetQueueUrl(ctx context.Context, params *sqs.GetQueueUrlInput, optFns ...func(*sqs.Options)) (*sqs.GetQueueUrlOutput, error)
	GetQueueAttributes(ctx context.Context, params *sqs.GetQueueAttributesInput, optFns ...func(*sqs.Options)) (*sqs.GetQueueAttributesOutput, error)
}

// BucketAPI is the S3 call the planner makes to count the objects under a prefix.
type BucketAPI interface {
	ListObjectsV2(ctx context.Context, params *s3.ListObjectsV2Input, optFns ...func(*s3.Options)) (*s3.ListObjectsV2Output, error)
}

var (
	_ QueueAPI  = (*sqs.Client)(nil)
	_ BucketAPI = (*s3.Client)(nil)
)

// planner turns a JobSubmitted into a FleetPlanned.
type planner struct {
	ops opsconfig.Source // read once per job
	// secretsBucket is the stack's secrets bucket: a job whose recipe would fetch from it
	// is refused.
	secretsBucket string
	queues        QueueAPI
	objects       BucketAPI
	now           func() time.Time
	// rates reads the learned rates (the ledger); nil sizes with the configured ones.
	rates rateReader
}

// plan checks the job against the ops config before touching AWS, measures its work and
// sizes its fleet. Errors that no retry can fix are marked bus.Permanent.
func (p *planner) plan(ctx context.Context, job events.JobSubmitted) (events.FleetPlanned, error) {
	ops := p.ops.Current()
	sel, err := resolve(ops, job, p.secretsBucket)
	if err != nil {
		return events.FleetPlanned{}, err
	}
	items, err := countWork(ctx, p.queues, p.objects, job.Work)
	if err != nil {
		return events.FleetPlanned{}, err
	}
	sel.Candidates = withLearned(ctx, p.rates, ops.Learning.Policy(), job.Profile, sel.Candidates)
	plan, err := buildPlan(job, sel, items, p.now())
	if err != nil {
		return events.FleetPlanned{}, err
	}
	// A fresh nonce per plan: a redelivery of this FleetPlanned carries the same one, a
	// second submission of the job id another (the provisioner keeps the nonce its
	// instances were launched with; see hostkey.Derive).
	if plan.Nonce, err = hostkey.NewNonce(); err != nil {
		return events.FleetPlanned{}, err
	}
	return plan, nil
}

// selection is what the ops config holds for a job: its template and the sizing
// candidates of the template's instance types under the job's capacity profile.
type selection struct {
	Template   opsconfig.Template
	Candidates []sizing.Candidate
}

// resolve looks up the job's template, profile and recipe and checks its parameters
// against the recipe (recipe.Check: patterns, and every path, key and fetch within the
// recipe's bounds, never the secrets bucket), reporting every problem at once. All of
// them are permanent: the reason reads like `unknown template "x"`.
func resolve(ops *opsconfig.Config, job events.JobSubmitted, secretsBucket string) (selection, error) {
	var errs []error
	t, tErr := ops.Template(job.Template)
	_, pErr := ops.Profile(job.Profile)
	errs = append(errs, tErr, pErr)
	r, rErr := ops.Recipe(job.Recipe)
	if rErr != nil {
		errs = append(errs, rErr)
	} else if err := recipe.Check(r, job.Params, secretsBucket); err != nil {
		errs = append(errs, fmt.Errorf("recipe %q: %w", job.Recipe, err))
	}
	var cands []sizing.Candidate
	if tErr == nil && pErr == nil {
		var err error
		if cands, err = ops.Candidates(job.Template, job.Profile); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return selection{}, bus.Permanent(err)
	}
	return selection{Template: t, Candidates: cands}, nil
}

// countWork returns the number of work items: the explicit count, the depth of a queue
// (visible, in flight and delayed) or the number of objects under an S3 prefix.
func countWork(ctx context.Context, queues QueueAPI, objects BucketAPI, w events.WorkSource) (int, error) {
	switch {
	case w.Count != 0:
		return w.Count, nil
	case w.Queue != "":
		return queueDepth(ctx, queues, w.Queue)
	case w.S3 != nil:
		return countObjects(ctx, objects, *w.S3)
	}
	return 0, bus.Permanent(errors.New("work: no source set"))
}

// queueDepthAttributes are summed to measure a queue: messages waiting, messages being
// processed and messages sent with a delay that are not visible yet (work all the same).
var queueDepthAttributes = []sqstypes.QueueAttributeName{
	sqstypes.QueueAttributeNameApproximateNumberOfMessages,
	sqstypes.QueueAttributeNameApproximateNumberOfMessagesNotVisible,
	sqstypes.QueueAttributeNameApproximateNumberOfMessagesDelayed,
}

func queueDepth(ctx context.Context, api QueueAPI, name string) (int, error) {
	url, err := api.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String(name)})
	if err != nil {
		return 0, classify(fmt.Sprintf("work queue %q", name), err)
	}
	out, err := api.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{
		QueueUrl:       url.QueueUrl,
		AttributeNames: queueDepthAttributes,
	})
	if err != nil {
		return 0, classify(fmt.Sprintf("work queue %q", name), err)
	}
	total := 0
	for _, a := range queueDepthAttributes {
		v, ok := out.Attributes[string(a)]
		if !ok {
			return 0, fmt.Errorf("work queue %q: no %s in GetQueueAttributes", name, a)
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("work queue %q: %s is %q, not a count", name, a, v)
		}
		total += n
	}
	return total, nil
}

// countObjects counts the objects under a prefix, page by page. Keys ending in "/" are
// folder placeholders, not work. It stops with a permanent error past events.MaxItems.
func countObjects(ctx context.Context, api BucketAPI, src events.S3Prefix) (int, error) {
	what := fmt.Sprintf("s3://%s/%s", src.Bucket, src.Prefix)
	in := &s3.ListObjectsV2Input{Bucket: aws.String(src.Bucket)}
	if src.Prefix != "" {
		in.Prefix = aws.String(src.Prefix)
	}
	pages := s3.NewListObjectsV2Paginator(api, in)
	n := 0
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return 0, classify(fmt.Sprintf("work bucket %q (%s)", src.Bucket, what), err)
		}
		for _, o := range page.Contents {
			if !strings.HasSuffix(aws.ToString(o.Key), "/") {
				n++
			}
		}
		if n > events.MaxItems {
			return 0, bus.Permanent(fmt.Errorf("%s holds more than %d objects, the most one job may process", what, events.MaxItems))
		}
	}
	return n, nil
}

// classify wraps an AWS error about a work source: a source that does not exist, or that
// the planner may not read, is permanent; anything else (throttling, 5xx) is retried.
func classify(what string, err error) error {
	switch {
	case awsx.IsNotFound(err):
		return bus.Permanent(fmt.Errorf("%s does not exist: %w", what, err))
	case awsx.IsPermanent(err):
		return bus.Permanent(fmt.Errorf("%s: %w", what, err))
	}
	return fmt.Errorf("%s: %w", what, err)
}

// buildPlan sizes the fleet for items on the time left at now (the job's submission time
// plus its deadline, less now) and returns the plan: revision 1 of the fleet whose id is
// the job id. A job that no fleet the template allows can finish in the time left is
// rejected with the sizing's rationale, unless it is best effort.
func buildPlan(job events.JobSubmitted, sel selection, items int, now time.Time) (events.FleetPlanned, error) {
	if items == 0 {
		return events.FleetPlanned{}, bus.Permanent(fmt.Errorf("nothing to do: %s holds no work items", workName(job.Work)))
	}
	if items > events.MaxItems {
		return events.FleetPlanned{}, bus.Permanent(fmt.Errorf("%s holds %d work items, more than the %d one job may process", workName(job.Work), items, events.MaxItems))
	}
	res, err := sizing.Plan(sizing.Request{
		Items:      items,
		Deadline:   job.Deadline(),
		Waited:     max(now.Sub(job.Time), 0),
		Candidates: sel.Candidates,
		Min:        sel.Template.MinInstances,
		Max:        sel.Template.MaxInstances,
	})
	if err != nil {
		return events.FleetPlanned{}, bus.Permanent(fmt.Errorf("sizing: %w", err))
	}
	if !res.MeetsDeadline && !job.BestEffort {
		return events.FleetPlanned{}, bus.Permanent(fmt.Errorf("the deadline cannot be met at any size (not best effort): %s", res.Rationale))
	}
	return events.FleetPlanned{
		Header:           events.NewHeader(job.JobID, job.CorrelationID, now),
		FleetID:          job.JobID,
		PlanRevision:     1,
		Template:         job.Template,
		Profile:          job.Profile,
		Recipe:           job.Recipe,
		Params:           job.Params,
		DeadlineSeconds:  job.DeadlineSeconds,
		SubmittedAt:      job.Time,
		Items:            items,
		InstanceType:     res.InstanceType,
		Count:            res.Count,
		EstimatedSeconds: res.EstimatedSeconds,
		MeetsDeadline:    res.MeetsDeadline,
		Rationale:        truncate(res.Rationale, events.MaxTextBytes),
		PlannedCost:      res.Cost,
	}, nil
}

// workName names a work source for a message.
func workName(w events.WorkSource) string {
	switch {
	case w.Queue != "":
		return fmt.Sprintf("work queue %q", w.Queue)
	case w.S3 != nil:
		return fmt.Sprintf("s3://%s/%s", w.S3.Bucket, w.S3.Prefix)
	}
	return "the job's count"
}

// truncate cuts s to at most n bytes without splitting a UTF-8 sequence.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const ellipsis = "…"
	cut := n - len(ellipsis)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + ellipsis
}
