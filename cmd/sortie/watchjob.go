package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/watch"
)

// WatchCmd is `sortie watch JOB`: a job's history from the ledger, then its live events
// until its fleet is terminated.
type WatchCmd struct {
	JobID   string        `arg:"" name:"job-id" help:"The job to follow (running or finished)."`
	JSON    bool          `name:"json" help:"Print the history and the events as JSON lines."`
	Timeout time.Duration `help:"Give up after this long." default:"1h"`
}

// Run prints the job's history and, unless it has ended, follows it. It returns an error
// (exit status 1) unless the job succeeded.
func (c *WatchCmd) Run(ctx context.Context, g *Globals) error {
	cfg, err := awsx.Load(ctx, "cli")
	if err != nil {
		return err
	}
	topo := bus.Topology{Prefix: g.Prefix}
	if err := checkStack(ctx, s3.NewFromConfig(cfg, awsx.S3Options(cfg)), topo); err != nil {
		return err
	}
	l := ledger.ForStack(cfg, topo)
	rec, err := l.Get(ctx, c.JobID)
	if err != nil {
		return err
	}
	if rec.Attrs[ledger.AttrJobID] == "" {
		return fmt.Errorf("job %s: not in the ledger %s (check the job id and --prefix)", c.JobID, topo.LedgerTableName())
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	out := newJobPrinter(g.Stdout, c.JSON)
	if ended(rec) {
		out.history(rec)
		return out.outcome(rec.JobID, rec.Attrs["outcome"], rec.Attrs["reason"])
	}
	// Subscribe before reading the history again, so that nothing falls between the two.
	w, err := watch.Open(ctx, sns.NewFromConfig(cfg), sqs.NewFromConfig(cfg), topo, sanitize(c.JobID))
	if err != nil {
		return err
	}
	defer w.Close(context.WithoutCancel(ctx))
	if rec, err = l.Get(ctx, c.JobID); err != nil {
		return err
	}
	out.history(rec)
	if ended(rec) {
		return out.outcome(rec.JobID, rec.Attrs["outcome"], rec.Attrs["reason"])
	}
	return followJob(ctx, w, l, c.JobID, out)
}

// ended says whether a job's record is final: its fleet terminated, or the job rejected
// (or cancelled) before it ran.
func ended(rec ledger.Record) bool {
	return rec.DoneAt(ledger.Terminated) != "" || rec.DoneAt(ledger.Rejected) != ""
}

// followJob prints the job's events until its FleetTerminated and returns an error unless
// it succeeded. With a ledger, a progress line (on a terminal) shows the task counts,
// instances alive, time left and the current stage.
func followJob(ctx context.Context, w *watch.Watcher, l *ledger.Ledger, jobID string, out *jobPrinter) error {
	if l != nil && out.tty {
		stop := out.progress(ctx, l, jobID)
		defer stop()
	}
	ft, err := w.Follow(ctx, jobID, out.event)
	out.clear()
	if err != nil {
		return err
	}
	return out.outcome(jobID, ft.Outcome, ft.Reason)
}

// jobPrinter writes a job's history and events: plain lines, JSON lines, and on a
// terminal a progress line kept below them.
type jobPrinter struct {
	mu    sync.Mutex
	w     io.Writer
	json  bool
	tty   bool
	start time.Time
	bar   *progressbar.ProgressBar
}

func newJobPrinter(w io.Writer, asJSON bool) *jobPrinter {
	p := &jobPrinter{w: w, json: asJSON, start: time.Now()}
	if f, ok := w.(*os.File); ok && !asJSON && term.IsTerminal(int(f.Fd())) {
		p.tty = true
	}
	return p
}

// HistoryLine is one stage of a job's history, as `watch --json` prints it.
type HistoryLine struct {
	Type   string `json:"type"` // "history"
	JobID  string `json:"job_id"`
	Stage  string `json:"stage"`
	At     string `json:"at"`
	Detail string `json:"detail,omitempty"`
}

// history prints the stages the ledger records, in pipeline order (a stage may record
// itself a moment after the next one: the bootstrapper writes after its publish).
func (p *jobPrinter) history(rec ledger.Record) {
	var lines []HistoryLine
	if at := rec.Attrs[ledger.AttrSubmittedAt]; at != "" {
		lines = append(lines, HistoryLine{Stage: "submitted", At: at})
	}
	s := rec.Summarize()
	for _, st := range append(slices.Clone(ledger.Stages), ledger.Rejected) {
		at := s.Stages[string(st)]
		if at == "" {
			continue
		}
		h := HistoryLine{Stage: string(st), At: at}
		switch st {
		case ledger.Planned:
			h.Detail = s.Plan
		case ledger.Finished, ledger.Terminated, ledger.Rejected:
			h.Detail = strings.TrimSuffix(s.Outcome+": "+s.Reason, ": ")
			if st == ledger.Finished && s.Tasks != nil {
				h.Detail += fmt.Sprintf(" (%d tasks succeeded, %d failed)", s.Tasks["succeeded"], s.Tasks["failed"])
			}
		}
		lines = append(lines, h)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, h := range lines {
		h.Type, h.JobID = "history", rec.JobID
		if p.json {
			b, _ := json.Marshal(h)
			fmt.Fprintf(p.w, "%s\n", b)
			continue
		}
		at := h.At
		if t, err := time.Parse(time.RFC3339Nano, at); err == nil {
			at = t.Local().Format("15:04:05.0")
		}
		fmt.Fprintf(p.w, "%s  %-12s %s\n", at, h.Stage, h.Detail)
	}
	if s.Hold != nil {
		fmt.Fprintf(p.w, "held by %s until %s: %s\n", dash(s.Hold.By), s.Hold.Until.Local().Format(time.RFC3339), dash(s.Hold.Reason))
	}
}

// EventLine is one live event, as `watch --json` and `submit --watch --json` print it.
type EventLine struct {
	AfterSeconds float64      `json:"after_seconds"` // since the watch started
	Type         string       `json:"type"`          // the event type
	Event        events.Event `json:"event"`
}

func (p *jobPrinter) event(ev events.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.json {
		b, _ := json.Marshal(EventLine{AfterSeconds: time.Since(p.start).Seconds(), Type: ev.EventType(), Event: ev})
		fmt.Fprintf(p.w, "%s\n", b)
		return
	}
	if p.bar != nil {
		_ = p.bar.Clear()
	}
	fmt.Fprintf(p.w, "%6.1fs  %s\n", time.Since(p.start).Seconds(), watch.Describe(ev))
}

// outcome prints how the job ended and returns an error unless it succeeded.
func (p *jobPrinter) outcome(jobID, outcome, reason string) error {
	if outcome == events.OutcomeSucceeded {
		return nil
	}
	if reason != "" {
		return fmt.Errorf("job %s %s: %s", jobID, outcome, reason)
	}
	return fmt.Errorf("job %s %s", jobID, dash(outcome))
}

func (p *jobPrinter) clear() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil {
		_ = p.bar.Clear()
		p.bar = nil
	}
}

// progress keeps a progress line (items done of the total, instances alive, time left to
// the deadline, current stage) from the ledger, every second, until stopped.
func (p *jobPrinter) progress(ctx context.Context, l *ledger.Ledger, jobID string) (stop func()) {
	p.bar = progressbar.NewOptions(-1, progressbar.OptionSetWriter(p.w), progressbar.OptionShowCount(),
		progressbar.OptionSetPredictTime(false), progressbar.OptionThrottle(100*time.Millisecond))
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			if rec, err := l.Get(ctx, jobID); err == nil {
				total, doneItems, desc := progressOf(rec, time.Now())
				p.mu.Lock()
				if p.bar != nil {
					if total > 0 {
						p.bar.ChangeMax(total)
					}
					p.bar.Describe(desc)
					_ = p.bar.Set(doneItems)
				}
				p.mu.Unlock()
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() { cancel(); <-done }
}

// progressOf reads a job's progress from its record: items in total and done, and a
// description with the instances alive, the time left and the stage.
func progressOf(rec ledger.Record, now time.Time) (total, done int, desc string) {
	total, _ = strconv.Atoi(rec.Attrs["items"])
	done = rec.Tasks(events.OutcomeSucceeded) + rec.Tasks(events.OutcomeFailed)
	alive := "-"
	if ids := rec.Attrs["instances"]; ids != "" && rec.DoneAt(ledger.Terminated) == "" {
		alive = strconv.Itoa(len(strings.Split(ids, ",")))
	}
	left := "-"
	if sub, err := time.Parse(time.RFC3339Nano, rec.Attrs["submitted_at"]); err == nil {
		if secs, err := strconv.Atoi(rec.Attrs["deadline_seconds"]); err == nil {
			left = sub.Add(time.Duration(secs) * time.Second).Sub(now).Round(time.Second).String()
		}
	}
	s := rec.Summarize()
	return total, done, fmt.Sprintf("%s · %s instances · %s left ·", s.State, alive, left)
}
