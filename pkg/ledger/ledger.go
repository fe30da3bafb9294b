// Package ledger is the job ledger: one DynamoDB item per job recording the stages it has
// passed, where every stage claims its transition with a conditional write (a lease) before
// it acts, so that duplicate and redelivered messages do nothing twice.
package ledger

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/google/uuid"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/events"
)

// API lists the DynamoDB calls the ledger makes, with the SDK's signatures.
type API interface {
	UpdateItem(ctx context.Context, params *dynamodb.UpdateItemInput, optFns ...func(*dynamodb.Options)) (*dynamodb.UpdateItemOutput, error)
	GetItem(ctx context.Context, params *dynamodb.GetItemInput, optFns ...func(*dynamodb.Options)) (*dynamodb.GetItemOutput, error)
	PutItem(ctx context.Context, params *dynamodb.PutItemInput, optFns ...func(*dynamodb.Options)) (*dynamodb.PutItemOutput, error)
	TaskAPI
}

var _ API = (*dynamodb.Client)(nil)

// Stage is a transition of a job. Each is claimed by the service that performs it.
type Stage string

// The stages, in pipeline order.
const (
	Planned      Stage = "planned"      // planner: FleetPlanned published
	Launched     Stage = "launched"     // provisioner: FleetLaunched published
	Bootstrapped Stage = "bootstrapped" // bootstrapper: FleetBootstrapped published
	Watching     Stage = "watching"     // monitor: the fleet's check chain armed
	Finished     Stage = "finished"     // monitor: JobFinished published
	Terminated   Stage = "terminated"   // reaper: FleetTerminated published
)

// Stages lists every stage in pipeline order.
var Stages = []Stage{Planned, Launched, Bootstrapped, Watching, Finished, Terminated}

// Attribute names of a job's item. A stage's attributes are "<stage>_at" (when it was
// done, RFC 3339), "<stage>_holder" and "<stage>_until" (the claim's holder and lease end,
// Unix milliseconds), removed once the stage is done.
const (
	AttrKey     = "pk"         // the table's hash key: "job#<job id>"
	AttrJobID   = "job_id"     // the job id, for scans
	AttrExpires = "expires_at" // the TTL attribute: Unix seconds
	// AttrSubmission is the digest of the JobSubmitted that took the job id, and
	// AttrSubmittedAt when the ledger first saw it.
	AttrSubmission  = "submission"
	AttrSubmittedAt = "ledger_submitted_at"
)

// Defaults.
const (
	DefaultLease = 20 * time.Second
	DefaultTTL   = 30 * 24 * time.Hour
)

// ErrTaken says a claim was not won: the stage is done, or another holder's lease runs.
// The error is a *TakenError.
var ErrTaken = errors.New("stage already claimed")

// ErrLost says a claim's lease was taken over by another holder before it was done.
var ErrLost = errors.New("claim lost")

// TakenError says why a claim was not won.
type TakenError struct {
	JobID     string
	Stage     Stage
	DoneAt    string    // when the stage was done; empty while it is held
	HeldUntil time.Time // the lease of the holder; zero when done
	holderMsg string    // the message the holder handles
}

func (e *TakenError) Error() string {
	if e.DoneAt != "" {
		return fmt.Sprintf("job %s: stage %s done at %s", e.JobID, e.Stage, e.DoneAt)
	}
	return fmt.Sprintf("job %s: stage %s held by another claim until %s", e.JobID, e.Stage, e.HeldUntil.UTC().Format(time.RFC3339Nano))
}

// Is makes errors.Is(err, ErrTaken) true.
func (e *TakenError) Is(target error) bool { return target == ErrTaken }

// Config configures a Ledger.
type Config struct {
	API   API
	Table string // bus.Topology.LedgerTableName()
	// Lease is how long a claim holds without renewal. A claim is renewed every Lease/3
	// while it is held, so only a holder that died lets it run out. It must stay below
	// two thirds of the queues' visibility timeout (see DESIGN: a duplicate that finds the
	// stage held is acked, because the holder's own message comes back if the holder dies,
	// and by then its lease must have run out).
	Lease time.Duration
	TTL   time.Duration // how long a job's record is kept after its last write
	Now   func() time.Time
	// Fault, when set, is asked at every claim's Checkpoint (after the claim, before the
	// publish): true simulates the holder's crash there. Tests only.
	Fault func(jobID string, stage Stage) bool
}

