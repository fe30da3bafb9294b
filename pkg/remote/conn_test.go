package remote_test

import (
	"context"
	"errors"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/remote"
)

// TestConnectionErrors: errors the connection causes are told apart from the command's,
// and a command that never started says so.
func TestConnectionErrors(t *testing.T) {
	in := startInstance(t, "")
	tests := []struct {
		name           string
		cmd            string
		fail           func(c *remote.Client, p *cloudtest.Proxy)
		wantNotStarted bool
	}{
		{name: "connection closed before the command", cmd: "echo hi", fail: func(c *remote.Client, _ *cloudtest.Proxy) { c.Close() }, wantNotStarted: true},
		{name: "connection cut during the command", cmd: "echo started; sleep 30", fail: func(_ *remote.Client, p *cloudtest.Proxy) { p.Cut() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := cloudtest.StartProxy(t, in.cfg.Addr)
			cfg := in.cfg
			cfg.Addr = p.Addr
			c := dial(t, cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if tt.wantNotStarted {
				tt.fail(c, p)
			} else {
				// Cut once the command runs: the file it writes first exists.
				done := make(chan struct{})
				go func() {
					defer close(done)
					res, err := c.Run(ctx, `echo x > running; `+tt.cmd, nil)
					checkConnErr(t, res, err, false)
				}()
				cloudtest.Eventually(t, 10*time.Second, func() error {
					_, err := os.Stat(in.dir + "/running")
					return err
				})
				tt.fail(c, p)
				<-done
				return
			}
			res, err := c.Run(ctx, tt.cmd, nil)
			checkConnErr(t, res, err, true)
		})
	}
}

func checkConnErr(t *testing.T, res remote.Result, err error, wantNotStarted bool) {
	t.Helper()
	if !errors.Is(err, remote.ErrConnection) {
		t.Errorf("Run = %+v, %v; want ErrConnection", res, err)
	}
	if errors.Is(err, remote.ErrNotStarted) != wantNotStarted {
		t.Errorf("errors.Is(%v, ErrNotStarted) = %v, want %v", err, !wantNotStarted, wantNotStarted)
	}
}

// TestHandshakeDeadlineDoesNotOutliveHandshake: once Dial returns, the handshake's
// deadline no longer applies to the connection.
func TestHandshakeDeadlineDoesNotOutliveHandshake(t *testing.T) {
	in := startInstance(t, "")
	cfg := in.cfg
	cfg.HandshakeTimeout = time.Second // short, but enough for a loaded machine (attempts are retried)
	c := dial(t, cfg)
	time.Sleep(cfg.HandshakeTimeout + 200*time.Millisecond) // past the last handshake's deadline
	res, err := c.Run(context.Background(), "echo alive", nil)
	if err != nil || string(res.Stdout) != "alive\n" {
		t.Fatalf("Run after the handshake deadline: %q, %v", res.Stdout, err)
	}
}

// TestHandshakeTimeoutRetried: a server that accepts but never speaks times each attempt
// out, and the attempts are retried until the context ends.
func TestHandshakeTimeoutRetried(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // silent until the test ends
		}
	}()
	cfg := startInstance(t, "").cfg
	cfg.Addr = ln.Addr().String()
	cfg.HandshakeTimeout = 100 * time.Millisecond
	var retries atomic.Int32
	cfg.OnRetry = func(error, time.Duration) { retries.Add(1) }
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	_, err = remote.Dial(ctx, cfg)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %v, want the deadline", err)
	}
	if retries.Load() < 2 {
		t.Errorf("%d retries, want several timed-out handshakes retried", retries.Load())
	}
}

// TestGate: the gate admits its limit, narrows on slow handshakes once per wave, widens on
// fast ones and never goes below its minimum.
func TestGate(t *testing.T) {
	g := remote.NewGate(2, 8, time.Second)
	ctx := context.Background()
	for range 8 {
		if err := g.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := g.Acquire(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ninth Acquire: %v, want to wait until the deadline", err)
	}
	for range 8 { // one wave of slow handshakes: one cut
		g.Release(2*time.Second, nil)
	}
	if got := g.Limit(); got != 6 {
		t.Errorf("limit after a slow wave = %d, want 6", got)
	}
	for range 10 { // slow, one after the other: a cut each, down to the minimum
		if err := g.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
		g.Release(0, os.ErrDeadlineExceeded)
	}
	if got := g.Limit(); got != 2 {
		t.Errorf("limit after timeouts = %d, want the minimum 2", got)
	}
	for range 3 {
		if err := g.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
		g.Release(10*time.Millisecond, nil)
	}
	if got := g.Limit(); got != 5 {
		t.Errorf("limit after 3 fast handshakes = %d, want 5", got)
	}
}

// TestGateSkipsUnreachableHosts: connects that fail (an instance still booting) neither
// hold the gate nor narrow it; only handshakes do.
func TestGateSkipsUnreachableHosts(t *testing.T) {
	g := remote.NewGate(1, 4, time.Second)
	cfg := startInstance(t, "").cfg
	cfg.Addr = cloudtest.FreeAddr(t) // nothing listens: refused
	cfg.Gate = g
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if _, err := remote.Dial(ctx, cfg); err == nil {
		t.Fatal("Dial to a closed port succeeded")
	}
	if got := g.Limit(); got != 4 {
		t.Errorf("limit %d after refused connects, want 4 (unchanged)", got)
	}
	for range 4 { // every slot is free
		short, cancel := context.WithTimeout(context.Background(), time.Second)
		err := g.Acquire(short)
		cancel()
		if err != nil {
			t.Fatalf("a slot is held after refused connects: %v", err)
		}
	}
}
