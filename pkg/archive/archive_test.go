package archive_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"slices"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/sortie-fleet/sortie/pkg/archive"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
)

// tarGz writes a tar.gz of files (name → size of random bytes) to w.
func tarGz(w io.Writer, files map[string]int64) error {
	zw := gzip.NewWriter(w)
	tw := tar.NewWriter(zw)
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range files {
			if !yield(k) {
				return
			}
		}
	}) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: files[name]}); err != nil {
			return err
		}
		if _, err := io.CopyN(tw, rand.Reader, files[name]); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return zw.Close()
}

func TestPut(t *testing.T) {
	s := cloudtest.NewStack(t, cloudtest.NewCloud(t, localcloud.Options{}))
	st := archive.Store{API: s.S3, Bucket: s.Topology.BucketName()}
	ctx := t.Context()
	exists := func(key string) bool {
		_, err := s.S3.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(st.Bucket), Key: aws.String(key)})
		return err == nil
	}

	t.Run("a multipart archive is stored whole, SSE-KMS, with its digest", func(t *testing.T) {
		var want bytes.Buffer
		h := sha256.New()
		res, err := st.Put(ctx, "logs/big.tar.gz", 1<<30, func(w io.Writer) error {
			return tarGz(io.MultiWriter(w, &want, h), map[string]int64{".sortie/worker/worker.log": 13 << 20, "logs/a.log": 10})
		})
		if err != nil {
			t.Fatal(err)
		}
		if res.SizeBytes != int64(want.Len()) || res.SizeBytes <= 2*archive.PartBytes {
			t.Fatalf("size %d, streamed %d (want more than two parts)", res.SizeBytes, want.Len())
		}
		if res.SHA256 != hex.EncodeToString(h.Sum(nil)) {
			t.Errorf("digest %s, want %s", res.SHA256, hex.EncodeToString(h.Sum(nil)))
		}
		if !slices.Equal(res.Names, []string{".sortie/worker/worker.log", "logs/a.log"}) {
			t.Errorf("names %v", res.Names)
		}
		body, head := cloudtest.Download(t, s.S3, st.Bucket, "logs/big.tar.gz")
		if !bytes.Equal(body, want.Bytes()) {
			t.Errorf("stored object differs from the stream (%d bytes, want %d)", len(body), want.Len())
		}
		if head.ServerSideEncryption != "aws:kms" {
			t.Errorf("SSE %q, want aws:kms", head.ServerSideEncryption)
		}
	})

	t.Run("a small archive takes one PutObject", func(t *testing.T) {
		res, err := st.Put(ctx, "logs/small.tar.gz", 1<<20, func(w io.Writer) error {
			return tarGz(w, map[string]int64{".sortie/x": 100})
		})
		if err != nil || res.SizeBytes == 0 || !exists("logs/small.tar.gz") {
			t.Fatalf("res %+v, err %v", res, err)
		}
	})

	for _, tt := range []struct {
		name  string
		max   int64
		write func(w io.Writer) error
		want  error
	}{
		{"not gzip", 1 << 30, func(w io.Writer) error { _, err := io.CopyN(w, rand.Reader, 7<<20); return err }, archive.ErrNotTarGz},
		{"truncated tar.gz", 1 << 30, func(w io.Writer) error {
			var b bytes.Buffer
			if err := tarGz(&b, map[string]int64{"a": 6 << 20}); err != nil {
				return err
			}
			_, err := w.Write(b.Bytes()[:b.Len()-100])
			return err
		}, archive.ErrNotTarGz},
		{"data after the archive", 1 << 30, func(w io.Writer) error {
			if err := tarGz(w, map[string]int64{"a": 10}); err != nil {
				return err
			}
			_, err := w.Write([]byte("trailing garbage"))
			return err
		}, archive.ErrNotTarGz},
		{"over the limit", 6 << 20, func(w io.Writer) error { return tarGz(w, map[string]int64{"a": 8 << 20}) }, archive.ErrTooLarge},
		{"the source fails midway", 1 << 30, func(w io.Writer) error {
			return tarGz(&failAfter{w: w, n: 6 << 20}, map[string]int64{"a": 12 << 20})
		}, errSource},
	} {
		t.Run(tt.name+": refused, nothing stored", func(t *testing.T) {
			key := "logs/" + cloudtest.Unique("bad") + ".tar.gz"
			_, err := st.Put(ctx, key, tt.max, tt.write)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if exists(key) {
				t.Errorf("s3://%s/%s exists after a refused archive", st.Bucket, key)
			}
		})
	}

	t.Run("S3 refusing: an error, the writer stopped", func(t *testing.T) {
		bad := archive.Store{API: s.S3, Bucket: cloudtest.Unique("no-such-bucket")}
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		_, err := bad.Put(ctx, "logs/x.tar.gz", 1<<30, func(w io.Writer) error {
			return tarGz(w, map[string]int64{"a": 12 << 20})
		})
		if err == nil {
			t.Fatal("Put into a missing bucket succeeded")
		}
	})
}

var errSource = errors.New("source broke")

// failAfter passes n bytes to w, then fails with errSource.
type failAfter struct {
	w io.Writer
	n int
}

func (f *failAfter) Write(p []byte) (int, error) {
	if len(p) > f.n {
		n, _ := f.w.Write(p[:f.n])
		f.n -= n
		return n, errSource
	}
	n, err := f.w.Write(p)
	f.n -= n
	return n, err
}
