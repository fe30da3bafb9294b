// Package remote runs commands and uploads files on instances over SSH with pinned host keys.
package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v5"
	"golang.org/x/crypto/ssh"
)

// Errors a caller must tell apart from "not reachable yet". Dial returns them
// at once, without retrying.
var (
	// ErrHostKeyMismatch: the server presented a host key other than the pinned one.
	ErrHostKeyMismatch = errors.New("ssh host key mismatch")
	// ErrAuth: the server refused the client key.
	ErrAuth = errors.New("ssh authentication refused")
)

// DialConfig says where to connect, as whom, and which host key to expect.
type DialConfig struct {
	Addr           string        // host:port
	User           string        // login user
	Signer         ssh.Signer    // client key
	HostKey        ssh.PublicKey // required: the pinned host key; there is no accept-any mode (nil → error)
	ConnectTimeout time.Duration // per attempt: the TCP connect, default DefaultConnectTimeout
	// HandshakeTimeout bounds the SSH handshake of one attempt (key exchange and
	// authentication), default DefaultHandshakeTimeout: generous, because a loaded server or
	// client (hundreds of handshakes on a small task) is slow, not gone. No deadline
	// outlives the handshake.
	HandshakeTimeout time.Duration
	// Gate, if set, bounds the handshakes in flight and adapts the bound to how fast they
	// complete (shared by every Dial of a fleet).
	Gate *Gate
	// Backoff makes the retry policy for unreachable hosts, one per Dial
	// (a backoff.BackOff is stateful, so a shared DialConfig holds a factory).
	// Default: DefaultBackoff. Retries stop when ctx ends.
	Backoff func() backoff.BackOff
	// OnRetry, if set, is told about every failed attempt that will be retried.
	OnRetry func(err error, next time.Duration)
}

// Default timeouts of one dial attempt.
const (
	DefaultConnectTimeout   = 5 * time.Second
	DefaultHandshakeTimeout = 30 * time.Second
)

// DefaultBackoff is exponential from 100ms, capped at 2s between attempts,
// with no limit of its own: the caller's context bounds the retries.
func DefaultBackoff() backoff.BackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 100 * time.Millisecond
	b.MaxInterval = 2 * time.Second
	return b
}

func (cfg DialConfig) validate() error {
	var problems []error
	if cfg.Addr == "" {
		problems = append(problems, errors.New("Addr is required"))
	}
	if cfg.User == "" {
		problems = append(problems, errors.New("User is required"))
	}
	if cfg.Signer == nil {
		problems = append(problems, errors.New("Signer is required"))
	}
	if cfg.HostKey == nil {
		problems = append(problems, errors.New("HostKey is required: host keys are always pinned"))
	}
	if cfg.ConnectTimeout < 0 {
		problems = append(problems, errors.New("ConnectTimeout must not be negative"))
	}
	if cfg.HandshakeTimeout < 0 {
		problems = append(problems, errors.New("HandshakeTimeout must not be negative"))
	}
	return errors.Join(problems...)
}

// Client is an SSH connection to one instance. It is safe for concurrent use:
// every Run and Upload opens its own session.
type Client struct {
	c    *ssh.Client
	addr string
}

// Dial connects to cfg.Addr, verifying the server against the pinned host key.
// Refused connections, timeouts and connections dropped during the handshake
// are retried with backoff until ctx ends; a host key mismatch (ErrHostKeyMismatch),
// a refused key (ErrAuth) or any other protocol error is returned at once.
func Dial(ctx context.Context, cfg DialConfig) (*Client, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("dialing ssh %s: %w", cfg.Addr, err)
	}
	timeouts := attemptTimeouts{connect: cfg.ConnectTimeout, handshake: cfg.HandshakeTimeout}
	if timeouts.connect == 0 {
		timeouts.connect = DefaultConnectTimeout
	}
	if timeouts.handshake == 0 {
		timeouts.handshake = DefaultHandshakeTimeout
	}
	newBackoff := cfg.Backoff
	if newBackoff == nil {
		newBackoff = DefaultBackoff
	}
	pinned := cfg.HostKey.Marshal()
	ccfg := &ssh.ClientConfig{
		User: cfg.User,
		Auth: []ssh.AuthMethod{ssh.PublicKeys(cfg.Signer)},
		HostKeyCallback: func(_ string, _ net.Addr, key ssh.PublicKey) error {
			if !bytes.Equal(key.Marshal(), pinned) {
				return fmt.Errorf("%w: server presented %s %s, pinned %s %s", ErrHostKeyMismatch,
					key.Type(), Fingerprint(key), cfg.HostKey.Type(), Fingerprint(cfg.HostKey))
			}
			return nil
		},
		// Ask for the pinned key's algorithm: a server with several host keys
		// (a stock sshd has RSA, ECDSA and Ed25519) must present that one.
		HostKeyAlgorithms: hostKeyAlgorithms(cfg.HostKey),
	}

	start := time.Now()
	attempts := 0
	var last error
	c, err := backoff.Retry(ctx, func() (*ssh.Client, error) {
		attempts++
		c, err := dialOnce(ctx, cfg.Addr, ccfg, timeouts, cfg.Gate)
		if err != nil {
			if ctx.Err() != nil {
				// Cut short by the caller's context: no attempt's verdict, and no retry. The
				// error names the last attempt that ran its course.
				if last == nil {
					last = err
				}
				return nil, backoff.Permanent(context.Cause(ctx))
			}
			last = err
			if !retryable(err) {
				return nil, backoff.Permanent(err)
			}
		}
		return c, err
	},
		backoff.WithBackOff(newBackoff()),
		backoff.WithMaxElapsedTime(0),
		backoff.WithNotify(func(err error, next time.Duration) {
			if cfg.OnRetry != nil {
				cfg.OnRetry(err, next)
			}
		}),
	)
	if err != nil {
		if last != nil && !errors.Is(err, last) {
			// ctx ended between attempts: say why, and what the last attempt saw.
			err = fmt.Errorf("%w (last attempt: %w)", err, last)
		}
		return nil, fmt.Errorf("dialing ssh %s@%s (%d attempts in %s): %w",
			cfg.User, cfg.Addr, attempts, time.Since(start).Round(time.Millisecond), err)
	}
	return &Client{c: c, addr: cfg.Addr}, nil
}