// Ledger claims and records the stages of jobs.
type Ledger struct {
	cfg Config
}

// New returns a ledger on cfg.Table.
func New(cfg Config) (*Ledger, error) {
	if cfg.API == nil || cfg.Table == "" {
		return nil, errors.New("ledger: an API and a table name are required")
	}
	if cfg.Lease == 0 {
		cfg.Lease = DefaultLease
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Lease < 300*time.Millisecond {
		return nil, fmt.Errorf("ledger: lease %s: want at least 300ms", cfg.Lease)
	}
	return &Ledger{cfg: cfg}, nil
}

// ForStack returns the ledger of a stack from its AWS config.
func ForStack(awsCfg aws.Config, topo bus.Topology) *Ledger {
	l, _ := New(Config{API: dynamodb.NewFromConfig(awsCfg), Table: topo.LedgerTableName()})
	return l
}

// Lease is the ledger's claim lease.
func (l *Ledger) Lease() time.Duration { return l.cfg.Lease }

// Key is the item key of a job.
func Key(jobID string) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{AttrKey: &types.AttributeValueMemberS{Value: "job#" + jobID}}
}

func atAttr(s Stage) string     { return string(s) + "_at" }
func holderAttr(s Stage) string { return string(s) + "_holder" }
func untilAttr(s Stage) string  { return string(s) + "_until" }
func msgAttr(s Stage) string    { return string(s) + "_msg" }

func str(v string) types.AttributeValue { return &types.AttributeValueMemberS{Value: v} }
func num(v int64) types.AttributeValue {
	return &types.AttributeValueMemberN{Value: strconv.FormatInt(v, 10)}
}

// Claim wins the stage of a job for this caller, or returns a *TakenError (ErrTaken) when
// the stage is done or another caller's lease on it runs. A won claim is renewed in the
// background until Done or Release; its Context is cancelled if the lease is lost.
//
// The claim records the id of the message being handled (bus.MessageID). A message that
// finds the stage held under its own id is the holder's own message, delivered again while
// the holder still runs (its handling outlived the router's MaxHandle): acknowledging it
// would leave nothing to redeliver should the holder die, so Claim waits instead, until the
// holder is done (ErrTaken) or its lease runs out (then it claims).
func (l *Ledger) Claim(ctx context.Context, jobID string, stage Stage) (*Claim, error) {
	for {
		c, err := l.claim(ctx, jobID, stage)
		var te *TakenError
		if !errors.As(err, &te) || te.DoneAt != "" || te.holderMsg == "" || te.holderMsg != bus.MessageID(ctx) {
			return c, err
		}
		bus.Logger(ctx).Info("this message is the holder's own, delivered again while its holder runs: waiting for the holder",
			"stage", stage, "held_until", te.HeldUntil)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("claiming %s of job %s: %w", stage, jobID, ctx.Err())
		case <-time.After(l.cfg.Lease / 3):
		}
	}
}

func (l *Ledger) claim(ctx context.Context, jobID string, stage Stage) (*Claim, error) {
	holder := uuid.NewString()
	now := l.cfg.Now()
	_, err := l.cfg.API.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName:           aws.String(l.cfg.Table),
		Key:                 Key(jobID),
		UpdateExpression:    aws.String("SET #h = :h, #u = :u, #m = :m, #job = :job, #exp = :exp"),
		ConditionExpression: aws.String("attribute_not_exists(#at) AND (attribute_not_exists(#u) OR #u < :now)"),
		ExpressionAttributeNames: map[string]string{
			"#h": holderAttr(stage), "#u": untilAttr(stage), "#at": atAttr(stage), "#m": msgAttr(stage),
			"#job": AttrJobID, "#exp": AttrExpires,
		},
		ExpressionAttributeValues: map[string]types.AttributeValue{
			":h":   str(holder),
			":u":   num(now.Add(l.cfg.Lease).UnixMilli()),
			":m":   str(bus.MessageID(ctx)),
			":now": num(now.UnixMilli()),
			":job": str(jobID),
			":exp": num(now.Add(l.cfg.TTL).Unix()),
		},
	})
	if isConditionFailed(err) {
		return nil, l.taken(ctx, jobID, stage)
	}
	if err != nil {
		return nil, fmt.Errorf("claiming %s of job %s: %w", stage, jobID, err)
	}
	cctx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	c := &Claim{l: l, JobID: jobID, Stage: stage, holder: holder, ctx: cctx, cancel: cancel, stop: make(chan struct{}), stopped: make(chan struct{})}
	go c.renew()
	return c, nil
}

