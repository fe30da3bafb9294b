package reaper

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v5"

	"github.com/sortie-fleet/sortie/pkg/archive"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
	"github.com/sortie-fleet/sortie/pkg/remote"
)

// fetch streams an archive of the SSH host's logs into memory (tests only) and checks it
// as the store does.
func fetch(t *testing.T, c session, logs []string) ([]byte, []string) {
	t.Helper()
	var buf bytes.Buffer
	if err := streamArchive(t.Context(), c, logs, &buf); err != nil {
		t.Fatalf("streamArchive: %v", err)
	}
	names, err := archive.ReadTarGz(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatalf("archive streamed from the instance: %v", err)
	}
	return buf.Bytes(), names
}

func TestFetchArchiveWithoutLogs(t *testing.T) {
	h := cloudtest.StartSSHHost(t, "")
	ctx := context.Background()
	c, err := remote.Dial(ctx, remote.DialConfig{Addr: h.Addr, User: "sortie", Signer: h.Login, HostKey: h.HostKey})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, names := fetch(t, c, []string{"logs/never-written.log"})
	if len(names) != 1 || strings.TrimSuffix(strings.TrimPrefix(names[0], "./"), "/") != ".sortie" {
		t.Fatalf("archive entries %v, want only the empty .sortie directory", names)
	}
}

func TestFetchArchiveWithLogs(t *testing.T) {
	h := cloudtest.StartSSHHost(t, "")
	files := map[string]string{
		".sortie/work/stderr":        "warning\n",
		"logs/resize.log":            "resized 1\nresized 2\n",
		"out dir/it's $(id).log":     "odd name\n",
		"-dash.log":                  "dash\n",
		"outside.txt":                "not archived",
		"logs/not-listed-either.log": "not archived",
	}
	for name, content := range files {
		cloudtest.WriteFile(t, filepath.Join(h.Dir, name), []byte(content), 0o644)
	}
	ctx := context.Background()
	c, err := remote.Dial(ctx, remote.DialConfig{Addr: h.Addr, User: "sortie", Signer: h.Login, HostKey: h.HostKey})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	logs := []string{"logs/resize.log", "logs/missing.log", "out dir/it's $(id).log", "-dash.log", ".sortie/work/stderr", "./logs/resize.log"}
	data, names := fetch(t, c, logs)
	got := cloudtest.Untar(t, data)
	for _, name := range []string{".sortie/work/stderr", "logs/resize.log", "out dir/it's $(id).log", "-dash.log"} {
		if got[name] != files[name] {
			t.Errorf("archive holds %s = %q, want %q (entries %v)", name, got[name], files[name], names)
		}
	}
	for _, name := range []string{"outside.txt", "logs/not-listed-either.log", "logs/missing.log"} {
		if _, ok := got[name]; ok {
			t.Errorf("archive holds %s, which was not asked for or does not exist", name)
		}
	}
	count := map[string]int{}
	for _, n := range names {
		count[strings.TrimPrefix(n, "./")]++
	}
	if count["logs/resize.log"] != 1 || count[".sortie/work/stderr"] != 1 {
		t.Errorf("entries %v: a log listed twice or inside .sortie must be archived once", names)
	}
}

func TestExtraLogs(t *testing.T) {
	tests := []struct {
		name string
		logs []string
		want []string
	}{
		{"none", nil, nil},
		{"relative kept, cleaned", []string{"logs/a.log", "./b.log", "x//y.log"}, []string{"logs/a.log", "b.log", "x/y.log"}},
		{"inside .sortie left out", []string{".sortie", ".sortie/w/stdout.log", "./.sortie/x"}, nil},
		{"look-alike of .sortie kept", []string{".sortiex/a.log"}, []string{".sortiex/a.log"}},
		{"absolute and parent left out", []string{"/etc/shadow", "../x", "a/../../x", "", "."}, nil},
		{"leading dash made a path", []string{"-rf"}, []string{"./-rf"}},
		{"repeats once", []string{"a.log", "./a.log", "a.log"}, []string{"a.log"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := extraLogs(tt.logs); !slices.Equal(got, tt.want) {
				t.Errorf("extraLogs(%q) = %q, want %q", tt.logs, got, tt.want)
			}
		})
	}
}

