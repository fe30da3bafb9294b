package reaper

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/cenkalti/backoff/v5"

	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/remote"
)

func TestFetchArchive(t *testing.T) {
	h := cloudtest.StartSSHHost(t, "")
	big := make([]byte, 5*ChunkBytes/2+12345) // incompressible: the archive spans several chunks
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	cloudtest.WriteFile(t, filepath.Join(h.Dir, ".sortie/worker/worker.log"), []byte("item 1 done\nitem 2 done\n"), 0o644)
	cloudtest.WriteFile(t, filepath.Join(h.Dir, ".sortie/worker/blob"), big, 0o644)
	cloudtest.WriteFile(t, filepath.Join(h.Dir, "outside.txt"), []byte("not archived"), 0o644)

	ctx := context.Background()
	c, err := remote.Dial(ctx, remote.DialConfig{Addr: h.Addr, User: "sortie", Signer: h.Login, HostKey: h.HostKey})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	data, err := fetchArchive(ctx, c, nil, 10<<20)
	if err != nil {
		t.Fatalf("fetchArchive: %v", err)
	}
	if len(data) <= 2*ChunkBytes {
		t.Fatalf("archive is %d bytes: the test wants more than two chunks", len(data))
	}
	files := cloudtest.Untar(t, data)
	if files[".sortie/worker/worker.log"] != "item 1 done\nitem 2 done\n" {
		t.Errorf("worker.log = %q", files[".sortie/worker/worker.log"])
	}
	if files[".sortie/worker/blob"] != string(big) {
		t.Errorf("blob differs after the round trip (%d bytes, want %d)", len(files[".sortie/worker/blob"]), len(big))
	}
	if _, ok := files["outside.txt"]; ok {
		t.Error("archived a file outside .sortie")
	}
	if left, _ := filepath.Glob(filepath.Join(h.Dir, ".sortie-archive-*")); len(left) != 0 {
		t.Errorf("temporary archive left behind: %v", left)
	}

	t.Run("over the size limit: not retryable", func(t *testing.T) {
		_, err := fetchArchive(ctx, c, nil, 1000)
		if !errors.Is(err, errNoRetry) || !strings.Contains(err.Error(), "limit 1000") {
			t.Fatalf("error = %v, want a size limit error", err)
		}
	})
}

