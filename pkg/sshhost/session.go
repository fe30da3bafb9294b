package sshhost

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
)

const (
	// defaultPath is the PATH of every command, as on a stock Debian instance.
	defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	// outputGrace is how long a session waits, after its command's shell has
	// exited, for stdout and stderr to reach EOF. A background child that kept
	// them open (`sleep 100 &` without redirections) is cut off after it, where
	// OpenSSH would keep the channel open until the child exits.
	outputGrace = time.Second
)

// signals maps RFC 4254 signal names to the host's signals.
var signals = map[ssh.Signal]syscall.Signal{
	ssh.SIGABRT: syscall.SIGABRT,
	ssh.SIGALRM: syscall.SIGALRM,
	ssh.SIGFPE:  syscall.SIGFPE,
	ssh.SIGHUP:  syscall.SIGHUP,
	ssh.SIGILL:  syscall.SIGILL,
	ssh.SIGINT:  syscall.SIGINT,
	ssh.SIGKILL: syscall.SIGKILL,
	ssh.SIGPIPE: syscall.SIGPIPE,
	ssh.SIGQUIT: syscall.SIGQUIT,
	ssh.SIGSEGV: syscall.SIGSEGV,
	ssh.SIGTERM: syscall.SIGTERM,
	ssh.SIGUSR1: syscall.SIGUSR1,
	ssh.SIGUSR2: syscall.SIGUSR2,
}

// session is one "session" channel: environment requests, then at most one
// exec or shell.
type session struct {
	h    *Host
	conn *ssh.ServerConn
	ch   ssh.Channel
	log  *slog.Logger
	env  []string // from "env" requests

	started bool
	done    chan struct{} // closed once the command has finished and its exit was reported

	mu   sync.Mutex
	pgid int // process group of the running command's shell; 0 once it has exited
}

func (s *session) serve(reqs <-chan *ssh.Request) {
	defer s.h.wg.Done()
	for req := range reqs {
		ok := false
		var run func()
		switch req.Type {
		case "env":
			var kv struct{ Name, Value string }
			if ssh.Unmarshal(req.Payload, &kv) == nil && !s.started && validEnv(kv.Name+"="+kv.Value) {
				s.env = append(s.env, kv.Name+"="+kv.Value)
				ok = true
			}
		case "exec":
			var p struct{ Command string }
			if err := ssh.Unmarshal(req.Payload, &p); err == nil {
				if s.h.onExec != nil && !s.started {
					s.h.onExec(p.Command)
				}
				run, err = s.start([]string{"/bin/sh", "-c", p.Command})
				ok = err == nil
			}
		case "shell":
			run, _ = s.start([]string{"/bin/sh"}) // no pty: sh reads commands from stdin
			ok = run != nil
		case "signal":
			var p struct{ Signal string }
			if ssh.Unmarshal(req.Payload, &p) == nil {
				if sig, known := signals[ssh.Signal(p.Signal)]; known {
					ok = s.signal(sig)
				}
			}
		default:
			// pty-req, subsystem (sftp), x11-req, agent forwarding, ...: we only run commands.
		}
		if req.WantReply {
			_ = req.Reply(ok, nil)
		}
		if run != nil {
			go run() // after the reply, so no output precedes it
		}
	}
	// The client closed the channel or the connection is gone: hang up on a
	// command that is still running, as a terminal would. nohup'd children
	// ignore SIGHUP and survive; Close kills them.
	if s.signal(syscall.SIGHUP) {
		s.log.Debug("client went away, sent SIGHUP to the command")
	}
	if s.done != nil {
		<-s.done
	}
	_ = s.ch.Close()
}

// signal delivers sig to the running command's process group, reporting
// whether there was one.
func (s *session) signal(sig syscall.Signal) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pgid == 0 {
		return false
	}
	return syscall.Kill(-s.pgid, sig) == nil
}

