package sshhost_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sortie-fleet/sortie/pkg/remote"
	"github.com/sortie-fleet/sortie/pkg/sshhost"
	"golang.org/x/crypto/ssh"
)

func TestExec(t *testing.T) {
	f := startHost(t, nil)
	c := f.dial(t)
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<17) // 2 MiB

	tests := []struct {
		name       string
		cmd        string
		stdin      []byte
		wantExit   int
		wantSignal string
		wantStdout string
		wantStderr string
	}{
		{name: "separate streams and exit code", cmd: "echo hi; echo err >&2; exit 3",
			wantExit: 3, wantStdout: "hi\n", wantStderr: "err\n"},
		{name: "success", cmd: "printf ok", wantStdout: "ok"},
		{name: "exit 255", cmd: "exit 255", wantExit: 255},
		{name: "stdin reaches the command and EOF ends it", cmd: "cat; echo done",
			stdin: []byte("line 1\nline 2"), wantStdout: "line 1\nline 2done\n"},
		{name: "no stdin is an empty stdin", cmd: "wc -c", wantStdout: "0\n"},
		{name: "large stdin", cmd: "cat > big && wc -c < big", stdin: big,
			wantStdout: strconv.Itoa(len(big)) + "\n"},
		{name: "killed by a signal", cmd: "echo before; kill -TERM $$; echo after",
			wantExit: 128 + 15, wantSignal: "TERM", wantStdout: "before\n"},
		{name: "command not found", cmd: "no-such-command-sortie", wantExit: 127,
			wantStderr: "no-such-command-sortie: not found\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var stdin *bytes.Reader
			if tt.stdin != nil {
				stdin = bytes.NewReader(tt.stdin)
			}
			var res remote.Result
			var err error
			if stdin != nil {
				res, err = c.Run(ctx, tt.cmd, stdin)
			} else {
				res, err = c.Run(ctx, tt.cmd, nil)
			}
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if res.ExitCode != tt.wantExit || res.Signal != tt.wantSignal {
				t.Errorf("exit %d signal %q, want %d %q", res.ExitCode, res.Signal, tt.wantExit, tt.wantSignal)
			}
			if string(res.Stdout) != tt.wantStdout {
				t.Errorf("stdout %q, want %q", res.Stdout, tt.wantStdout)
			}
			if !strings.HasSuffix(string(res.Stderr), tt.wantStderr) || (tt.wantStderr == "" && len(res.Stderr) > 0) {
				t.Errorf("stderr %q, want %q", res.Stderr, tt.wantStderr)
			}
		})
	}
}

func TestEnvironment(t *testing.T) {
	f := startHost(t, func(cfg *sshhost.Config) {
		cfg.Env = []string{"AWS_ENDPOINT_URL=http://127.0.0.1:4566", "PATH=/opt/custom:/usr/bin:/bin"}
	})
	c := f.dial(t)
	res := run(t, c, `pwd; echo "$HOME"; echo "$USER $LOGNAME $SHELL"; echo "$AWS_ENDPOINT_URL"; echo "$PATH"; echo "$SSH_CONNECTION" | wc -w`)
	want := strings.Join([]string{f.dir, f.dir, "ec2-user ec2-user /bin/sh", "http://127.0.0.1:4566", "/opt/custom:/usr/bin:/bin", "4", ""}, "\n")
	if got := string(res.Stdout); got != want {
		t.Errorf("environment:\n%s\nwant:\n%s", got, want)
	}

	t.Run("env requests apply to the session's command", func(t *testing.T) {
		sess, err := f.sshClient(t).NewSession()
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		if err := sess.Setenv("SORTIE_JOB", "job 1; $(x)"); err != nil {
			t.Fatalf("Setenv: %v", err)
		}
		out, err := sess.Output(`printf %s "$SORTIE_JOB"`)
		if err != nil {
			t.Fatalf("Output: %v", err)
		}
		if string(out) != "job 1; $(x)" {
			t.Errorf("SORTIE_JOB = %q", out)
		}
	})

	t.Run("missing dir is created", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "a", "b")
		g := startHost(t, func(cfg *sshhost.Config) { cfg.Dir = dir })
		res := run(t, g.dial(t), "pwd")
		if got := strings.TrimSpace(string(res.Stdout)); got != dir {
			t.Errorf("pwd = %q, want %q", got, dir)
		}
	})
}

