package remote_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/remote"
	"github.com/sortie-fleet/sortie/pkg/sshhost"
)

// instance is an in-process SSH host and a DialConfig that reaches it.
type instance struct {
	dir string
	cfg remote.DialConfig
}

func startInstance(tb testing.TB, addr string) *instance {
	tb.Helper()
	h := cloudtest.StartSSHHost(tb, addr)
	return &instance{dir: h.Dir, cfg: remote.DialConfig{Addr: h.Addr, User: "ec2-user", Signer: h.Login, HostKey: h.HostKey}}
}

func dial(tb testing.TB, cfg remote.DialConfig) *remote.Client {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := remote.Dial(ctx, cfg)
	if err != nil {
		tb.Fatalf("Dial: %v", err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

func TestRun(t *testing.T) {
	in := startInstance(t, "")
	c := dial(t, in.cfg)
	ctx := context.Background()

	t.Run("stdout, stderr and exit code", func(t *testing.T) {
		res, err := c.Run(ctx, "echo hi; echo err >&2; exit 3", nil)
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode != 3 || string(res.Stdout) != "hi\n" || string(res.Stderr) != "err\n" || res.Truncated {
			t.Errorf("got exit %d stdout %q stderr %q truncated %v", res.ExitCode, res.Stdout, res.Stderr, res.Truncated)
		}
		if res.Duration <= 0 {
			t.Errorf("Duration %s", res.Duration)
		}
	})
	t.Run("stdin", func(t *testing.T) {
		res, err := c.Run(ctx, "tr a-z A-Z", strings.NewReader("piped\n"))
		if err != nil || res.ExitCode != 0 || string(res.Stdout) != "PIPED\n" {
			t.Errorf("got %q exit %d err %v", res.Stdout, res.ExitCode, err)
		}
	})
	t.Run("output capped to its last MiB", func(t *testing.T) {
		res, err := c.Run(ctx, "head -c 3000000 /dev/zero | tr '\\0' a; printf END; echo small >&2", nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Stdout) != remote.MaxOutput || !bytes.HasSuffix(res.Stdout, []byte("aaaEND")) || !res.Truncated {
			t.Errorf("stdout %d bytes ending %q, truncated %v; want the last %d bytes", len(res.Stdout), res.Stdout[max(0, len(res.Stdout)-6):], res.Truncated, remote.MaxOutput)
		}
		if string(res.Stderr) != "small\n" {
			t.Errorf("stderr %q", res.Stderr)
		}
	})
	t.Run("context ends the command", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		res, err := c.Run(ctx, "echo started; sleep 30", nil)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("error %v, want DeadlineExceeded", err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("Run returned after %s", d)
		}
		if string(res.Stdout) != "started\n" {
			t.Errorf("partial stdout %q", res.Stdout)
		}
		// The connection is still usable.
		if res, err := c.Run(context.Background(), "true", nil); err != nil || res.ExitCode != 0 {
			t.Errorf("next Run: %v, exit %d", err, res.ExitCode)
		}
	})
	t.Run("closed client is a transport error", func(t *testing.T) {
		c2 := dial(t, in.cfg)
		c2.Close()
		if _, err := c2.Run(ctx, "true", nil); err == nil {
			t.Error("Run on a closed client succeeded")
		}
	})
}

func TestUpload(t *testing.T) {
	in := startInstance(t, "")
	c := dial(t, in.cfg)
	ctx := context.Background()
	tests := []struct {
		name    string
		path    string // as given to Upload
		local   string // where it must land, relative to the instance dir
		mode    os.FileMode
		content string
	}{
		{name: "hostile name", path: "a b;$(touch pwned)", local: "a b;$(touch pwned)", mode: 0o644, content: "hello\n"},
		{name: "hostile directory", path: "d'ir/`touch pwned`/x", local: "d'ir/`touch pwned`/x", mode: 0o600, content: "x"},
		{name: "absolute path, executable", path: filepath.Join(in.dir, "bin", "run.sh"), local: "bin/run.sh", mode: 0o755, content: "#!/bin/sh\necho ran\n"},
		{name: "leading dash", path: "-rf", local: "-rf", mode: 0o640, content: "dash"},
		{name: "empty file", path: "empty", local: "empty", mode: 0o644},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := c.Upload(ctx, tt.path, tt.mode, strings.NewReader(tt.content)); err != nil {
				t.Fatalf("Upload: %v", err)
			}
			local := filepath.Join(in.dir, tt.local)
			got, err := os.ReadFile(local)
			if err != nil {
				t.Fatalf("reading uploaded file: %v", err)
			}
			if string(got) != tt.content {
				t.Errorf("content %q, want %q", got, tt.content)
			}
			fi, err := os.Stat(local)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != tt.mode {
				t.Errorf("mode %v, want %v", fi.Mode().Perm(), tt.mode)
			}
			if _, err := os.Stat(filepath.Join(in.dir, "pwned")); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("the file name was executed: pwned exists (%v)", err)
			}
		})
	}
	t.Run("read back remotely", func(t *testing.T) {
		res, err := c.Run(ctx, "cat 'a b;$(touch pwned)'; ./bin/run.sh", nil)
		if err != nil || res.ExitCode != 0 || string(res.Stdout) != "hello\nran\n" {
			t.Errorf("got %q exit %d err %v stderr %q", res.Stdout, res.ExitCode, err, res.Stderr)
		}
	})
	t.Run("new directories are private", func(t *testing.T) {
		fi, err := os.Stat(filepath.Join(in.dir, "bin"))
		if err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("bin: %v %v, want 0700", fi.Mode().Perm(), err)
		}
	})
	t.Run("failure is an error with stderr", func(t *testing.T) {
		if err := os.WriteFile(filepath.Join(in.dir, "file"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		err := c.Upload(ctx, "file/below-a-file", 0o644, strings.NewReader("x"))
		if err == nil || !strings.Contains(err.Error(), "exit status") || !strings.Contains(err.Error(), "mkdir") {
			t.Errorf("error %v, want exit status and mkdir's complaint", err)
		}
	})
	t.Run("no file name", func(t *testing.T) {
		for _, p := range []string{"", "dir/"} {
			if err := c.Upload(ctx, p, 0o644, strings.NewReader("x")); err == nil {
				t.Errorf("Upload(%q) succeeded", p)
			}
		}
	})
}

func TestDialRefusals(t *testing.T) {
	in := startInstance(t, "")
	tests := []struct {
		name    string
		edit    func(*remote.DialConfig)
		wantErr error
		want    string
	}{
		{name: "wrong client key", edit: func(c *remote.DialConfig) { c.Signer = cloudtest.NewSigner(t) }, wantErr: remote.ErrAuth},
		{name: "wrong pinned host key", edit: func(c *remote.DialConfig) { c.HostKey = cloudtest.NewSigner(t).PublicKey() }, wantErr: remote.ErrHostKeyMismatch,
			want: remote.Fingerprint(in.cfg.HostKey)},
		{name: "nil host key", edit: func(c *remote.DialConfig) { c.HostKey = nil }, want: "HostKey is required"},
		{name: "nothing set", edit: func(c *remote.DialConfig) { *c = remote.DialConfig{} },
			want: "Addr is required\nUser is required\nSigner is required\nHostKey is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := in.cfg
			tt.edit(&cfg)
			var retries atomic.Int32
			cfg.OnRetry = func(error, time.Duration) { retries.Add(1) }
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			start := time.Now()
			c, err := remote.Dial(ctx, cfg)
			if err == nil {
				c.Close()
				t.Fatal("Dial succeeded")
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error %v, want %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q lacks %q", err, tt.want)
			}
			if n := retries.Load(); n != 0 {
				t.Errorf("%d retries, want none", n)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("took %s, want an immediate answer", d)
			}
		})
	}
}

