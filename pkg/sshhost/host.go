// Package sshhost runs an embedded SSH server that stands in for one EC2 instance's sshd.
package sshhost

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
)

// Config describes one host.
type Config struct {
	HostKey        ssh.Signer      // required: the instance's host key
	AuthorizedKeys []ssh.PublicKey // public keys allowed to log in (any user name); empty → nobody can log in
	Dir            string          // required: the instance's directory: HOME and working directory of every command (created if missing)
	Env            []string        // extra environment for every command ("K=V"), e.g. AWS_ENDPOINT_URL and temporary credentials
	Addr           string          // listen address, default "127.0.0.1:0"
	Logger         *slog.Logger    // optional
	// OnExec, when set, is called with every exec request's command exactly as received,
	// before it runs: an audit hook (sshd logs the same at LogLevel VERBOSE), and how
	// tests assert on the exact command a client sent.
	OnExec func(command string)
}

const (
	// handshakeTimeout bounds how long an unauthenticated connection may hold a slot.
	handshakeTimeout = 30 * time.Second
	// killWait bounds how long Close waits for killed process groups to disappear.
	killWait = 5 * time.Second
)

// Host is a running SSH endpoint. Its only goroutine while idle is the accept loop.
//
// Every command runs as `/bin/sh -c COMMAND` (a "shell" request runs /bin/sh
// reading stdin; there is no pty) in its own process group, with the
// instance's directory as HOME and working directory. Process groups are how
// Close finds what to kill: a workload that leaves its group (setsid,
// setpgid) escapes it, as it would escape a session on a real instance.
type Host struct {
	dir        string
	env        []string
	authorized [][]byte // wire-format authorized keys
	ln         net.Listener
	srv        *ssh.ServerConfig
	log        *slog.Logger
	onExec     func(command string)

	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
	groups map[int]*procGroup // by process group id

	wg        sync.WaitGroup // accept loop, connections, sessions, commands
	closeOnce sync.Once
	closeErr  error
}

// procGroup is the process group of one command. It outlives the command's
// shell while detached children (nohup … &) keep it populated.
type procGroup struct {
	leaderReaped bool // the command's /bin/sh has exited and been waited for
}

// Start validates cfg, listens and serves in the background until Close.
func Start(cfg Config) (*Host, error) {
	var problems []error
	if cfg.HostKey == nil {
		problems = append(problems, errors.New("HostKey is required"))
	}
	if cfg.Dir == "" {
		problems = append(problems, errors.New("Dir is required"))
	}
	for _, kv := range cfg.Env {
		if !validEnv(kv) {
			problems = append(problems, fmt.Errorf("Env entry %q is not NAME=VALUE", kv))
		}
	}
	if err := errors.Join(problems...); err != nil {
		return nil, fmt.Errorf("configuring ssh host: %w", err)
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("resolving host dir %s: %w", cfg.Dir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating host dir: %w", err)
	}
	addr := cfg.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	h := &Host{
		dir:    dir,
		env:    append([]string(nil), cfg.Env...),
		log:    log,
		onExec: cfg.OnExec,
		conns:  map[net.Conn]struct{}{},
	}
	for _, k := range cfg.AuthorizedKeys {
		if k != nil {
			h.authorized = append(h.authorized, k.Marshal())
		}
	}
	h.srv = &ssh.ServerConfig{
		PublicKeyCallback: h.checkKey,
		ServerVersion:     "SSH-2.0-sortie_sshhost",
	}
	h.srv.AddHostKey(cfg.HostKey)

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", addr, err)
	}
	h.ln = ln
	h.log = log.With("ssh_addr", ln.Addr().String())
	h.wg.Add(1)
	go h.serve()
	return h, nil
}

// Addr is the address the host listens on, e.g. "127.0.0.1:40123".
func (h *Host) Addr() string { return h.ln.Addr().String() }

// checkKey admits exactly the authorized keys, comparing wire encodings in
// constant time. Every other auth method is rejected because the server
// config defines no other callback.
func (h *Host) checkKey(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
	got := key.Marshal()
	match := 0
	for _, k := range h.authorized {
		match |= subtle.ConstantTimeCompare(k, got)
	}
	if match != 1 {
		return nil, fmt.Errorf("public key %s is not authorized for %s", ssh.FingerprintSHA256(key), meta.User())
	}
	return &ssh.Permissions{Extensions: map[string]string{"pubkey-fp": ssh.FingerprintSHA256(key)}}, nil
}