func TestFetchArchiveWithoutLogs(t *testing.T) {
	h := cloudtest.StartSSHHost(t, "")
	ctx := context.Background()
	c, err := remote.Dial(ctx, remote.DialConfig{Addr: h.Addr, User: "sortie", Signer: h.Login, HostKey: h.HostKey})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data, err := fetchArchive(ctx, c, []string{"logs/never-written.log"}, 1<<20)
	if err != nil {
		t.Fatalf("fetchArchive on an instance that never ran a step (a listed log missing): %v", err)
	}
	names, err := checkTarGz(data)
	if err != nil || len(names) != 1 || strings.TrimSuffix(strings.TrimPrefix(names[0], "./"), "/") != ".sortie" {
		t.Fatalf("archive entries %v (%v), want only the empty .sortie directory", names, err)
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
	data, err := fetchArchive(ctx, c, logs, 1<<20)
	if err != nil {
		t.Fatalf("fetchArchive: %v", err)
	}
	names, err := checkTarGz(data)
	if err != nil {
		t.Fatal(err)
	}
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

func TestCheckTarGz(t *testing.T) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	_ = tw.WriteHeader(&tar.Header{Name: ".sortie/a.log", Mode: 0o600, Size: 5})
	_, _ = tw.Write([]byte("hello"))
	_ = tw.Close()
	_ = zw.Close()
	good := buf.Bytes()

	tests := []struct {
		name    string
		data    []byte
		wantErr string
	}{
		{name: "complete", data: good},
		{name: "truncated", data: good[:len(good)-10], wantErr: "unexpected EOF"},
		{name: "not gzip", data: []byte("plain text"), wantErr: "not gzip"},
		{name: "empty", data: gz(t, nil), wantErr: "empty tar"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := checkTarGz(tt.data)
			if tt.wantErr == "" && err != nil {
				t.Fatalf("checkTarGz: %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("error = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func gz(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, _ = zw.Write(b)
	_ = zw.Close()
	return buf.Bytes()
}

// memS3 is an in-memory ObjectAPI. (A second kumo in this test binary would race with the
// local cloud's: kumo's S3 notifications read process-global state that NewServer rewrites.
// The real S3 round trip is TestReaper's.)
type memS3 struct {
	mu      sync.Mutex
	objects map[string]memObject
	lie     int64 // added to every reported ContentLength
}

type memObject struct {
	body   []byte
	sse    s3types.ServerSideEncryption
	kmsKey string
}

var _ ObjectAPI = (*memS3)(nil)

func (m *memS3) PutObject(_ context.Context, in *s3.PutObjectInput, _ ...func(*s3.Options)) (*s3.PutObjectOutput, error) {
	b, err := io.ReadAll(in.Body)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.objects == nil {
		m.objects = map[string]memObject{}
	}
	m.objects[aws.ToString(in.Bucket)+"/"+aws.ToString(in.Key)] = memObject{body: b, sse: in.ServerSideEncryption, kmsKey: aws.ToString(in.SSEKMSKeyId)}
	return &s3.PutObjectOutput{}, nil
}

func (m *memS3) HeadObject(_ context.Context, in *s3.HeadObjectInput, _ ...func(*s3.Options)) (*s3.HeadObjectOutput, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.objects[aws.ToString(in.Bucket)+"/"+aws.ToString(in.Key)]
	if !ok {
		return nil, &s3types.NotFound{Message: aws.String("Not Found")}
	}
	return &s3.HeadObjectOutput{ContentLength: aws.Int64(int64(len(o.body)) + m.lie), ServerSideEncryption: o.sse}, nil
}

func (m *memS3) get(bucket, key string) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.objects[bucket+"/"+key].body
}

func newStore() (store, *memS3) {
	api := &memS3{}
	return store{api: api, bucket: "logs-bucket", kmsKeyID: "alias/logs"}, api
}

func TestStore(t *testing.T) {
	st, api := newStore()
	ctx := context.Background()
	data := gz(t, []byte("logs"))

	arch, err := st.put(ctx, "logs/job-1/i-00000001.tar.gz", data)
	if err != nil {
		t.Fatalf("put: %v", err)
	}
	if arch.Bucket != st.bucket || arch.Key != "logs/job-1/i-00000001.tar.gz" || arch.SizeBytes != int64(len(data)) {
		t.Fatalf("archive %+v", arch)
	}
	if o := api.objects[st.bucket+"/"+arch.Key]; o.sse != s3types.ServerSideEncryptionAwsKms || o.kmsKey != "alias/logs" || !bytes.Equal(o.body, data) {
		t.Fatalf("stored object SSE %q key %q, %d bytes; want aws:kms with alias/logs, %d bytes", o.sse, o.kmsKey, len(o.body), len(data))
	}

	t.Run("size mismatch", func(t *testing.T) {
		_, err := st.verify(ctx, arch.Key, int64(len(data))+1)
		if err == nil || !strings.Contains(err.Error(), "bytes stored") {
			t.Fatalf("verify error = %v, want a size mismatch", err)
		}
	})
	t.Run("stored size differs from the upload", func(t *testing.T) {
		api.lie = -1
		defer func() { api.lie = 0 }()
		if _, err := st.put(ctx, "logs/job-1/i-00000002.tar.gz", data); err == nil || !strings.Contains(err.Error(), "bytes stored") {
			t.Fatalf("put error = %v, want the verification to fail", err)
		}
	})
	t.Run("not encrypted with KMS", func(t *testing.T) {
		if _, err := api.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(st.bucket), Key: aws.String("plain"), Body: bytes.NewReader(data)}); err != nil {
			t.Fatal(err)
		}
		_, err := st.verify(ctx, "plain", -1)
		if err == nil || !strings.Contains(err.Error(), "want aws:kms") {
			t.Fatalf("verify error = %v, want an encryption error", err)
		}
	})
	t.Run("missing", func(t *testing.T) {
		if _, err := st.verify(ctx, "logs/none.tar.gz", -1); err == nil {
			t.Fatal("verify of a missing object succeeded")
		}
	})
}

func TestArchiver(t *testing.T) {
	h := cloudtest.StartSSHHost(t, "")
	cloudtest.WriteFile(t, filepath.Join(h.Dir, ".sortie/worker/worker.log"), []byte("done\n"), 0o644)
	st, api := newStore()
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
		if got := cloudtest.Untar(t, api.get(st.bucket, arch.Key))[".sortie/worker/worker.log"]; got != "done\n" {
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