func TestDialRetries(t *testing.T) {
	t.Run("gives up at the context deadline", func(t *testing.T) {
		in := startInstance(t, "")
		cfg := in.cfg
		cfg.Addr = cloudtest.FreeAddr(t)
		var retries atomic.Int32
		cfg.OnRetry = func(err error, _ time.Duration) {
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("retried on %v, want connection refused", err)
			}
			retries.Add(1)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := remote.Dial(ctx, cfg)
		elapsed := time.Since(start)
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "connection refused") {
			t.Errorf("error %v, want the deadline and the last attempt's connection refused", err)
		}
		if elapsed < 600*time.Millisecond || elapsed > 2*time.Second {
			t.Errorf("gave up after %s, want about the 700ms deadline", elapsed)
		}
		if n := retries.Load(); n < 2 {
			t.Errorf("%d retries, want several", n)
		}
		t.Logf("error after %s and %d retries: %v", elapsed.Round(time.Millisecond), retries.Load(), err)
	})
	t.Run("succeeds when the server appears", func(t *testing.T) {
		addr := cloudtest.FreeAddr(t)
		hostKey, clientKey := cloudtest.NewSigner(t), cloudtest.NewSigner(t)
		var retries atomic.Int32
		cfg := remote.DialConfig{Addr: addr, User: "ec2-user", Signer: clientKey, HostKey: hostKey.PublicKey(),
			OnRetry: func(error, time.Duration) { retries.Add(1) }}
		dialed := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := remote.Dial(ctx, cfg)
			if err == nil {
				var res remote.Result
				res, err = c.Run(ctx, "echo up", nil)
				if err == nil && string(res.Stdout) != "up\n" {
					err = errors.New("unexpected output " + string(res.Stdout))
				}
				c.Close()
			}
			dialed <- err
		}()
		time.Sleep(400 * time.Millisecond)
		h, err := sshhost.Start(sshhost.Config{HostKey: hostKey, AuthorizedKeys: []ssh.PublicKey{clientKey.PublicKey()}, Dir: t.TempDir(), Addr: addr})
		if err != nil {
			t.Fatalf("starting host on %s: %v", addr, err)
		}
		defer h.Close()
		if err := <-dialed; err != nil {
			t.Fatalf("Dial: %v", err)
		}
		if retries.Load() == 0 {
			t.Error("Dial connected without retrying, so the test did not exercise retries")
		}
	})
}

