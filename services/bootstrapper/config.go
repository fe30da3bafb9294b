package bootstrapper

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/recipe"
	"github.com/sortie-fleet/sortie/pkg/remote"
	"github.com/sortie-fleet/sortie/pkg/service"
	"github.com/sortie-fleet/sortie/pkg/sshkey"
)

// Defaults of the bootstrapper's settings.
const (
	// DefaultConcurrency 0 bootstraps a whole fleet at once (handshakes pass an adaptive
	// gate that narrows when they slow down).
	DefaultConcurrency      = 0
	DefaultDialTimeout      = 2 * time.Minute
	DefaultHandshakeTimeout = remote.DefaultHandshakeTimeout
	DefaultStepTimeout      = 10 * time.Minute
	// DefaultHostKeyTimeout is how long an instance that makes its own host key may take
	// to show it in its console output (EC2 publishes the output minutes after boot).
	DefaultHostKeyTimeout = 10 * time.Minute
	// MaxConcurrency is the largest fleet a template allows.
	MaxConcurrency = opsconfig.MaxInstances
)

// Config is the bootstrapper's configuration, read from the environment.
type Config struct {
	service.Base
	// SSHKey is where the instances' login key is read from once at start: a file path or
	// s3://bucket/key (SORTIE_SSH_KEY, required).
	SSHKey string
	// Concurrency bounds the instances bootstrapped at once per fleet; 0 means the whole
	// fleet (SORTIE_BOOTSTRAP_CONCURRENCY, default 0).
	Concurrency int
	// DialTimeout is how long an instance may stay unreachable before it is reported
	// failed (SORTIE_BOOTSTRAP_DIAL_TIMEOUT, default 2m).
	DialTimeout time.Duration
	// HandshakeTimeout bounds one SSH handshake attempt (SORTIE_BOOTSTRAP_HANDSHAKE_TIMEOUT,
	// default 30s: a loaded instance or bootstrapper is slow, not gone).
	HandshakeTimeout time.Duration
	// StepTimeout bounds one recipe step (SORTIE_BOOTSTRAP_STEP_TIMEOUT, default 10m).
	StepTimeout time.Duration
	// HostKeyTimeout bounds the wait for the host key block in the console output of an
	// instance of a template with host_keys: instance (SORTIE_BOOTSTRAP_HOSTKEY_TIMEOUT,
	// default 10m); the instance fails with the reason when it never appears.
	HostKeyTimeout time.Duration
	// Fetcher is the download tool fetch steps run on the instances: curl or wget
	// (SORTIE_BOOTSTRAP_FETCHER, default curl).
	Fetcher string
	// MaxHandle is how long the router keeps a FleetLaunched hidden while its bootstrap
	// runs (SORTIE_BOOTSTRAP_MAX_HANDLE, default bus.DefaultMaxHandle, 15m). A bootstrap
	// that outlives it gets its message delivered again, which waits for the running
	// bootstrap (the ledger's claim) instead of starting a second one.
	MaxHandle time.Duration
	// PollWait is the SQS long poll (SORTIE_POLL_WAIT, 1-20 s, default 20 s). Emulators do
	// not wake a poll when a message becomes visible again: keep it short there.
	PollWait time.Duration
}