func TestArchiver(t *testing.T) {
	h := cloudtest.StartSSHHost(t, "")
	cloudtest.WriteFile(t, filepath.Join(h.Dir, ".sortie/worker/worker.log"), []byte("done\n"), 0o644)
	stack := cloudtest.NewStack(t, cloudtest.NewCloud(t, localcloud.Options{}))
	st := archive.Store{API: stack.S3, Bucket: stack.Topology.BucketName()}
	fast := func() backoff.BackOff { return backoff.NewConstantBackOff(50 * time.Millisecond) }
	a := &archiver{dial: dialRemote, signer: h.Login, store: st, maxBytes: 1 << 20, backoff: fast}
	ctx := context.Background()

	t.Run("archives and verifies", func(t *testing.T) {
		arch, err := a.archive(ctx, target{InstanceID: "i-00000001", JobID: "job-1", Addr: h.Addr, User: "sortie", HostKey: h.HostKey}, 10*time.Second)
		if err != nil {
			t.Fatalf("archive: %v", err)
		}
		if arch.InstanceID != "i-00000001" || arch.Key != "logs/job-1/i-00000001.tar.gz" {
			t.Fatalf("archive %+v", arch)
		}
		body, _ := cloudtest.Download(t, stack.S3, st.Bucket, arch.Key)
		if got := cloudtest.Untar(t, body)[".sortie/worker/worker.log"]; got != "done\n" {
			t.Fatalf("archived worker.log = %q", got)
		}
	})
	t.Run("host key mismatch ends at once", func(t *testing.T) {
		start := time.Now()
		_, err := a.archive(ctx, target{InstanceID: "i-00000002", JobID: "job-1", Addr: h.Addr, User: "sortie", HostKey: cloudtest.NewSigner(t).PublicKey()}, 10*time.Second)
		if !errors.Is(err, remote.ErrHostKeyMismatch) {
			t.Fatalf("error = %v, want a host key mismatch", err)
		}
		if time.Since(start) > 2*time.Second {
			t.Fatalf("took %s: a host key mismatch must not be retried", time.Since(start))
		}
	})
	t.Run("unknown host key: never connects", func(t *testing.T) {
		_, err := a.archive(ctx, target{InstanceID: "i-00000003", JobID: "job-1", Addr: h.Addr, User: "sortie"}, 10*time.Second)
		if err == nil || !strings.Contains(err.Error(), "host key unknown") {
			t.Fatalf("error = %v, want a refusal", err)
		}
	})
	t.Run("over the size limit: not retried", func(t *testing.T) {
		big := &archiver{dial: dialRemote, signer: h.Login, store: st, maxBytes: 10, backoff: fast}
		start := time.Now()
		_, err := big.archive(ctx, target{InstanceID: "i-00000005", JobID: "job-1", Addr: h.Addr, User: "sortie", HostKey: h.HostKey}, 10*time.Second)
		if !errors.Is(err, archive.ErrTooLarge) {
			t.Fatalf("error = %v, want ErrTooLarge", err)
		}
		if time.Since(start) > 2*time.Second {
			t.Fatalf("took %s: a size limit must not be retried", time.Since(start))
		}
	})
	t.Run("S3 refusing: an error after the timeout", func(t *testing.T) {
		refusing := &archiver{dial: dialRemote, signer: h.Login, store: archive.Store{API: stack.S3, Bucket: cloudtest.Unique("missing")}, maxBytes: 1 << 20, backoff: fast}
		_, err := refusing.archive(ctx, target{InstanceID: "i-00000006", JobID: "job-1", Addr: h.Addr, User: "sortie", HostKey: h.HostKey}, time.Second)
		if err == nil || !strings.Contains(err.Error(), "archiving logs of i-00000006") {
			t.Fatalf("error = %v", err)
		}
	})
	t.Run("gone instance: not retried", func(t *testing.T) {
		asked := 0
		gone := &archiver{dial: dialRemote, signer: h.Login, store: st, maxBytes: 1 << 20, backoff: fast,
			alive: func(_ context.Context, id string) (bool, error) {
				asked++
				return false, nil
			}}
		addr := cloudtest.FreeAddr(t)
		_, err := gone.archive(ctx, target{InstanceID: "i-00000007", JobID: "job-1", Addr: addr, User: "sortie", HostKey: h.HostKey}, time.Minute)
		if !errors.Is(err, errGone) || asked != 1 {
			t.Fatalf("error = %v after %d checks, want errGone after one failed attempt", err, asked)
		}
	})
	t.Run("unreachable: gives up after the timeout", func(t *testing.T) {
		addr := cloudtest.FreeAddr(t)
		start := time.Now()
		_, err := a.archive(ctx, target{InstanceID: "i-00000004", JobID: "job-1", Addr: addr, User: "sortie", HostKey: h.HostKey}, 700*time.Millisecond)
		took := time.Since(start)
		if err == nil || !strings.Contains(err.Error(), "archiving logs of i-00000004") {
			t.Fatalf("error = %v", err)
		}
		if took < 600*time.Millisecond || took > 5*time.Second {
			t.Fatalf("gave up after %s, want about the 700ms timeout", took)
		}
	})
}
