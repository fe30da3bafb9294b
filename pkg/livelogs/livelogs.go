// Package livelogs streams the workload logs of a job's running instances over SSH, every
// line prefixed by its instance as `kubectl logs -f` prefixes several pods' lines, until
// each workload exits; a log whose instance goes away while it is followed is finished
// from the instance's archive.
package livelogs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/recipe"
	"github.com/sortie-fleet/sortie/pkg/remote"
)

// Instance is one instance to follow and how to log in to it.
type Instance struct {
	ID      string
	Addr    string // host:port
	User    string
	HostKey ssh.PublicKey // pinned; required
}

// ArchiveFunc prints an instance's log file from its archive, from line from (1-based).
type ArchiveFunc func(ctx context.Context, instanceID, file string, from int, w io.Writer) error

// Config is how to follow.
type Config struct {
	Signer ssh.Signer // the login key
	Tail   int        // > 0: start with the last Tail lines of each log; otherwise every line
	Out    io.Writer  // prefixed lines, written whole, one at a time
	// Archive, when set, finishes a log whose instance went away while it was followed.
	Archive ArchiveFunc
	// DialTimeout bounds reaching one instance (default 30 s).
	DialTimeout time.Duration
}

// Follow follows every instance's workload logs at once and returns when each has ended:
// its workload exited (its log is complete), or its instance was lost and the archive
// printed the rest. Problems with one instance are printed as its lines and returned
// joined; the others are followed regardless.
func Follow(ctx context.Context, cfg Config, instances []Instance) error {
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 30 * time.Second
	}
	out := &lockedWriter{w: cfg.Out}
	var wg sync.WaitGroup
	errs := make([]error, len(instances))
	for i, in := range instances {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = followInstance(ctx, cfg, out, in)
			if errs[i] != nil && ctx.Err() == nil {
				out.line("["+in.ID+"] ", "sortie: "+errs[i].Error())
			}
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.Join(errs...)
}

func followInstance(ctx context.Context, cfg Config, out *lockedWriter, in Instance) error {
	dctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	c, err := remote.Dial(dctx, remote.DialConfig{Addr: in.Addr, User: in.User, Signer: cfg.Signer, HostKey: in.HostKey})
	cancel()
	if err != nil {
		return fmt.Errorf("reaching %s: %w", in.ID, err)
	}
	defer c.Close()
	res, err := c.Run(ctx, recipe.FollowedStepsCommand(), nil)
	if err != nil {
		return fmt.Errorf("listing the workloads of %s: %w", in.ID, err)
	}
	steps := strings.Fields(string(res.Stdout))
	if len(steps) == 0 {
		return fmt.Errorf("%s has no workload log to follow (not started yet, or bootstrapped by a Sortie that did not record it)", in.ID)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(steps))
	for i, step := range steps {
		prefix := "[" + in.ID + "] "
		if len(steps) > 1 {
			prefix = "[" + in.ID + "/" + step + "] "
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = followStep(ctx, cfg, c, out, in.ID, step, prefix)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func followStep(ctx context.Context, cfg Config, c *remote.Client, out *lockedWriter, id, step, prefix string) error {
	res, err := c.Run(ctx, "cat "+shellQuote(recipe.LogRecordPath(step)), nil)
	if err != nil || res.ExitCode != 0 {
		return fmt.Errorf("reading the log path of step %s on %s: %v", step, id, errOr(err, res))
	}
	file := strings.TrimSpace(string(res.Stdout))
	lw := &lineWriter{prefix: prefix, out: out}
	res, err = c.Stream(ctx, recipe.FollowCommand(step, cfg.Tail), nil, lw)
	lw.flush()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	switch {
	case err == nil && res.Signal == "" && res.ExitCode == 0:
		return nil // the workload exited: its log is complete
	case err == nil && res.Signal == "":
		return fmt.Errorf("reading %s on %s: %v", file, id, errOr(nil, res))
	}
	// The connection dropped or the follower was killed: the instance is going away.
	lost := err
	if lost == nil {
		lost = fmt.Errorf("killed by signal %s", res.Signal)
	}
	if cfg.Archive == nil || lw.start == 0 {
		return fmt.Errorf("following %s on %s: %v", file, id, lost)
	}
	from := lw.start + lw.lines
	// The note goes out only when the archive has lines the stream did not show: an
	// instance reaped just as its workload ended lost nothing.
	note := fmt.Sprintf("sortie: lost %s (%v): the rest of %s from its archive, from line %d", id, lost, file, from)
	aw := &lineWriter{prefix: prefix, out: out, started: true, note: note}
	err = cfg.Archive(ctx, id, file, from, aw)
	aw.flush()
	return err
}

func errOr(err error, res remote.Result) error {
	if err != nil {
		return err
	}
	msg := strings.TrimSpace(string(res.Stderr))
	if msg == "" {
		msg = "no message"
	}
	return fmt.Errorf("exit status %d: %s", res.ExitCode, msg)
}

// shellQuote quotes a path from recipe (which never holds a quote).
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// lockedWriter writes whole prefixed lines from several streams.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) line(prefix, s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	io.WriteString(l.w, prefix+s+"\n")
}

// lineWriter cuts a stream into lines, reads FollowCommand's first line (the number of
// the first line shown) and passes the others on, prefixed.
type lineWriter struct {
	prefix  string
	out     *lockedWriter
	buf     []byte
	started bool   // the start line was read (or there is none)
	start   int    // the log's line number of the first line shown
	lines   int    // log lines passed on
	note    string // printed before the first line passed on, if any
}

// maxLine bounds a line held while waiting for its end; a longer one is passed on in parts.
const maxLine = 64 << 10

func (w *lineWriter) Write(b []byte) (int, error) {
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			if len(w.buf) > maxLine {
				w.emit(string(w.buf))
				w.buf = w.buf[:0]
			}
			return len(b), nil
		}
		w.emit(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
}

func (w *lineWriter) emit(l string) {
	if !w.started {
		w.started = true
		if n, ok := strings.CutPrefix(l, recipe.FollowStart+" "); ok {
			w.start, _ = strconv.Atoi(n)
			return
		}
	}
	if w.note != "" {
		w.out.line(w.prefix, w.note)
		w.note = ""
	}
	w.lines++
	w.out.line(w.prefix, l)
}

// flush passes on a last line without its newline.
func (w *lineWriter) flush() {
	if len(w.buf) > 0 {
		w.emit(string(w.buf))
		w.buf = nil
	}
}