// taken reads why a claim was not won.
func (l *Ledger) taken(ctx context.Context, jobID string, stage Stage) error {
	rec, err := l.Get(ctx, jobID)
	if err != nil {
		return fmt.Errorf("claiming %s of job %s: %w", stage, jobID, err)
	}
	te := &TakenError{JobID: jobID, Stage: stage, DoneAt: rec.Attrs[atAttr(stage)], holderMsg: rec.Attrs[msgAttr(stage)]}
	if ms, err := strconv.ParseInt(rec.Attrs[untilAttr(stage)], 10, 64); err == nil {
		te.HeldUntil = time.UnixMilli(ms)
	}
	return te
}

// Record is a job's item as read.
type Record struct {
	JobID string
	// Attrs holds every string and number attribute, numbers in their decimal form.
	Attrs map[string]string
}

// Found reports whether the job has a record.
func (r Record) Found() bool { return len(r.Attrs) > 0 }

// DoneAt returns when a stage was done, "" if it is not.
func (r Record) DoneAt(s Stage) string { return r.Attrs[atAttr(s)] }

// State is the last stage done in pipeline order ("submitted" when none is), or
// "rejected" for a job that was rejected and not terminated.
func (r Record) State() string {
	if r.DoneAt(Rejected) != "" && r.DoneAt(Terminated) == "" {
		if r.Attrs["outcome"] == events.OutcomeCancelled {
			return events.OutcomeCancelled
		}
		return string(Rejected)
	}
	state := "submitted"
	for _, s := range Stages {
		if r.DoneAt(s) != "" {
			state = string(s)
		}
	}
	return state
}

// Get reads a job's record (strongly consistent). A job without one has an empty record.
func (l *Ledger) Get(ctx context.Context, jobID string) (Record, error) {
	out, err := l.cfg.API.GetItem(ctx, &dynamodb.GetItemInput{
		TableName: aws.String(l.cfg.Table), Key: Key(jobID), ConsistentRead: aws.Bool(true),
	})
	if err != nil {
		return Record{}, fmt.Errorf("reading job %s: %w", jobID, err)
	}
	return Record{JobID: jobID, Attrs: flatten(out.Item)}, nil
}

func flatten(item map[string]types.AttributeValue) map[string]string {
	m := make(map[string]string, len(item))
	for k, v := range item {
		switch v := v.(type) {
		case *types.AttributeValueMemberS:
			m[k] = v.Value
		case *types.AttributeValueMemberN:
			m[k] = v.Value
		}
	}
	return m
}

// Fields are attributes a stage records when it is done: string, int, int64 or
// time.Time (stored as RFC 3339) values.
type Fields map[string]any

// Claim is a won claim on one stage of one job.
type Claim struct {
	l      *Ledger
	JobID  string
	Stage  Stage
	holder string

	ctx     context.Context
	cancel  context.CancelCauseFunc
	once    sync.Once
	stop    chan struct{}
	stopped chan struct{}
}

// Context is cancelled when the claim's lease is lost (or the claim ends).
func (c *Claim) Context() context.Context { return c.ctx }

func (c *Claim) renew() {
	defer close(c.stopped)
	t := time.NewTicker(c.l.cfg.Lease / 3)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), c.l.cfg.Lease/3)
		_, err := c.l.cfg.API.UpdateItem(ctx, &dynamodb.UpdateItemInput{
			TableName:                 aws.String(c.l.cfg.Table),
			Key:                       Key(c.JobID),
			UpdateExpression:          aws.String("SET #u = :u"),
			ConditionExpression:       aws.String("#h = :h AND attribute_not_exists(#at)"),
			ExpressionAttributeNames:  map[string]string{"#h": holderAttr(c.Stage), "#u": untilAttr(c.Stage), "#at": atAttr(c.Stage)},
			ExpressionAttributeValues: map[string]types.AttributeValue{":h": str(c.holder), ":u": num(c.l.cfg.Now().Add(c.l.cfg.Lease).UnixMilli())},
		})
		cancel()
		if isConditionFailed(err) {
			c.cancel(fmt.Errorf("job %s stage %s: %w", c.JobID, c.Stage, ErrLost))
			return
		}
		// Other errors: try again at the next tick; the lease has two more ticks to run.
	}
}

