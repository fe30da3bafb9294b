package reaper

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/cenkalti/backoff/v5"
	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/remote"
	"github.com/sortie-fleet/sortie/pkg/sshhost"
)

func newSigner(t *testing.T) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// host is an in-process SSH host (commands run with /bin/sh in dir).
type host struct {
	addr    string
	dir     string
	hostKey ssh.PublicKey
	login   ssh.Signer
}

func startHost(t *testing.T) host {
	t.Helper()
	hk, login := newSigner(t), newSigner(t)
	dir := t.TempDir()
	h, err := sshhost.Start(sshhost.Config{HostKey: hk, AuthorizedKeys: []ssh.PublicKey{login.PublicKey()}, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return host{addr: h.Addr(), dir: dir, hostKey: hk.PublicKey(), login: login}
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// untar returns the regular files of a tar.gz by name.
func untar(t *testing.T, data []byte) map[string][]byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	files := map[string][]byte{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			b, _ := io.ReadAll(tr)
			files[strings.TrimPrefix(h.Name, "./")] = b
		}
	}
}

func TestFetchArchive(t *testing.T) {
	h := startHost(t)
	big := make([]byte, 5*ChunkBytes/2+12345) // incompressible: the archive spans several chunks
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(h.dir, ".sortie/worker/worker.log"), []byte("item 1 done\nitem 2 done\n"))
	writeFile(t, filepath.Join(h.dir, ".sortie/worker/blob"), big)
	writeFile(t, filepath.Join(h.dir, "outside.txt"), []byte("not archived"))

	ctx := context.Background()
	c, err := remote.Dial(ctx, remote.DialConfig{Addr: h.addr, User: "sortie", Signer: h.login, HostKey: h.hostKey})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	data, err := fetchArchive(ctx, c, 10<<20)
	if err != nil {
		t.Fatalf("fetchArchive: %v", err)
	}
	if len(data) <= 2*ChunkBytes {
		t.Fatalf("archive is %d bytes: the test wants more than two chunks", len(data))
	}
	files := untar(t, data)
	if string(files[".sortie/worker/worker.log"]) != "item 1 done\nitem 2 done\n" {
		t.Errorf("worker.log = %q", files[".sortie/worker/worker.log"])
	}
	if !bytes.Equal(files[".sortie/worker/blob"], big) {
		t.Errorf("blob differs after the round trip (%d bytes, want %d)", len(files[".sortie/worker/blob"]), len(big))
	}
	if _, ok := files["outside.txt"]; ok {
		t.Error("archived a file outside .sortie")
	}
	if left, _ := filepath.Glob(filepath.Join(h.dir, ".sortie-archive-*")); len(left) != 0 {
		t.Errorf("temporary archive left behind: %v", left)
	}

	t.Run("over the size limit: not retryable", func(t *testing.T) {
		_, err := fetchArchive(ctx, c, 1000)
		if !errors.Is(err, errNoRetry) || !strings.Contains(err.Error(), "limit 1000") {
			t.Fatalf("error = %v, want a size limit error", err)
		}
	})
}

func TestFetchArchiveWithoutLogs(t *testing.T) {
	h := startHost(t)
	ctx := context.Background()
	c, err := remote.Dial(ctx, remote.DialConfig{Addr: h.addr, User: "sortie", Signer: h.login, HostKey: h.hostKey})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data, err := fetchArchive(ctx, c, 1<<20)
	if err != nil {
		t.Fatalf("fetchArchive on an instance that never ran a step: %v", err)
	}
	names, err := checkTarGz(data)
	if err != nil || len(names) != 1 || strings.TrimSuffix(strings.TrimPrefix(names[0], "./"), "/") != ".sortie" {
		t.Fatalf("archive entries %v (%v), want only the empty .sortie directory", names, err)
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
	h := startHost(t)
	writeFile(t, filepath.Join(h.dir, ".sortie/worker/worker.log"), []byte("done\n"))
	st, api := newStore()
	fast := func() backoff.BackOff { return backoff.NewConstantBackOff(50 * time.Millisecond) }
	a := &archiver{dial: dialRemote, signer: h.login, store: st, maxBytes: 1 << 20, backoff: fast}
	ctx := context.Background()

	t.Run("archives and verifies", func(t *testing.T) {
		arch, err := a.archive(ctx, target{InstanceID: "i-00000001", JobID: "job-1", Addr: h.addr, User: "sortie", HostKey: h.hostKey}, 10*time.Second)
		if err != nil {
			t.Fatalf("archive: %v", err)
		}
		if arch.InstanceID != "i-00000001" || arch.Key != "logs/job-1/i-00000001.tar.gz" {
			t.Fatalf("archive %+v", arch)
		}
		if got := untar(t, api.get(st.bucket, arch.Key))[".sortie/worker/worker.log"]; string(got) != "done\n" {
			t.Fatalf("archived worker.log = %q", got)
		}
	})
	t.Run("host key mismatch ends at once", func(t *testing.T) {
		start := time.Now()
		_, err := a.archive(ctx, target{InstanceID: "i-00000002", JobID: "job-1", Addr: h.addr, User: "sortie", HostKey: newSigner(t).PublicKey()}, 10*time.Second)
		if !errors.Is(err, remote.ErrHostKeyMismatch) {
			t.Fatalf("error = %v, want a host key mismatch", err)
		}
		if time.Since(start) > 2*time.Second {
			t.Fatalf("took %s: a host key mismatch must not be retried", time.Since(start))
		}
	})
	t.Run("unknown host key: never connects", func(t *testing.T) {
		_, err := a.archive(ctx, target{InstanceID: "i-00000003", JobID: "job-1", Addr: h.addr, User: "sortie"}, 10*time.Second)
		if err == nil || !strings.Contains(err.Error(), "host key unknown") {
			t.Fatalf("error = %v, want a refusal", err)
		}
	})
	t.Run("unreachable: gives up after the timeout", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close() // nothing listens there now
		start := time.Now()
		_, err = a.archive(ctx, target{InstanceID: "i-00000004", JobID: "job-1", Addr: addr, User: "sortie", HostKey: h.hostKey}, 700*time.Millisecond)
		took := time.Since(start)
		if err == nil || !strings.Contains(err.Error(), "archiving logs of i-00000004") {
			t.Fatalf("error = %v", err)
		}
		if took < 600*time.Millisecond || took > 5*time.Second {
			t.Fatalf("gave up after %s, want about the 700ms timeout", took)
		}
	})
}