// attemptTimeouts bound one dial attempt.
type attemptTimeouts struct{ connect, handshake time.Duration }

// errHandshakeDeadline: the handshake completed, but only as its deadline passed, so the
// transport's reader may already have seen the deadline and the connection is not usable.
var errHandshakeDeadline = fmt.Errorf("ssh handshake completed at its deadline: %w", os.ErrDeadlineExceeded)

// dialOnce makes one attempt: the TCP connect bounded by t.connect and the SSH handshake
// by t.handshake, both by ctx. The handshake's deadline is cleared before the connection
// is handed out; a connection whose deadline may have fired under the transport's reader
// (the handshake finished just as it expired) is closed and reported as a timeout, so the
// caller redials instead of getting a dead connection.
func dialOnce(ctx context.Context, addr string, ccfg *ssh.ClientConfig, t attemptTimeouts, gate *Gate) (_ *ssh.Client, err error) {
	dialCtx, cancelDial := context.WithTimeout(ctx, t.connect)
	var d net.Dialer
	conn, err := d.DialContext(dialCtx, "tcp", addr)
	cancelDial()
	if err != nil {
		return nil, err
	}
	// Only the handshake passes the gate: an instance still booting (refused or silent
	// connects) says nothing about how loaded the handshakes are.
	if gate != nil {
		if err := gate.Acquire(ctx); err != nil {
			conn.Close()
			return nil, err
		}
		t0 := time.Now()
		defer func() { gate.Release(time.Since(t0), err) }()
	}
	hsCtx, cancel := context.WithTimeout(ctx, t.handshake)
	defer cancel()
	deadline, _ := hsCtx.Deadline()
	_ = conn.SetDeadline(deadline)
	fired := make(chan struct{})
	stop := context.AfterFunc(hsCtx, func() {
		defer close(fired)
		_ = conn.SetDeadline(time.Now())
	})
	sc, chans, reqs, err := ssh.NewClientConn(conn, addr, ccfg)
	if !stop() {
		// The AfterFunc started: wait until it has set its deadline, so that clearing
		// below cannot be undone by it.
		<-fired
		if err == nil {
			err = errHandshakeDeadline
			sc.Close()
		}
	}
	if err != nil {
		conn.Close()
		if strings.Contains(err.Error(), "ssh: unable to authenticate") {
			// x/crypto/ssh has no typed error for this.
			return nil, fmt.Errorf("%w: %w", ErrAuth, err)
		}
		if hsCtx.Err() != nil && !errors.Is(err, ErrHostKeyMismatch) {
			return nil, fmt.Errorf("ssh handshake: %w: %w", context.Cause(hsCtx), err)
		}
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	if !time.Now().Before(deadline) {
		// Cleared too late: the reader may have timed out in between.
		sc.Close()
		return nil, errHandshakeDeadline
	}
	return ssh.NewClient(sc, chans, reqs), nil
}

// retryable reports whether err means "not reachable (yet)": refused, reset,
// unreachable, timed out, or closed during the handshake while sshd starts.
func retryable(err error) bool {
	switch {
	case errors.Is(err, ErrHostKeyMismatch), errors.Is(err, ErrAuth):
		return false
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.ECONNABORTED), errors.Is(err, syscall.EPIPE),
		errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH),
		errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return true
	}
	var nerr net.Error
	if errors.As(err, &nerr) && nerr.Timeout() {
		return true
	}
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// hostKeyAlgorithms lists the signature algorithms that present key.
func hostKeyAlgorithms(key ssh.PublicKey) []string {
	if key.Type() == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	}
	return []string{key.Type()}
}

// Close closes the connection and every session on it.
func (c *Client) Close() error { return c.c.Close() }

// Fingerprint is key's SHA256 fingerprint as OpenSSH prints it ("SHA256:…").
func Fingerprint(k ssh.PublicKey) string { return ssh.FingerprintSHA256(k) }
