package livelogs

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/sshhost"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// host starts an in-process SSH host whose directory holds a start step "w" with a log of
// three lines.
func host(t *testing.T) (*sshhost.Host, string, Instance, ssh.Signer) {
	t.Helper()
	hostKey, login := cloudtest.NewSigner(t), cloudtest.NewSigner(t)
	dir := t.TempDir()
	h, err := sshhost.Start(sshhost.Config{HostKey: hostKey, AuthorizedKeys: []ssh.PublicKey{login.PublicKey()}, Dir: dir, Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	cloudtest.WriteFile(t, filepath.Join(dir, ".sortie/w/log-path"), []byte("w.log\n"), 0o644)
	cloudtest.WriteFile(t, filepath.Join(dir, "w.log"), []byte("a\nb\nc\n"), 0o644)
	return h, dir, Instance{ID: "i-1", Addr: h.Addr(), User: "sortie", HostKey: hostKey.PublicKey()}, login
}

// TestFollowEndedWorkload: a workload that has exited prints its last lines, prefixed,
// and the follow ends; a wrong pinned key is refused without a line.
func TestFollowEndedWorkload(t *testing.T) {
	_, dir, in, login := host(t)
	cloudtest.WriteFile(t, filepath.Join(dir, ".sortie/w/exit_code"), []byte("0\n"), 0o644)
	var out syncBuffer
	if err := Follow(context.Background(), Config{Signer: login, Tail: 2, Out: &out}, []Instance{in}); err != nil {
		t.Fatal(err)
	}
	if out.String() != "[i-1] b\n[i-1] c\n" {
		t.Errorf("got %q", out.String())
	}

	in.HostKey = cloudtest.NewSigner(t).PublicKey()
	out = syncBuffer{}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := Follow(ctx, Config{Signer: login, Out: &out, DialTimeout: 3 * time.Second}, []Instance{in})
	if err == nil || strings.Contains(out.String(), "] a") {
		t.Errorf("wrong host key: %v\n%s", err, out.String())
	}
}

// TestFollowLostInstance: an instance lost while its workload runs is finished from the
// archive, from the line after the last one streamed.
func TestFollowLostInstance(t *testing.T) {
	h, dir, in, login := host(t)
	sleep := exec.Command("sleep", "60")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	reaped := make(chan struct{})
	go func() { sleep.Wait(); close(reaped) }()
	t.Cleanup(func() { sleep.Process.Kill(); <-reaped })
	cloudtest.WriteFile(t, filepath.Join(dir, ".sortie/w/pid"), []byte(fmt.Sprintf("%d\n", sleep.Process.Pid)), 0o644)

	var out syncBuffer
	var from int
	archive := func(_ context.Context, id, file string, f int, w io.Writer) error {
		from = f
		_, err := io.WriteString(w, "d (archived)\n")
		return err
	}
	done := make(chan error, 1)
	go func() {
		done <- Follow(context.Background(), Config{Signer: login, Out: &out, Archive: archive}, []Instance{in})
	}()
	cloudtest.Eventually(t, 30*time.Second, func() error {
		if !strings.Contains(out.String(), "[i-1] c\n") {
			return fmt.Errorf("got %q", out.String())
		}
		return nil
	})
	h.Close() // the instance goes away
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Follow did not end when the instance went away")
	}
	if from != 4 {
		t.Errorf("archive asked from line %d, want 4", from)
	}
	got := out.String()
	if !strings.HasPrefix(got, "[i-1] a\n[i-1] b\n[i-1] c\n[i-1] sortie: lost i-1") || !strings.HasSuffix(got, "[i-1] d (archived)\n") {
		t.Errorf("got %q", got)
	}
}
