package monitor

import (
	"context"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sync/errgroup"

	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/recipe"
	"github.com/sortie-fleet/sortie/pkg/remote"
)

// workloads returns a recipe's start steps with the paths the bootstrapper rendered for
// the job's parameters. An event without parameters (from a bootstrapper older than
// FleetBootstrapped.Params, or a job that passed none) cannot tell a log path that
// references one: such a Log is left empty and only the workload's stderr is tailed.
func workloads(r opsconfig.Recipe, params map[string]string) ([]recipe.Workload, error) {
	if params != nil {
		return recipe.Workloads(r, params)
	}
	var out []recipe.Workload
	for _, s := range r.Steps {
		if s.Kind() != opsconfig.KindStart {
			continue
		}
		log := s.Start.Log
		refs, err := opsconfig.Refs(log)
		if err != nil {
			return nil, fmt.Errorf("step %s: log path: %w", s.Name, err)
		}
		if len(refs) > 0 {
			log = ""
		}
		// A stand-in step with the same name and log path and no parameters renders the
		// paths exactly as the bootstrapper's rendering did.
		stub := opsconfig.Recipe{Steps: []opsconfig.Step{{Name: s.Name, Start: &opsconfig.Start{Argv: []string{"true"}, Log: log}}}}
		w, err := recipe.Workloads(stub, nil)
		if err != nil {
			return nil, fmt.Errorf("step %s: %w", s.Name, err)
		}
		if len(refs) > 0 {
			w[0].Log = ""
		}
		if w[0].StallWindow = recipe.StallWindow(s); w[0].StallWindow > 0 {
			w[0].Signal = s.Start.Progress.Signal
		}
		out = append(out, w[0])
	}
	return out, nil
}

// logPaths returns the workloads' log paths that the reaper archives besides
// recipe.StateRoot: those outside it, relative, without a ".." element and valid in
// JobFinished.Logs, in step order, without repeats, at most events.MaxLogs. A log the
// reaper could not be told (an absolute path) is left to the instance.
func logPaths(wl []recipe.Workload) []string {
	var out []string
	for _, w := range wl {
		p := path.Clean(w.Log)
		switch {
		case w.Log == "", p == recipe.StateRoot, strings.HasPrefix(p, recipe.StateRoot+"/"),
			path.IsAbs(p), p == ".", p == "..", strings.HasPrefix(p, "../"),
			len(p) > events.MaxLogPathBytes, !utf8.ValidString(p), strings.ContainsRune(p, 0),
			slices.Contains(out, p):
			continue
		}
		if len(out) == events.MaxLogs {
			break
		}
		out = append(out, p)
	}
	return out
}

// target is one instance to check and how to log in.
type target struct {
	ID, Endpoint, User string
	HostKey            ssh.PublicKey
	Err                error // why the instance cannot be reached (not verified, no key): a miss
}

// prober checks one instance's workloads. tailLive asks for the tails of live workloads
// too (the job is past its deadline).
type prober interface {
	probe(ctx context.Context, t target, wl []recipe.Workload, tailLive bool) instanceCheck
}

// sshProber checks instances over SSH with the pinned host key.
type sshProber struct {
	signer  ssh.Signer
	timeout time.Duration // per instance: connect, status and tail commands
}

var _ prober = sshProber{}

func (p sshProber) probe(ctx context.Context, t target, wl []recipe.Workload, tailLive bool) instanceCheck {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	c := instanceCheck{ID: t.ID}
	if t.Err != nil {
		c.Err = t.Err
		return c
	}
	conn, err := remote.Dial(ctx, remote.DialConfig{
		Addr:           t.Endpoint,
		User:           t.User,
		Signer:         p.signer,
		HostKey:        t.HostKey,
		ConnectTimeout: min(p.timeout, 5*time.Second),
	})
	if err != nil {
		c.Err = err
		return c
	}
	defer conn.Close()
	for _, w := range wl {
		res, err := conn.Run(ctx, recipe.StatusCommand(w.Step), nil)
		if err == nil && res.ExitCode != 0 {
			err = fmt.Errorf("status of %s exited %d: %s", w.Step, res.ExitCode, strings.Join(remote.Tail(res.Stderr, 3), " / "))
		}
		var st recipe.Status
		if err == nil {
			st, err = recipe.ParseStatus(string(res.Stdout))
		}
		if err != nil {
			c.Err, c.Steps = fmt.Errorf("checking %s on %s: %w", w.Step, t.ID, err), nil
			return c
		}
		s := stepCheck{Step: w.Step, Status: st, LogSize: -1}
		if s.failed() || (tailLive && s.live()) {
			s.Tail = tail(ctx, conn, w)
		}
		if w.StallWindow > 0 && w.Signal == opsconfig.ProgressLog && w.Log != "" && s.live() {
			s.LogSize = logSize(ctx, conn, w.Log)
		}
		c.Steps = append(c.Steps, s)
	}
	return c
}

// logSize is the size of the log at p, or -1 when it cannot be read (no progress is then
// judged at this check).
func logSize(ctx context.Context, conn *remote.Client, p string) int64 {
	res, err := conn.Run(ctx, recipe.SizeCommand(p), nil)
	if err != nil || res.ExitCode != 0 {
		return -1
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(res.Stdout)), 10, 64)
	if err != nil || n < 0 {
		return -1
	}
	return n
}

// tail returns the last lines of the workload's log, or of its stderr when the log is
// empty or unknown. A tail that cannot be read is reported as such, in one line.
func tail(ctx context.Context, conn *remote.Client, w recipe.Workload) []string {
	var problems []string
	for _, p := range []string{w.Log, w.Stderr} {
		if p == "" {
			continue
		}
		res, err := conn.Run(ctx, recipe.TailCommand(p, events.MaxTailLines), nil)
		if err != nil {
			problems = append(problems, fmt.Sprintf("reading %s: %v", p, err))
			continue
		}
		if lines := remote.Tail(res.Stdout, events.MaxTailLines); len(lines) > 0 {
			return lines
		}
		if res.ExitCode != 0 {
			problems = append(problems, fmt.Sprintf("reading %s: %s", p, strings.Join(remote.Tail(res.Stderr, 1), "")))
		}
	}
	if len(problems) > 0 {
		return []string{"sortie monitor: no output: " + strings.Join(problems, "; ")}
	}
	return nil
}

// probeAll checks every instance, at most parallel at once, and returns the checks in
// the order of targets.
func probeAll(ctx context.Context, p prober, targets []target, wl []recipe.Workload, tailLive bool, parallel int) []instanceCheck {
	out := make([]instanceCheck, len(targets))
	var g errgroup.Group
	g.SetLimit(parallel)
	for i, t := range targets {
		g.Go(func() error {
			out[i] = p.probe(ctx, t, wl, tailLive)
			return nil
		})
	}
	_ = g.Wait()
	return out
}
