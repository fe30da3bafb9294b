package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/watch"
)

// SubmitCmd is `sortie submit`: publish a JobSubmitted, optionally following it to the end.
type SubmitCmd struct {
	File     string        `help:"A JSON job (a JobSubmitted; job_id, correlation_id, time and schema_version are filled in when missing)." type:"existingfile" xor:"source"`
	JobID    string        `help:"Job id (default: generated)."`
	Template string        `help:"Fleet template name (ops-owned)."`
	Profile  string        `help:"Capacity profile name."`
	Recipe   string        `help:"Recipe name."`
	Count    int           `help:"Work size: an explicit item count."`
	Queue    string        `help:"Work size: the depth of this SQS queue."`
	S3       string        `name:"s3" help:"Work size: the object count under s3://BUCKET/PREFIX." placeholder:"s3://BUCKET/PREFIX"`
	Deadline time.Duration `help:"Deadline from now." default:"10m"`
	// BestEffort is JobSubmitted.best_effort.
	BestEffort bool              `help:"Plan the job even when no fleet can finish it in the time left (otherwise it is rejected)."`
	Param      map[string]string `help:"Recipe parameter (repeatable)." placeholder:"KEY=VALUE"`
	Watch      bool              `help:"Follow the job until its fleet is terminated; exit non-zero unless it succeeded."`
	Timeout    time.Duration     `help:"With --watch: give up after this long." default:"1h"`
	JSON       bool              `name:"json" help:"Print the submitted job as JSON (one line), and with --watch each event as a JSON line {\"after_seconds\", \"type\", \"event\"}."`
}

// Run validates the job locally (the same rules the planner applies), publishes it and,
// with --watch, prints its progress.
func (c *SubmitCmd) Run(ctx context.Context, g *Globals) error {
	job, err := c.job(time.Now())
	if err != nil {
		return err
	}
	if err := job.Validate(); err != nil {
		return fmt.Errorf("job not submitted: %w", err)
	}
	topo := bus.Topology{Prefix: g.Prefix}
	cfg, err := awsx.Load(ctx, "cli")
	if err != nil {
		return err
	}
	var w *watch.Watcher
	if c.Watch {
		// Subscribe before publishing so no event is missed.
		if w, err = watch.Open(ctx, sns.NewFromConfig(cfg), sqs.NewFromConfig(cfg), topo, sanitize(job.JobID)); err != nil {
			return err
		}
		defer w.Close(context.WithoutCancel(ctx))
	}
	pub, err := bus.NewPublisher(bus.PublisherConfig{Topology: topo, AWS: cfg})
	if err != nil {
		return err
	}
	defer pub.Close()
	if err := pub.Publish(ctx, job); err != nil {
		return err
	}
	if c.JSON {
		b, err := json.Marshal(struct {
			Submitted events.JobSubmitted `json:"submitted"`
		}{job})
		if err != nil {
			return err
		}
		fmt.Fprintf(g.Stdout, "%s\n", b)
	} else {
		fmt.Fprintf(g.Stdout, "submitted job %s (correlation id %s)\n", job.JobID, job.CorrelationID)
	}
	if w == nil {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	return follow(wctx, w, job.JobID, g, c.JSON)
}

// follow prints the job's events and returns an error unless it ended in success.
func follow(ctx context.Context, w *watch.Watcher, jobID string, g *Globals, asJSON bool) error {
	start := time.Now()
	ft, err := w.Follow(ctx, jobID, func(ev events.Event) {
		if asJSON {
			b, err := json.Marshal(struct {
				After float64      `json:"after_seconds"`
				Type  string       `json:"type"`
				Event events.Event `json:"event"`
			}{time.Since(start).Seconds(), ev.EventType(), ev})
			if err == nil {
				fmt.Fprintf(g.Stdout, "%s\n", b)
			}
			return
		}
		fmt.Fprintf(g.Stdout, "%6.1fs  %s\n", time.Since(start).Seconds(), watch.Describe(ev))
	})
	if err != nil {
		return err
	}
	if ft.Outcome != events.OutcomeSucceeded {
		return fmt.Errorf("job %s %s: %s", jobID, ft.Outcome, ft.Reason)
	}
	return nil
}

func (c *SubmitCmd) job(now time.Time) (events.JobSubmitted, error) {
	var job events.JobSubmitted
	if c.File != "" {
		f, err := os.Open(c.File)
		if err != nil {
			return job, err
		}
		defer f.Close()
		// A job larger than a message may be could never be published: refuse it
		// without reading the rest.
		data, err := io.ReadAll(io.LimitReader(f, events.MaxBodyBytes+1))
		if err != nil {
			return job, fmt.Errorf("reading %s: %w", c.File, err)
		}
		if len(data) > events.MaxBodyBytes {
			return job, fmt.Errorf("reading %s: a job is at most %d bytes", c.File, events.MaxBodyBytes)
		}
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&job); err != nil {
			return job, fmt.Errorf("reading %s: %w", c.File, err)
		}
		if dec.More() {
			return job, fmt.Errorf("reading %s: more than one JSON value", c.File)
		}
	} else {
		job.Template, job.Profile, job.Recipe = c.Template, c.Profile, c.Recipe
		job.Params = c.Param
		job.DeadlineSeconds = int(c.Deadline / time.Second)
		job.BestEffort = c.BestEffort
		switch {
		case c.Count > 0:
			job.Work.Count = c.Count
		case c.Queue != "":
			job.Work.Queue = c.Queue
		case c.S3 != "":
			bucket, prefix, _ := strings.Cut(strings.TrimPrefix(c.S3, "s3://"), "/")
			if !strings.HasPrefix(c.S3, "s3://") || bucket == "" {
				return job, fmt.Errorf("--s3 %q: want s3://BUCKET/PREFIX", c.S3)
			}
			job.Work.S3 = &events.S3Prefix{Bucket: bucket, Prefix: prefix}
		default:
			return job, errors.New("give the work size: --count, --queue or --s3 (or a --file)")
		}
	}
	if c.JobID != "" {
		job.JobID = c.JobID
	}
	if job.JobID == "" {
		job.JobID = "job-" + now.UTC().Format("20060102-150405") + "-" + randomHex(3)
	}
	if job.CorrelationID == "" {
		job.CorrelationID = "corr-" + randomHex(8)
	}
	if job.Time.IsZero() {
		job.Time = now.UTC().Truncate(time.Millisecond)
	}
	if job.SchemaVersion == 0 {
		job.SchemaVersion = events.SchemaVersion
	}
	return job, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// sanitize makes a job id usable in a queue name.
func sanitize(id string) string {
	id = strings.Map(func(r rune) rune {
		if r == '.' {
			return '-'
		}
		return r
	}, id)
	if len(id) > 40 {
		id = id[:40]
	}
	return id + "-" + randomHex(2)
}