// end stops the renewal (once).
func (c *Claim) end() {
	c.once.Do(func() {
		close(c.stop)
		<-c.stopped
	})
}

// Checkpoint is called after the claim's work and before its publish. It returns an
// error only when the ledger's fault hook simulates a crash here: the claim is then
// abandoned as a dead process leaves it (not released, no longer renewed), and the error
// tells the bus not to retry nor acknowledge the message, as if the process had died.
func (c *Claim) Checkpoint() error {
	if f := c.l.cfg.Fault; f != nil && f(c.JobID, c.Stage) {
		c.end()
		c.cancel(errors.New("crash simulated"))
		return bus.Abandon(fmt.Errorf("fault hook: crash of the %s claim of job %s before its publish", c.Stage, c.JobID))
	}
	return c.ctx.Err()
}

// Done records the stage done with fields and ends the claim. It returns ErrLost when
// another holder took the stage over (this holder's lease ran out).
func (c *Claim) Done(ctx context.Context, fields Fields) error {
	c.end()
	defer c.cancel(nil)
	now := c.l.cfg.Now()
	names := map[string]string{"#h": holderAttr(c.Stage), "#u": untilAttr(c.Stage), "#at": atAttr(c.Stage), "#exp": AttrExpires}
	values := map[string]types.AttributeValue{
		":h": str(c.holder), ":at": str(now.UTC().Format(time.RFC3339Nano)), ":exp": num(now.Add(c.l.cfg.TTL).Unix()),
	}
	expr := "SET #at = :at, #exp = :exp"
	i := 0
	for k, v := range fields {
		av, err := attr(v)
		if err != nil {
			return fmt.Errorf("recording %s of job %s: field %s: %w", c.Stage, c.JobID, k, err)
		}
		n, p := fieldNames(i)
		names[n], values[p] = k, av
		expr += ", " + n + " = " + p
		i++
	}
	names["#m"] = msgAttr(c.Stage)
	expr += " REMOVE #h, #u, #m"
	_, err := c.l.cfg.API.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName:                 aws.String(c.l.cfg.Table),
		Key:                       Key(c.JobID),
		UpdateExpression:          aws.String(expr),
		ConditionExpression:       aws.String("#h = :h"),
		ExpressionAttributeNames:  names,
		ExpressionAttributeValues: values,
	})
	if isConditionFailed(err) {
		return fmt.Errorf("recording %s of job %s: %w", c.Stage, c.JobID, ErrLost)
	}
	if err != nil {
		return fmt.Errorf("recording %s of job %s: %w", c.Stage, c.JobID, err)
	}
	return nil
}

// Release gives the claim up without recording the stage, so that a redelivery can claim
// it at once (the handler failed and its message will be retried). Best effort: a lease
// that cannot be released runs out.
func (c *Claim) Release(ctx context.Context) {
	select {
	case <-c.stop:
		return // done, released or abandoned already
	default:
	}
	c.end()
	defer c.cancel(nil)
	_, err := c.l.cfg.API.UpdateItem(context.WithoutCancel(ctx), &dynamodb.UpdateItemInput{
		TableName:                 aws.String(c.l.cfg.Table),
		Key:                       Key(c.JobID),
		UpdateExpression:          aws.String("REMOVE #h, #u"),
		ConditionExpression:       aws.String("#h = :h"),
		ExpressionAttributeNames:  map[string]string{"#h": holderAttr(c.Stage), "#u": untilAttr(c.Stage)},
		ExpressionAttributeValues: map[string]types.AttributeValue{":h": str(c.holder)},
	})
	if err != nil && !isConditionFailed(err) {
		slog.Default().Debug("releasing claim; its lease will run out", "job_id", c.JobID, "stage", c.Stage, "error", err.Error())
	}
}

