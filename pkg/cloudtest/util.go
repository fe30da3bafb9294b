package cloudtest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/hex"
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

	"github.com/sortie-fleet/sortie/pkg/events"
)

// EnvRequireInterop names the variable that, set to 1 (as CI sets it), turns the skip of a
// test whose tool is missing into a failure.
const EnvRequireInterop = "SORTIE_REQUIRE_INTEROP"

// MissingTool skips a test that needs a tool a bare machine may lack, or fails it when
// SORTIE_REQUIRE_INTEROP=1.
func MissingTool(tb testing.TB, why string) {
	tb.Helper()
	if os.Getenv(EnvRequireInterop) == "1" {
		tb.Fatal(why + "; " + EnvRequireInterop + "=1 makes it required")
	}
	tb.Skip(why)
}

// Unique returns prefix followed by 8 random hex digits: a name of the test's own (kumo's
// state is global to the process).
func Unique(prefix string) string {
	var b [4]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return prefix + hex.EncodeToString(b[:])
}

// Setenv sets every variable for the test's duration.
func Setenv(tb testing.TB, vars map[string]string) {
	tb.Helper()
	for k, v := range vars {
		tb.Setenv(k, v)
	}
}

// Encode encodes e as a service would publish it.
func Encode(tb testing.TB, e events.Event) []byte {
	tb.Helper()
	b, err := events.Encode(e)
	if err != nil {
		tb.Fatalf("encoding %s: %v", e.EventType(), err)
	}
	return b
}

// PollInterval is how often Eventually checks.
const PollInterval = 20 * time.Millisecond

// Eventually calls check every PollInterval until it returns nil, and fails the test with
// check's last error when timeout passes first.
func Eventually(tb testing.TB, timeout time.Duration, check func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("after %s: %v", timeout, err)
		}
		time.Sleep(PollInterval)
	}
}

// Buffer is a bytes.Buffer that is safe to write from one goroutine (a service's logger, a
// process's stderr) while the test reads it.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what was written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// FreeAddr returns a loopback address nothing listens on (something did a moment ago).
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		tb.Fatal(err)
	}
	return addr
}

// WriteFile writes a file as os.WriteFile does, creating its directory first.
func WriteFile(tb testing.TB, name string, data []byte, perm os.FileMode) {
	tb.Helper()
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(name, data, perm); err != nil {
		tb.Fatal(err)
	}
}

// Untar reads a tar.gz completely, failing the test unless it is valid (its gzip checksum
// included), and returns its regular files by name (without a leading "./").
func Untar(tb testing.TB, data []byte) map[string]string {
	tb.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		tb.Fatalf("archive is not gzip: %v", err)
	}
	tr := tar.NewReader(zr)
	files := map[string]string{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			// The end-of-archive marker; the rest of the stream must be a complete gzip.
			if _, err := io.Copy(io.Discard, zr); err != nil {
				tb.Fatalf("archive is not a complete gzip: %v", err)
			}
			return files
		}
		if err != nil {
			tb.Fatalf("archive is not a valid tar: %v", err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			tb.Fatalf("archive is not a valid tar: %v", err)
		}
		if h.Typeflag == tar.TypeReg {
			files[strings.TrimPrefix(h.Name, "./")] = string(b)
		}
	}
}

// Download reads an object and its metadata (HeadObject: what S3 stored).
func Download(tb testing.TB, client *s3.Client, bucket, key string) ([]byte, *s3.HeadObjectOutput) {
	tb.Helper()
	ctx := tb.Context()
	head, err := client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		tb.Fatalf("HeadObject s3://%s/%s: %v", bucket, key, err)
	}
	obj, err := client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		tb.Fatalf("GetObject s3://%s/%s: %v", bucket, key, err)
	}
	defer obj.Body.Close()
	body, err := io.ReadAll(obj.Body)
	if err != nil {
		tb.Fatalf("reading s3://%s/%s: %v", bucket, key, err)
	}
	return body, head
}

// Recorder is a publisher for handler tests: it records every event it is given, or
// returns Err when that is set. It is not safe for concurrent use.
type Recorder struct {
	Published []events.Event
	Err       error
	mu        sync.Mutex
}

// Publish records e, or returns r.Err. It is safe for concurrent use.
func (r *Recorder) Publish(_ context.Context, e events.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.Err != nil {
		return r.Err
	}
	r.Published = append(r.Published, e)
	return nil
}
