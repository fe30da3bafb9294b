package opsconfig

import "sync/atomic"

// Source is where a stage reads the ops configuration, once per message, so that a
// reload (see pkg/opsload) takes effect without a restart: a fixed *Config, or a *Holder
// whose configuration is replaced while the service runs.
type Source interface {
	// Current returns the configuration in force now. Callers read it once per message
	// and use that one value throughout, never mixing two configurations.
	Current() *Config
}

var (
	_ Source = (*Config)(nil)
	_ Source = (*Holder)(nil)
)

// Current returns c itself: a fixed configuration is its own source.
func (c *Config) Current() *Config { return c }

// Holder holds the configuration in force and lets it be replaced atomically. Replaced
// configurations are never modified: readers may keep the one they got.
type Holder struct {
	p atomic.Pointer[Config]
}

// NewHolder returns a holder of c.
func NewHolder(c *Config) *Holder {
	h := &Holder{}
	h.p.Store(c)
	return h
}

// Current returns the configuration in force.
func (h *Holder) Current() *Config { return h.p.Load() }

// Store puts c in force from the next Current on. c must be valid (Parse validates).
func (h *Holder) Store(c *Config) { h.p.Store(c) }
