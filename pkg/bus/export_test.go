package bus

import "time"

// SetMaxTimerDelay shortens SQS's 15-minute delay limit for p and r (either may be nil),
// so tests can exercise timer chaining in seconds.
func SetMaxTimerDelay(p *Publisher, r *Router, d time.Duration) {
	if p != nil {
		p.timers.maxDelay = d
	}
	if r != nil {
		r.timers.maxDelay = d
	}
}

// Heartbeats returns how many messages r's heartbeats are keeping hidden right now.
func Heartbeats(r *Router) int64 { return r.heartbeats.Load() }