// ConfigFromEnv reads the configuration from SORTIE_* variables, with defaults, and
// validates it.
func ConfigFromEnv() (Config, error) {
	cfg := Config{
		Base:    service.BaseFromEnv(),
		SSHKey:  os.Getenv("SORTIE_SSH_KEY"),
		Fetcher: service.Getenv("SORTIE_BOOTSTRAP_FETCHER", recipe.FetcherCurl),
	}
	var errs []error
	var err error
	if cfg.Concurrency, err = intEnv("SORTIE_BOOTSTRAP_CONCURRENCY", DefaultConcurrency); err != nil {
		errs = append(errs, err)
	}
	if cfg.DialTimeout, err = service.DurationEnv("SORTIE_BOOTSTRAP_DIAL_TIMEOUT", DefaultDialTimeout); err != nil {
		errs = append(errs, err)
	}
	if cfg.HandshakeTimeout, err = service.DurationEnv("SORTIE_BOOTSTRAP_HANDSHAKE_TIMEOUT", DefaultHandshakeTimeout); err != nil {
		errs = append(errs, err)
	}
	if cfg.StepTimeout, err = service.DurationEnv("SORTIE_BOOTSTRAP_STEP_TIMEOUT", DefaultStepTimeout); err != nil {
		errs = append(errs, err)
	}
	if cfg.HostKeyTimeout, err = service.DurationEnv("SORTIE_BOOTSTRAP_HOSTKEY_TIMEOUT", DefaultHostKeyTimeout); err != nil {
		errs = append(errs, err)
	}
	if cfg.MaxHandle, err = service.DurationEnv("SORTIE_BOOTSTRAP_MAX_HANDLE", bus.DefaultMaxHandle); err != nil {
		errs = append(errs, err)
	}
	if cfg.PollWait, err = service.DurationEnv("SORTIE_POLL_WAIT", bus.DefaultWaitTime); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return cfg, err
	}
	return cfg, cfg.Validate()
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	errs := []error{c.Base.Validate()}
	if _, err := sshkey.ParseSource(c.SSHKey); err != nil {
		errs = append(errs, fmt.Errorf("SORTIE_SSH_KEY: %w", err))
	}
	if c.Concurrency < 0 || c.Concurrency > MaxConcurrency {
		errs = append(errs, fmt.Errorf("SORTIE_BOOTSTRAP_CONCURRENCY: %d: want 0 (the whole fleet) to %d", c.Concurrency, MaxConcurrency))
	}
	if c.HandshakeTimeout <= 0 {
		errs = append(errs, fmt.Errorf("SORTIE_BOOTSTRAP_HANDSHAKE_TIMEOUT: %s: want > 0", c.HandshakeTimeout))
	}
	if c.DialTimeout <= 0 {
		errs = append(errs, fmt.Errorf("SORTIE_BOOTSTRAP_DIAL_TIMEOUT: %s: want > 0", c.DialTimeout))
	}
	if c.StepTimeout <= 0 {
		errs = append(errs, fmt.Errorf("SORTIE_BOOTSTRAP_STEP_TIMEOUT: %s: want > 0", c.StepTimeout))
	}
	if c.HostKeyTimeout <= 0 {
		errs = append(errs, fmt.Errorf("SORTIE_BOOTSTRAP_HOSTKEY_TIMEOUT: %s: want > 0", c.HostKeyTimeout))
	}
	if c.MaxHandle < 0 || (c.MaxHandle > 0 && c.MaxHandle < time.Second) {
		errs = append(errs, fmt.Errorf("SORTIE_BOOTSTRAP_MAX_HANDLE: %s: want at least 1s", c.MaxHandle))
	}
	if c.PollWait != 0 && (c.PollWait < time.Second || c.PollWait > 20*time.Second || c.PollWait%time.Second != 0) {
		errs = append(errs, fmt.Errorf("SORTIE_POLL_WAIT: %s: want whole seconds, 1s-20s", c.PollWait))
	}
	if c.Fetcher != recipe.FetcherCurl && c.Fetcher != recipe.FetcherWget {
		errs = append(errs, fmt.Errorf("SORTIE_BOOTSTRAP_FETCHER: %q: want %s or %s", c.Fetcher, recipe.FetcherCurl, recipe.FetcherWget))
	}
	return errors.Join(errs...)
}

// WithDefaults fills the zero fields of a Config built in code (by `sortie dev`, tests).
func (c Config) WithDefaults() Config {
	if c.Prefix == "" {
		c.Prefix = "sortie"
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.StepTimeout == 0 {
		c.StepTimeout = DefaultStepTimeout
	}
	if c.HostKeyTimeout == 0 {
		c.HostKeyTimeout = DefaultHostKeyTimeout
	}
	if c.Fetcher == "" {
		c.Fetcher = recipe.FetcherCurl
	}
	return c
}

func intEnv(key string, def int) (int, error) {
	v := os.Getenv(key)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not an integer", key, v)
	}
	return n, nil
}