// TestDetachedProcess follows a workload started the way the bootstrapper
// starts it: it outlives its session and the connection, and dies with the host.
func TestDetachedProcess(t *testing.T) {
	f := startHost(t, nil)
	c := f.dial(t)
	run(t, c, `nohup sh -c 'sleep 30' > out 2>&1 < /dev/null & echo $! > pid`)
	pid := readPid(t, filepath.Join(f.dir, "pid"))
	if err := c.Close(); err != nil {
		t.Fatalf("closing client: %v", err)
	}

	c2 := f.dial(t)
	time.Sleep(100 * time.Millisecond) // let the server notice the first client left
	res, err := c2.Run(context.Background(), "kill -0 $(cat pid)", nil)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("detached process %d not alive from a new session: %v, exit %d, %s", pid, err, res.ExitCode, res.Stderr)
	}
	if !running(pid) {
		t.Fatalf("detached process %d is not running", pid)
	}

	start := time.Now()
	if err := f.host.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if running(pid) {
		t.Errorf("detached process %d still running after Close", pid)
	}
	t.Logf("Close took %s", time.Since(start))
	if err := f.host.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := remote.Dial(ctx, f.dialConfig("ec2-user")); err == nil {
		t.Error("Dial succeeded after Close")
	}
}

// TestHangup: a client that goes away mid-command hangs up on it; what the
// command nohup'd survives.
func TestHangup(t *testing.T) {
	tests := []struct {
		name    string
		goAway  func(cancel context.CancelFunc, c *remote.Client)
		wantErr error
	}{
		{name: "context cancelled", goAway: func(cancel context.CancelFunc, _ *remote.Client) { cancel() }, wantErr: context.Canceled},
		{name: "connection closed", goAway: func(_ context.CancelFunc, c *remote.Client) { _ = c.Close() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startHost(t, nil)
			c := f.dial(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() {
				// The background child announces itself only once it runs under nohup
				// (SIGHUP ignored, inherited across exec): its pid file is the readiness
				// signal, so the hang-up below can never overtake nohup.
				_, err := c.Run(ctx, `nohup sh -c 'echo $$ > bg.tmp && mv bg.tmp bg && exec sleep 30' > /dev/null 2>&1 < /dev/null & echo $$ > fg; sleep 30`, nil)
				done <- err
			}()
			fg := readPid(t, filepath.Join(f.dir, "fg"))
			bg := readPid(t, filepath.Join(f.dir, "bg"))
			tt.goAway(cancel, c)
			select {
			case err := <-done:
				if err == nil || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) {
					t.Errorf("Run error %v, want %v", err, tt.wantErr)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Run did not return after the client went away")
			}
			waitGone(t, fg, 3*time.Second)
			if !running(bg) {
				t.Errorf("nohup'd process %d died with its session", bg)
			}
			if err := f.host.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if running(bg) {
				t.Errorf("nohup'd process %d still running after Close", bg)
			}
		})
	}
}

// TestOutputHeldOpen: a background child that keeps stdout open does not keep
// the session open for ever.
func TestOutputHeldOpen(t *testing.T) {
	f := startHost(t, nil)
	c := f.dial(t)
	start := time.Now()
	res := run(t, c, "echo started; sleep 20 &")
	if string(res.Stdout) != "started\n" {
		t.Errorf("stdout %q", res.Stdout)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Run took %s", d)
	}
}

func TestAuth(t *testing.T) {
	f := startHost(t, nil)
	nobody := startHost(t, func(cfg *sshhost.Config) { cfg.AuthorizedKeys = nil })
	tests := []struct {
		name string
		addr string
		auth ssh.AuthMethod
	}{
		{name: "unknown key", addr: f.host.Addr(), auth: ssh.PublicKeys(newKey(t))},
		{name: "password", addr: f.host.Addr(), auth: ssh.Password("hunter2")},
		{name: "keyboard-interactive", addr: f.host.Addr(), auth: ssh.KeyboardInteractive(
			func(string, string, []string, []bool) ([]string, error) { return nil, nil })},
		{name: "no authorized keys", addr: nobody.host.Addr(), auth: ssh.PublicKeys(nobody.clientKey)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ssh.Dial("tcp", tt.addr, &ssh.ClientConfig{
				User:            "root",
				Auth:            []ssh.AuthMethod{tt.auth},
				HostKeyCallback: ssh.InsecureIgnoreHostKey(), // the host's key is not what this test checks
				Timeout:         5 * time.Second,
			})
			if err == nil {
				c.Close()
				t.Fatal("login succeeded")
			}
			if !strings.Contains(err.Error(), "unable to authenticate") {
				t.Errorf("error %v, want an authentication failure", err)
			}
		})
	}

	t.Run("any user name with an authorized key", func(t *testing.T) {
		for _, user := range []string{"root", "admin", "ec2-user"} {
			c, err := remote.Dial(context.Background(), f.dialConfig(user))
			if err != nil {
				t.Fatalf("user %s: %v", user, err)
			}
			res := run(t, c, "echo $USER")
			c.Close()
			if string(res.Stdout) != user+"\n" {
				t.Errorf("USER = %q, want %q", res.Stdout, user)
			}
		}
	})
}