func attr(v any) (types.AttributeValue, error) {
	switch v := v.(type) {
	case string:
		return str(v), nil
	case int:
		return num(int64(v)), nil
	case int64:
		return num(v), nil
	case float64:
		return &types.AttributeValueMemberN{Value: strconv.FormatFloat(v, 'f', -1, 64)}, nil
	case time.Time:
		return str(v.UTC().Format(time.RFC3339Nano)), nil
	default:
		return nil, fmt.Errorf("unsupported type %T", v)
	}
}

func isConditionFailed(err error) bool {
	if err == nil {
		return false
	}
	var ccf *types.ConditionalCheckFailedException
	return errors.As(err, &ccf) || awsx.ErrorCode(err) == "ConditionalCheckFailedException"
}

// Submission is what the ledger knows of a job id when a JobSubmitted arrives.
type Submission struct {
	// Reused says an earlier, different JobSubmitted took the job id: this one must not
	// run. A redelivery or duplicate of the same message (the same digest) is not reused.
	Reused  bool
	Earlier Record // the job's record when Reused
}

// Submit records the digest of a JobSubmitted's body as the job's submission, unless an
// earlier, different one holds the job id.
func (l *Ledger) Submit(ctx context.Context, jobID, digest string) (Submission, error) {
	now := l.cfg.Now()
	_, err := l.cfg.API.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName:           aws.String(l.cfg.Table),
		Key:                 Key(jobID),
		UpdateExpression:    aws.String("SET #d = :d, #job = :job, #exp = :exp, #sub = if_not_exists(#sub, :now)"),
		ConditionExpression: aws.String("attribute_not_exists(#d) OR #d = :d"),
		ExpressionAttributeNames: map[string]string{
			"#d": AttrSubmission, "#job": AttrJobID, "#exp": AttrExpires, "#sub": AttrSubmittedAt,
		},
		ExpressionAttributeValues: map[string]types.AttributeValue{
			":d": str(digest), ":job": str(jobID), ":exp": num(now.Add(l.cfg.TTL).Unix()),
			":now": str(now.UTC().Format(time.RFC3339Nano)),
		},
	})
	if isConditionFailed(err) {
		rec, err := l.Get(ctx, jobID)
		if err != nil {
			return Submission{}, fmt.Errorf("submitting job %s: %w", jobID, err)
		}
		return Submission{Reused: true, Earlier: rec}, nil
	}
	if err != nil {
		return Submission{}, fmt.Errorf("submitting job %s: %w", jobID, err)
	}
	return Submission{}, nil
}

// Note records fields on a job's record without claiming anything (a job waiting for
// capacity says so, for `sortie status`).
func (l *Ledger) Note(ctx context.Context, jobID string, fields Fields) error {
	names := map[string]string{"#job": AttrJobID, "#exp": AttrExpires}
	values := map[string]types.AttributeValue{":job": str(jobID), ":exp": num(l.cfg.Now().Add(l.cfg.TTL).Unix())}
	expr := "SET #job = :job, #exp = :exp"
	i := 0
	for k, v := range fields {
		av, err := attr(v)
		if err != nil {
			return fmt.Errorf("noting on job %s: field %s: %w", jobID, k, err)
		}
		n, p := fieldNames(i)
		names[n], values[p] = k, av
		expr += ", " + n + " = " + p
		i++
	}
	_, err := l.cfg.API.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName: aws.String(l.cfg.Table), Key: Key(jobID), UpdateExpression: aws.String(expr),
		ExpressionAttributeNames: names, ExpressionAttributeValues: values,
	})
	if err != nil {
		return fmt.Errorf("noting on job %s: %w", jobID, err)
	}
	return nil
}

// ScanAPI is the DynamoDB call List makes.
type ScanAPI interface {
	Scan(ctx context.Context, params *dynamodb.ScanInput, optFns ...func(*dynamodb.Options)) (*dynamodb.ScanOutput, error)
}