func (h *Host) serve() {
	defer h.wg.Done()
	var delay time.Duration
	for {
		c, err := h.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Typically EMFILE: back off instead of spinning.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			h.log.Warn("accepting ssh connection", "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		h.mu.Lock()
		if h.closed {
			h.mu.Unlock()
			c.Close()
			return
		}
		h.conns[c] = struct{}{}
		h.wg.Add(1)
		h.mu.Unlock()
		go h.handleConn(c)
	}
}

func (h *Host) handleConn(c net.Conn) {
	defer h.wg.Done()
	defer func() {
		h.mu.Lock()
		delete(h.conns, c)
		h.mu.Unlock()
		c.Close()
	}()

	_ = c.SetDeadline(time.Now().Add(handshakeTimeout))
	sc, chans, reqs, err := ssh.NewServerConn(c, h.srv)
	if err != nil {
		h.log.Debug("ssh handshake", "remote", c.RemoteAddr().String(), "err", err)
		return
	}
	_ = c.SetDeadline(time.Time{})
	log := h.log.With("user", sc.User(), "remote", c.RemoteAddr().String())
	log.Debug("ssh login", "key", sc.Permissions.Extensions["pubkey-fp"])

	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		ssh.DiscardRequests(reqs) // keepalives and forwarding requests get "no"
	}()
	for nc := range chans {
		if nc.ChannelType() != "session" {
			_ = nc.Reject(ssh.UnknownChannelType, "only session channels are supported")
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			log.Debug("accepting session channel", "err", err)
			continue
		}
		s := &session{h: h, conn: sc, ch: ch, log: log}
		h.wg.Add(1)
		go s.serve(creqs)
	}
	sc.Close()
}

// startCommand starts cmd in its own process group and records the group so
// Close can kill it. It refuses once Close has begun.
func (h *Host) startCommand(start func() (int, error)) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return 0, errors.New("host is closing")
	}
	h.pruneLocked()
	pgid, err := start()
	if err != nil {
		return 0, err
	}
	if h.groups == nil {
		h.groups = map[int]*procGroup{}
	}
	h.groups[pgid] = &procGroup{}
	return pgid, nil
}

// commandDone records that the command's shell has been reaped. The group is
// kept while detached children still populate it.
func (h *Host) commandDone(pgid int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if g := h.groups[pgid]; g != nil {
		g.leaderReaped = true
		if syscall.Kill(-pgid, 0) != nil {
			delete(h.groups, pgid)
		}
	}
}

// pruneLocked forgets groups whose shell is gone and which have no members left,
// so the map tracks only groups that can still hold processes.
func (h *Host) pruneLocked() {
	for pgid, g := range h.groups {
		if g.leaderReaped && syscall.Kill(-pgid, 0) != nil {
			delete(h.groups, pgid)
		}
	}
}

// Close stops accepting, closes every connection, kills every process group
// any command started (SIGKILL to the group, detached children included) and
// waits for them to die. It is idempotent.
func (h *Host) Close() error {
	h.closeOnce.Do(func() { h.closeErr = h.close() })
	return h.closeErr
}

func (h *Host) close() error {
	h.mu.Lock()
	h.closed = true
	conns := make([]net.Conn, 0, len(h.conns))
	for c := range h.conns {
		conns = append(conns, c)
	}
	pgids := make([]int, 0, len(h.groups))
	for pgid := range h.groups {
		pgids = append(pgids, pgid)
	}
	h.mu.Unlock()

	var errs []error
	if err := h.ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		errs = append(errs, fmt.Errorf("closing listener: %w", err))
	}
	for _, c := range conns {
		c.Close()
	}
	// No group can be added now: startCommand refuses once closed is set.
	for _, pgid := range pgids {
		if err := syscall.Kill(-pgid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("killing process group %d: %w", pgid, err))
		}
	}
	// Every command's shell is our child: wait for all of them (and every
	// connection and session goroutine) to finish.
	h.wg.Wait()

	// Detached children are no longer our children; poll until their groups
	// hold nothing but zombies.
	deadline := time.Now().Add(killWait)
	pending := pgids
	for tick := 5 * time.Millisecond; len(pending) > 0; tick = min(2*tick, 100*time.Millisecond) {
		alive := pending[:0]
		for _, pgid := range pending {
			if groupRunning(pgid) {
				alive = append(alive, pgid)
			}
		}
		pending = alive
		if len(pending) == 0 {
			break
		}
		if time.Now().After(deadline) {
			errs = append(errs, fmt.Errorf("process groups %v still running %s after SIGKILL", pending, killWait))
			break
		}
		time.Sleep(tick)
	}
	h.mu.Lock()
	h.groups = nil
	h.mu.Unlock()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("closing ssh host %s: %w", h.Addr(), err)
	}
	return nil
}