func TestRequests(t *testing.T) {
	f := startHost(t, nil)
	client := f.sshClient(t)

	t.Run("pty refused", func(t *testing.T) {
		sess, err := client.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		if err := sess.RequestPty("xterm", 24, 80, ssh.TerminalModes{}); err == nil {
			t.Error("pty-req accepted")
		}
	})
	t.Run("subsystem refused", func(t *testing.T) {
		sess, err := client.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		if err := sess.RequestSubsystem("sftp"); err == nil {
			t.Error("sftp subsystem accepted")
		}
	})
	t.Run("unknown channel type rejected", func(t *testing.T) {
		_, _, err := client.OpenChannel("sortie-bogus", nil)
		var oce *ssh.OpenChannelError
		if !errors.As(err, &oce) || oce.Reason != ssh.UnknownChannelType {
			t.Errorf("OpenChannel error %v, want UnknownChannelType", err)
		}
	})
	t.Run("port forwarding rejected", func(t *testing.T) {
		if conn, err := client.Dial("tcp", f.host.Addr()); err == nil {
			conn.Close()
			t.Error("direct-tcpip accepted")
		}
	})
	t.Run("shell reads commands from stdin", func(t *testing.T) {
		sess, err := client.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		var out bytes.Buffer
		sess.Stdout = &out
		sess.Stdin = strings.NewReader("echo $HOME\nexit 4\n")
		if err := sess.Shell(); err != nil {
			t.Fatalf("Shell: %v", err)
		}
		err = sess.Wait()
		var exit *ssh.ExitError
		if !errors.As(err, &exit) || exit.ExitStatus() != 4 {
			t.Errorf("Wait: %v, want exit status 4", err)
		}
		if out.String() != f.dir+"\n" {
			t.Errorf("stdout %q", out.String())
		}
	})
	t.Run("signal request reaches the command", func(t *testing.T) {
		sess, err := client.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		stdout, err := sess.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := sess.Start("echo ready; sleep 30"); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 6)
		if _, err := stdout.Read(buf); err != nil || string(buf) != "ready\n" {
			t.Fatalf("read %q: %v", buf, err)
		}
		if err := sess.Signal(ssh.SIGUSR1); err != nil {
			t.Fatal(err)
		}
		err = sess.Wait()
		var exit *ssh.ExitError
		if !errors.As(err, &exit) || exit.Signal() != string(ssh.SIGUSR1) {
			t.Errorf("Wait: %v, want killed by USR1", err)
		}
	})
	t.Run("one command per session", func(t *testing.T) {
		sess, err := client.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		if err := sess.Start("sleep 1"); err != nil {
			t.Fatal(err)
		}
		ok, err := sess.SendRequest("exec", true, ssh.Marshal(struct{ Command string }{"true"}))
		if ok || err != nil {
			t.Errorf("second exec: ok=%v err=%v, want refused", ok, err)
		}
	})
}

func TestStartValidates(t *testing.T) {
	tests := []struct {
		name string
		cfg  sshhost.Config
		want []string
	}{
		{name: "empty", cfg: sshhost.Config{}, want: []string{"HostKey is required", "Dir is required"}},
		{name: "bad env", cfg: sshhost.Config{HostKey: newKey(t), Dir: t.TempDir(), Env: []string{"NOEQUALS"}},
			want: []string{`Env entry "NOEQUALS"`}},
		{name: "bad addr", cfg: sshhost.Config{HostKey: newKey(t), Dir: t.TempDir(), Addr: "256.0.0.1:x"},
			want: []string{"listening on 256.0.0.1:x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := sshhost.Start(tt.cfg)
			if err == nil {
				h.Close()
				t.Fatal("Start succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestCloseWithRunningCommand(t *testing.T) {
	f := startHost(t, nil)
	c := f.dial(t)
	done := make(chan error, 1)
	go func() {
		_, err := c.Run(context.Background(), "echo $$ > fg; exec sleep 30", nil)
		done <- err
	}()
	fg := readPid(t, filepath.Join(f.dir, "fg"))
	if err := f.host.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if running(fg) {
		t.Errorf("command %d still running after Close", fg)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Error("Run returned no error though the host went away")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after the host closed")
	}
	if _, err := os.Stat(f.dir); err != nil {
		t.Errorf("Close removed the host's directory: %v", err)
	}
}

// TestClientGoneClosesOutput: a command that ignores SIGHUP but keeps writing
// gets EPIPE once the client has gone, as under sshd, instead of blocking on a
// full pipe until Close.
func TestClientGoneClosesOutput(t *testing.T) {
	f := startHost(t, nil)
	c := f.dial(t)
	go func() {
		_, _ = c.Run(context.Background(), `echo $$ > fg; exec nohup sh -c 'while :; do echo spam; done'`, nil)
	}()
	fg := readPid(t, filepath.Join(f.dir, "fg"))
	time.Sleep(50 * time.Millisecond)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	waitGone(t, fg, 3*time.Second)
}
