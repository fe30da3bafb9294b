package remote

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"time"
)

// DefaultSlowHandshake is the handshake duration above which a Gate narrows.
const DefaultSlowHandshake = 2 * time.Second

// Gate bounds the SSH handshakes in flight and adapts the bound to how fast they complete
// (additive increase, multiplicative decrease): it starts wide, so a fleet is dialled at
// once, and narrows when handshakes slow down (the client or the servers are saturated),
// so handshakes finish instead of piling up towards their timeouts. One Gate is shared by
// every Dial of a fleet; the zero value is not usable (NewGate).
type Gate struct {
	mu       sync.Mutex
	limit    float64
	min, max int
	slow     time.Duration
	inflight int
	lastCut  time.Time     // when the limit last narrowed
	changed  chan struct{} // closed and replaced whenever a slot frees or the limit changes
}

// NewGate returns a gate admitting max handshakes at first, never fewer than min (≥ 1),
// narrowing by a quarter after a handshake slower than slow (DefaultSlowHandshake when 0)
// or timed out, widening by one after each fast one. Handshakes that started before the
// last narrowing do not narrow it again: a wave of slow handshakes admitted together is
// one signal, not a hundred.
func NewGate(min, max int, slow time.Duration) *Gate {
	min = max1(min)
	if max < min {
		max = min
	}
	if slow <= 0 {
		slow = DefaultSlowHandshake
	}
	return &Gate{limit: float64(max), min: min, max: max, slow: slow, changed: make(chan struct{})}
}

func max1(n int) int {
	if n < 1 {
		return 1
	}
	return n
}

// Limit is the number of handshakes the gate admits at once now.
func (g *Gate) Limit() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return int(g.limit)
}

// Acquire waits for a slot, or returns ctx's error.
func (g *Gate) Acquire(ctx context.Context) error {
	for {
		g.mu.Lock()
		if g.inflight < int(g.limit) {
			g.inflight++
			g.mu.Unlock()
			return nil
		}
		ch := g.changed
		g.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

// Release frees the slot of an attempt that took d and ended with err, and adapts the limit.
func (g *Gate) Release(d time.Duration, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.inflight--
	switch {
	case d > g.slow || (err != nil && isTimeout(err)):
		now := time.Now()
		if now.Add(-d).After(g.lastCut) {
			g.limit = max(float64(g.min), g.limit*0.75)
			g.lastCut = now
		}
	case err == nil:
		g.limit = min(float64(g.max), g.limit+1)
	}
	close(g.changed)
	g.changed = make(chan struct{})
}

// isTimeout reports whether err is a deadline or timeout.
func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var nerr net.Error
	return errors.As(err, &nerr) && nerr.Timeout()
}
