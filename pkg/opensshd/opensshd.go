// Package opensshd runs Debian's OpenSSH server (sshd) as a stand-in instance on a loopback
// port: a pinned host key, the login keys, the instance's own directory as home and
// working directory, and every process its sessions started killed on Close.
package opensshd

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"al.essio.dev/pkg/shellescape"
	"golang.org/x/crypto/ssh"
)

// DefaultPath is where Debian's openssh-server installs sshd.
const DefaultPath = "/usr/sbin/sshd"

// HostEnv is set in every session's environment to the server's StateDir: Close kills every
// process that carries it (and every process of their sessions).
const HostEnv = "SORTIE_OPENSSHD_HOST"

// startWait bounds how long Start waits for sshd to listen.
const startWait = 15 * time.Second

// Available reports whether sshd is installed at path (DefaultPath when empty), with the
// error saying why not.
func Available(path string) error {
	if path == "" {
		path = DefaultPath
	}
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("%s not found (apt-get install openssh-server): %w", path, err)
	}
	return nil
}

// Config describes one sshd.
type Config struct {
	Path string // the sshd binary, DefaultPath when empty
	Addr string // 127.0.0.1:PORT; empty or port 0: a free port
	// HostKeyPEM is the only host key the server presents: a private key in PEM (OpenSSH
	// or PKCS#8 form), as cloud-init's ssh_keys carries it. Required.
	HostKeyPEM []byte
	// AuthorizedKeys are the login keys (at least one).
	AuthorizedKeys []ssh.PublicKey
	// Dir is the instance's directory: every session's working directory and HOME.
	Dir string
	// StateDir holds sshd's configuration, keys, pid file and log, sshd.log (not reachable
	// through Dir).
	StateDir string
	// Env is extra environment ("K=V") for every session; it wins over sshd's own.
	Env []string
}

func (c Config) validate() error {
	var errs []error
	if _, err := ssh.ParsePrivateKey(c.HostKeyPEM); err != nil {
		errs = append(errs, fmt.Errorf("HostKeyPEM: %w", err))
	}
	if len(c.AuthorizedKeys) == 0 {
		errs = append(errs, errors.New("AuthorizedKeys: at least one key is required"))
	}
	if c.Dir == "" || !filepath.IsAbs(c.Dir) {
		errs = append(errs, fmt.Errorf("Dir: %q must be an absolute path", c.Dir))
	}
	if c.StateDir == "" || !filepath.IsAbs(c.StateDir) {
		errs = append(errs, fmt.Errorf("StateDir: %q must be an absolute path", c.StateDir))
	}
	for _, kv := range c.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" || strings.ContainsAny(kv, "\x00\n\r\"\\") {
			errs = append(errs, fmt.Errorf("Env: %q is not K=V without quotes, backslashes or line breaks", kv))
		}
	}
	return errors.Join(errs...)
}

// Server is a running sshd.
type Server struct {
	addr     string
	user     string
	stateDir string
	cmd      *exec.Cmd
	exited   chan struct{}
	waitErr  error

	closeOnce sync.Once
	closeErr  error
}

// Start writes the configuration and starts sshd in the foreground (-D), returning once it
// accepts connections. The login user is the user this process runs as: an unprivileged
// sshd can authenticate no one else (as root, sshd still drops to that user, root).
func Start(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("starting sshd: %w", err)
	}
	if cfg.Path == "" {
		cfg.Path = DefaultPath
	}
	if err := Available(cfg.Path); err != nil {
		return nil, err
	}
	u, err := user.Current()
	if err != nil {
		return nil, fmt.Errorf("starting sshd: %w", err)
	}
	for _, d := range []string{cfg.Dir, cfg.StateDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("starting sshd: %w", err)
		}
	}
	if os.Geteuid() == 0 {
		// The privilege separation directory, which Debian creates at boot.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			return nil, fmt.Errorf("starting sshd: %w", err)
		}
	}
	keyFile := filepath.Join(cfg.StateDir, "ssh_host_key")
	var auth bytes.Buffer
	for _, k := range cfg.AuthorizedKeys {
		auth.Write(ssh.MarshalAuthorizedKey(k))
	}
	authFile := filepath.Join(cfg.StateDir, "authorized_keys")
	for name, data := range map[string][]byte{keyFile: cfg.HostKeyPEM, authFile: auth.Bytes()} {
		if err := os.WriteFile(name, data, 0o600); err != nil {
			return nil, fmt.Errorf("starting sshd: %w", err)
		}
	}

	// A free port is found by listening on it a moment: another process may take it in
	// between, so a bind failure picks another.
	var last error
	for range 3 {
		addr := cfg.Addr
		if addr == "" || strings.HasSuffix(addr, ":0") {
			if addr, err = freeAddr(); err != nil {
				return nil, err
			}
		}
		s, err := start(cfg, u.Username, addr, keyFile, authFile)
		if err == nil {
			return s, nil
		}
		last = err
		if cfg.Addr != "" && !strings.HasSuffix(cfg.Addr, ":0") {
			break
		}
	}
	return nil, last
}