func TestTail(t *testing.T) {
	tests := []struct {
		name string
		in   string
		n    int
		want []string
	}{
		{name: "fewer lines than n", in: "a\nb\n", n: 5, want: []string{"a", "b"}},
		{name: "last n", in: "1\n2\n3\n4\n", n: 2, want: []string{"3", "4"}},
		{name: "no final newline", in: "1\n2\n3", n: 2, want: []string{"2", "3"}},
		{name: "exactly n", in: "1\n2\n", n: 2, want: []string{"1", "2"}},
		{name: "blank lines kept", in: "1\n\n3\n", n: 2, want: []string{"", "3"}},
		{name: "one line", in: "only", n: 50, want: []string{"only"}},
		{name: "empty", in: "", n: 50, want: nil},
		{name: "zero n", in: "a\n", n: 0, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := remote.Tail([]byte(tt.in), tt.n)
			if strings.Join(got, "|") != strings.Join(tt.want, "|") || len(got) != len(tt.want) {
				t.Errorf("Tail(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
			}
		})
	}
}

func TestFingerprint(t *testing.T) {
	b, err := os.ReadFile("testdata/ed25519.pub")
	if err != nil {
		t.Fatal(err)
	}
	key, _, _, _, err := ssh.ParseAuthorizedKey(b)
	if err != nil {
		t.Fatal(err)
	}
	// As printed by `ssh-keygen -lf testdata/ed25519.pub` (see testdata/README.md).
	const want = "SHA256:lbmsoA0yIEcEiVDRnMWuzm+nV+3ZEEpVIURqFoeSspg"
	if got := remote.Fingerprint(key); got != want {
		t.Errorf("Fingerprint = %s, want %s", got, want)
	}
}

func TestStream(t *testing.T) {
	in := startInstance(t, "")
	c := dial(t, in.cfg)
	ctx := context.Background()

	t.Run("every byte of stdout reaches the writer; stderr's tail and the exit code in the result", func(t *testing.T) {
		const n = 3*remote.MaxOutput + 12345 // more than Run would keep
		h := sha256.New()
		var count countWriter
		res, err := c.Stream(ctx, fmt.Sprintf("head -c %d /dev/urandom | tee .streamed; echo done >&2; exit 1", n), nil, io.MultiWriter(h, &count))
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode != 1 || string(res.Stderr) != "done\n" || len(res.Stdout) != 0 || res.Truncated {
			t.Errorf("result: exit %d stderr %q stdout %d bytes truncated %v", res.ExitCode, res.Stderr, len(res.Stdout), res.Truncated)
		}
		written, err := os.ReadFile(filepath.Join(in.dir, ".streamed"))
		if err != nil {
			t.Fatal(err)
		}
		want := sha256.Sum256(written)
		if count.n != n || !bytes.Equal(h.Sum(nil), want[:]) {
			t.Errorf("streamed %d bytes (digest match %v), want the %d the command wrote", count.n, bytes.Equal(h.Sum(nil), want[:]), n)
		}
	})
	t.Run("a failing writer ends the command", func(t *testing.T) {
		start := time.Now()
		_, err := c.Stream(ctx, "cat /dev/zero", nil, failingWriter{})
		if err == nil || !strings.Contains(err.Error(), errWriter.Error()) {
			t.Fatalf("err = %v, want the writer's", err)
		}
		if time.Since(start) > 10*time.Second {
			t.Errorf("took %s to stop", time.Since(start))
		}
	})
}

type countWriter struct{ n int }

func (c *countWriter) Write(p []byte) (int, error) { c.n += len(p); return len(p), nil }

var errWriter = errors.New("writer refuses")

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errWriter }