// start starts argv in its own process group with pipes for stdin, stdout and
// stderr, and returns the function that streams them and reports the exit.
func (s *session) start(argv []string) (func(), error) {
	if s.started {
		return nil, errors.New("session already ran a command")
	}
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("creating stdin pipe: %w", err)
	}
	stdoutR, stdoutW, err := os.Pipe()
	if err != nil {
		closeAll(stdinR, stdinW)
		return nil, fmt.Errorf("creating stdout pipe: %w", err)
	}
	stderrR, stderrW, err := os.Pipe()
	if err != nil {
		closeAll(stdinR, stdinW, stdoutR, stdoutW)
		return nil, fmt.Errorf("creating stderr pipe: %w", err)
	}
	cmd := &exec.Cmd{
		Path:        "/bin/sh",
		Args:        argv,
		Dir:         s.h.dir,
		Env:         s.environ(),
		Stdin:       stdinR,
		Stdout:      stdoutW,
		Stderr:      stderrW,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
	}
	pgid, err := s.h.startCommand(func() (int, error) {
		if err := cmd.Start(); err != nil {
			return 0, err
		}
		return cmd.Process.Pid, nil
	})
	closeAll(stdinR, stdoutW, stderrW) // the child has its own copies
	if err != nil {
		closeAll(stdinW, stdoutR, stderrR)
		s.log.Warn("starting command", "err", err)
		return nil, fmt.Errorf("starting command: %w", err)
	}
	s.started = true
	s.done = make(chan struct{})
	s.mu.Lock()
	s.pgid = pgid
	s.mu.Unlock()
	s.log.Debug("command started", "pgid", pgid)
	return func() { s.run(cmd, pgid, stdinW, stdoutR, stderrR) }, nil
}

func (s *session) run(cmd *exec.Cmd, pgid int, stdinW, stdoutR, stderrR *os.File) {
	defer close(s.done)
	go func() {
		// Ends at the client's EOF (closing the command's stdin), when the
		// command stops reading, or when the channel is closed below.
		_, _ = io.Copy(stdinW, s.ch)
		stdinW.Close()
	}()
	// When the client is gone the copies fail; closing the read ends then
	// gives the command EPIPE/SIGPIPE, as sshd does, instead of a full pipe.
	var out sync.WaitGroup
	out.Add(2)
	go func() { defer out.Done(); _, _ = io.Copy(s.ch, stdoutR); stdoutR.Close() }()
	go func() { defer out.Done(); _, _ = io.Copy(s.ch.Stderr(), stderrR); stderrR.Close() }()

	_ = cmd.Wait() // the outcome is in cmd.ProcessState
	s.mu.Lock()
	s.pgid = 0
	s.mu.Unlock()
	s.h.commandDone(pgid)

	drained := make(chan struct{})
	go func() { out.Wait(); close(drained) }()
	grace := time.NewTimer(outputGrace)
	select {
	case <-drained:
	case <-grace.C:
		s.log.Debug("command exited but its output is still open, closing it", "pgid", pgid)
		closeAll(stdoutR, stderrR)
		<-drained
	}
	grace.Stop()
	closeAll(stdoutR, stderrR)

	_ = s.ch.CloseWrite()
	name, payload := exitRequest(cmd.ProcessState)
	_, _ = s.ch.SendRequest(name, false, payload)
	s.log.Debug("command finished", "pgid", pgid, "exit", cmd.ProcessState.String())
	_ = s.ch.Close()
}

// exitRequest encodes how the command ended: exit-status, or exit-signal when
// a signal killed it.
func exitRequest(ps *os.ProcessState) (string, []byte) {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		name := "SIG@openssh.com" // OpenSSH's name for a signal RFC 4254 does not list
		for n, sig := range signals {
			if sig == ws.Signal() {
				name = string(n)
			}
		}
		return "exit-signal", ssh.Marshal(struct {
			Signal     string
			CoreDumped bool
			Error      string
			Lang       string
		}{name, ws.CoreDump(), "", ""})
	}
	return "exit-status", ssh.Marshal(struct{ Status uint32 }{uint32(ps.ExitCode())})
}

// environ is the command's environment: a login-like base, then Config.Env,
// then what the client sent with "env" requests (later entries win).
func (s *session) environ() []string {
	user := s.conn.User()
	env := []string{
		"HOME=" + s.h.dir,
		"USER=" + user,
		"LOGNAME=" + user,
		"SHELL=/bin/sh",
		"PATH=" + defaultPath,
	}
	rhost, rport, err1 := net.SplitHostPort(s.conn.RemoteAddr().String())
	lhost, lport, err2 := net.SplitHostPort(s.conn.LocalAddr().String())
	if err1 == nil && err2 == nil {
		env = append(env, "SSH_CONNECTION="+strings.Join([]string{rhost, rport, lhost, lport}, " "))
	}
	env = append(env, s.h.env...)
	return append(env, s.env...)
}

// validEnv reports whether kv is NAME=VALUE with a non-empty name and no NUL.
func validEnv(kv string) bool {
	name, _, ok := strings.Cut(kv, "=")
	return ok && name != "" && !strings.ContainsRune(kv, 0)
}

func closeAll(fs ...*os.File) {
	for _, f := range fs {
		_ = f.Close()
	}
}