func start(cfg Config, username, addr, keyFile, authFile string) (*Server, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("starting sshd: address %q: %w", addr, err)
	}
	q := shellescape.Quote
	// sshd runs ForceCommand with the user's shell; it enters the instance's directory and
	// runs the client's command (or a login shell) with /bin/sh, as the embedded server does.
	force := fmt.Sprintf(`cd %s && HOME=%s && export HOME && `+
		`if test -n "${SSH_ORIGINAL_COMMAND+x}"; then exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"; else exec /bin/sh -l; fi`,
		q(cfg.Dir), q(cfg.Dir))
	conf := strings.Join([]string{
		"HostKey " + keyFile,
		"Port " + port,
		"ListenAddress " + host,
		"AuthorizedKeysFile " + authFile,
		"PidFile " + filepath.Join(cfg.StateDir, "sshd.pid"),
		"AllowUsers " + username,
		"StrictModes no",
		"UsePAM no",
		"PubkeyAuthentication yes",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"PermitRootLogin prohibit-password",
		"PrintMotd no",
		"UseDNS no",
		"MaxStartups 1000",
		"MaxSessions 100",
		// HOME is the instance's directory before the user's shell starts, so that shell
		// reads no startup file of the machine's own user.
		setEnv(append(slices.Clone(cfg.Env), HostEnv+"="+cfg.StateDir, "HOME="+cfg.Dir)),
		"ForceCommand " + force,
		"",
	}, "\n")
	cfgFile := filepath.Join(cfg.StateDir, "sshd_config")
	if err := os.WriteFile(cfgFile, []byte(conf), 0o600); err != nil {
		return nil, fmt.Errorf("starting sshd: %w", err)
	}
	logFile := filepath.Join(cfg.StateDir, "sshd.log")
	logf, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("starting sshd: %w", err)
	}
	defer logf.Close()
	// A file, not a pipe: sshd's children inherit it, and Wait must not wait for them.
	cmd := exec.Command(cfg.Path, "-D", "-e", "-f", cfgFile)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = cfg.StateDir
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting sshd: %w", err)
	}
	stderr := func() string {
		b, _ := os.ReadFile(logFile)
		return strings.TrimSpace(string(b))
	}
	s := &Server{addr: addr, user: username, stateDir: cfg.StateDir, cmd: cmd, exited: make(chan struct{})}
	go func() {
		s.waitErr = cmd.Wait()
		close(s.exited)
	}()
	deadline := time.Now().Add(startWait)
	for tick := 5 * time.Millisecond; ; tick = min(2*tick, 100*time.Millisecond) {
		select {
		case <-s.exited:
			return nil, fmt.Errorf("sshd on %s exited before listening: %v: %s", addr, s.waitErr, stderr())
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return s, nil
		}
		if time.Now().After(deadline) {
			_ = s.Close()
			return nil, fmt.Errorf("sshd not listening on %s after %s: %s", addr, startWait, stderr())
		}
		time.Sleep(tick)
	}
}

// setEnv is sshd's SetEnv line for env (validated: no quotes, backslashes or line breaks).
func setEnv(env []string) string {
	var b strings.Builder
	b.WriteString("SetEnv")
	for _, kv := range env {
		b.WriteString(` "` + kv + `"`)
	}
	return b.String()
}

// Addr is the host:port sshd listens on.
func (s *Server) Addr() string { return s.addr }

// User is the login user sshd accepts.
func (s *Server) User() string { return s.user }

// Close stops sshd and kills its connections and every process its sessions started
// (found by HostEnv in their environment, and every member of their sessions), waiting
// until they are gone.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.closeErr = killAll(s.cmd.Process.Pid, HostEnv+"="+s.stateDir)
		_ = s.cmd.Process.Kill()
		<-s.exited
	})
	return s.closeErr
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("finding a free port: %w", err)
	}
	addr := ln.Addr().String()
	return addr, ln.Close()
}

// killAll kills the descendants of sshd (its connections), every process whose
// environment holds tag, and every process of their sessions (a detached workload keeps
// its session unless it starts a new one), until none is left or 5s passed.
func killAll(sshd int, tag string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids := tagged(sshd, tag)
		if len(pids) == 0 {
			return nil
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v still running", pids)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tagged lists the live descendants of root, the live processes carrying tag in their
// environment and the other live members of their sessions.
func tagged(root int, tag string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	type proc struct{ pid, ppid, sid int }
	var all []proc
	sids := map[int]bool{}
	self := os.Getpid()
	ownSID := -1
	if b, err := os.ReadFile("/proc/self/stat"); err == nil {
		_, _, ownSID, _ = parseStat(b)
	}
	want := []byte(tag)
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		state, ppid, sid, ok := parseStat(stat)
		if !ok || state == 'Z' || state == 'X' {
			continue
		}
		all = append(all, proc{pid, ppid, sid})
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil {
			continue
		}
		for _, kv := range bytes.Split(env, []byte{0}) {
			if bytes.Equal(kv, want) {
				sids[sid] = true
				break
			}
		}
	}
	desc := map[int]bool{root: true}
	for grew := true; grew; {
		grew = false
		for _, p := range all {
			if !desc[p.pid] && desc[p.ppid] {
				desc[p.pid], grew = true, true
			}
		}
	}
	var out []int
	for _, p := range all {
		if p.pid != root && (desc[p.pid] || (sids[p.sid] && p.sid > 1 && p.sid != ownSID)) {
			out = append(out, p.pid)
		}
	}
	return out
}

// parseStat extracts the state, parent and session id from /proc/PID/stat, whose second
// field (the command name, in parentheses) may itself hold spaces and ')'.
func parseStat(b []byte) (state byte, ppid, sid int, ok bool) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, 0, false
	}
	f := bytes.Fields(b[i+1:])
	// state ppid pgrp session ...
	if len(f) < 4 || len(f[0]) != 1 {
		return 0, 0, 0, false
	}
	ppid, err1 := strconv.Atoi(string(f[1]))
	sid, err2 := strconv.Atoi(string(f[3]))
	if err1 != nil || err2 != nil {
		return 0, 0, 0, false
	}
	return f[0][0], ppid, sid, true
}