// List returns every job's record the table holds (until the TTL takes it), by job id.
func List(ctx context.Context, api ScanAPI, table string) ([]Record, error) {
	var out []Record
	p := dynamodb.NewScanPaginator(api, &dynamodb.ScanInput{
		TableName:                 aws.String(table),
		FilterExpression:          aws.String("begins_with(#k, :p)"),
		ExpressionAttributeNames:  map[string]string{"#k": AttrKey},
		ExpressionAttributeValues: map[string]types.AttributeValue{":p": str("job#")},
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing the jobs of %s: %w", table, err)
		}
		for _, item := range page.Items {
			attrs := flatten(item)
			out = append(out, Record{JobID: attrs[AttrJobID], Attrs: attrs})
		}
	}
	slices.SortFunc(out, func(a, b Record) int { return strings.Compare(a.JobID, b.JobID) })
	return out, nil
}

// Summary is a job's record as `sortie status --ledger` shows it.
type Summary struct {
	JobID           string            `json:"job_id"`
	State           string            `json:"state"`
	Plan            string            `json:"plan,omitempty"` // "3 × m3.medium"
	Outcome         string            `json:"outcome,omitempty"`
	Reason          string            `json:"reason,omitempty"`
	InstanceSeconds string            `json:"instance_seconds,omitempty"`
	Tasks           map[string]int    `json:"tasks,omitempty"`
	Waiting         string            `json:"waiting_for_capacity,omitempty"`
	Stages          map[string]string `json:"stages"` // stage → when it was done
	// Hold is the operator's hold on the job's instances, while it is in force; State is
	// "held" when it keeps a finished job's instances.
	Hold *HoldSummary `json:"hold,omitempty"`
	// Cancelled says who cancelled the job and why.
	Cancelled string `json:"cancelled,omitempty"`
	// PlanRevision is the job's highest plan revision when it was replanned (see
	// revisions.go); Lost lists its lost instances: "i-0abc: spot-interruption, replaced by
	// revision 2".
	PlanRevision int      `json:"plan_revision,omitempty"`
	Lost         []string `json:"lost,omitempty"`
}

// HoldSummary is a hold as `sortie status` shows it.
type HoldSummary struct {
	By        string    `json:"by,omitempty"`
	Reason    string    `json:"reason,omitempty"`
	Until     time.Time `json:"until"`
	OnFailure bool      `json:"on_failure,omitempty"`
}

// StateHeld is the state of a finished job whose instances a hold keeps.
const StateHeld = "held"

// Summarize turns a record into its Summary, now.
func (r Record) Summarize() Summary { return r.SummarizeAt(time.Now()) }

// SummarizeAt turns a record into its Summary at now.
func (r Record) SummarizeAt(now time.Time) Summary {
	s := Summary{JobID: r.JobID, State: r.State(), Outcome: r.Attrs["outcome"], Reason: r.Attrs["reason"],
		InstanceSeconds: r.Attrs["instance_seconds"], Stages: map[string]string{}}
	if h := r.Hold(); s.State != string(Terminated) && s.State != string(Rejected) && h.Active(now, s.Outcome) {
		s.Hold = &HoldSummary{By: h.By, Reason: h.Reason, Until: h.Until.UTC(), OnFailure: h.OnFailure}
		if r.DoneAt(Finished) != "" {
			s.State = StateHeld
		}
	}
	if c, ok := r.Cancelled(); ok {
		s.Cancelled = c.Text()
	}
	if n, t := r.Attrs["count"], r.Attrs["instance_type"]; n != "" && t != "" {
		s.Plan = n + " × " + t
	}
	for _, st := range append(slices.Clone(Stages), Rejected) {
		if at := r.DoneAt(st); at != "" {
			s.Stages[string(st)] = at
		}
	}
	for _, o := range []string{"succeeded", "failed"} {
		if n := r.Tasks(o); n > 0 {
			if s.Tasks == nil {
				s.Tasks = map[string]int{}
			}
			s.Tasks[o] = n
		}
	}
	if s.State != string(Terminated) && s.State != string(Rejected) {
		s.Waiting = r.Attrs["waiting_for_capacity"]
	}
	if rev := r.PlanRevision(); rev > 1 {
		s.PlanRevision = rev
	}
	lost := r.Lost()
	for _, id := range slices.Sorted(maps.Keys(lost)) {
		l := id + ": " + lost[id]
		switch by := r.LostBy(id); {
		case by == "":
			l += ", replacement being planned"
		case strings.HasPrefix(by, "none"):
			l += ", " + by
		default:
			l += ", replaced by revision " + by
		}
		s.Lost = append(s.Lost, l)
	}
	return s
}
