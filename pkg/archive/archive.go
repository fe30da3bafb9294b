// Package archive streams an instance's logs into S3: a tar.gz made on the instance and read
// over SSH is piped into a multipart upload (SSE-KMS) and checked while it passes, so the
// memory it takes is a fixed buffer whatever the size of the logs.
package archive

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager"
	tmtypes "github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/sortie-fleet/sortie/pkg/events"
)

// The upload's buffers: PartBytes (S3's smallest part) times UploadConcurrency+1 parts is
// all an archive holds in memory while it is uploaded (the upload manager's part pool),
// plus the SSH channel's window.
const (
	PartBytes         = 5 << 20
	UploadConcurrency = 2
)

// ErrTooLarge says an archive grew past its limit; trying again cannot help.
var ErrTooLarge = errors.New("archive too large")

// ErrNotTarGz says the stream was not a complete tar.gz; the upload was abandoned.
var ErrNotTarGz = errors.New("not a complete tar.gz")

// ObjectAPI is the S3 calls of a Store: the upload manager's, and DeleteObject.
type ObjectAPI interface {
	transfermanager.S3APIClient
	DeleteObject(ctx context.Context, params *s3.DeleteObjectInput, optFns ...func(*s3.Options)) (*s3.DeleteObjectOutput, error)
}

var _ ObjectAPI = (*s3.Client)(nil)

// Store uploads archives to one bucket with SSE-KMS and verifies them.
type Store struct {
	API      ObjectAPI // an *s3.Client
	Bucket   string
	KMSKeyID string // empty: S3's choice for aws:kms
}

// Result is an archive stored and verified.
type Result struct {
	events.Archive
	SHA256 string   // hex, of the bytes streamed
	Names  []string // the tar entries' names
}

// Put runs write with a writer whose bytes go to s3://Bucket/key as they are written, and
// verifies the object: the stream must be a complete tar.gz of at most maxBytes (checked
// as it passes; otherwise the upload is abandoned), and HeadObject must show as many bytes
// as were streamed, SSE aws:kms and the SHA-256 computed on the way. An error from write
// abandons the upload. Nothing is buffered beyond the upload's parts.
func (st Store) Put(ctx context.Context, key string, maxBytes int64, write func(w io.Writer) error) (Result, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	src, srcW := io.Pipe()
	go func() { srcW.CloseWithError(write(srcW)) }() // nil: EOF
	defer src.Close()                                // write sees an error if the upload gives up early

	check := newTarCheck()
	sum := sha256.New()
	body := &meter{r: src, max: maxBytes, sum: sum, check: check}

	in := &transfermanager.UploadObjectInput{
		Bucket:               aws.String(st.Bucket),
		Key:                  aws.String(key),
		Body:                 body,
		ContentType:          aws.String("application/gzip"),
		ServerSideEncryption: tmtypes.ServerSideEncryptionAwsKms,
	}
	if st.KMSKeyID != "" {
		in.SSEKMSKeyID = aws.String(st.KMSKeyID)
	}
	tm := transfermanager.New(st.API, func(o *transfermanager.Options) {
		o.PartSizeBytes = PartBytes
		o.MultipartUploadThreshold = PartBytes
		o.Concurrency = UploadConcurrency
	})
	_, upErr := tm.UploadObject(ctx, in)
	names, checkErr := check.finish(upErr)
	switch {
	case body.err != nil:
		return Result{}, fmt.Errorf("streaming s3://%s/%s: %w", st.Bucket, key, body.err)
	case upErr != nil:
		return Result{}, fmt.Errorf("uploading s3://%s/%s: %w", st.Bucket, key, upErr)
	case checkErr != nil:
		// Complete as an upload, but not as an archive: do not leave it for anyone to trust.
		_, _ = st.API.DeleteObject(context.WithoutCancel(ctx), &s3.DeleteObjectInput{Bucket: aws.String(st.Bucket), Key: aws.String(key)})
		return Result{}, fmt.Errorf("streaming s3://%s/%s: %w", st.Bucket, key, checkErr)
	}
	arch, err := st.Verify(ctx, key, body.n)
	if err != nil {
		return Result{}, err
	}
	return Result{Archive: arch, SHA256: hex.EncodeToString(sum.Sum(nil)), Names: names}, nil
}

// Verify checks that the object at key exists, is encrypted with aws:kms and, when want is
// not negative, holds want bytes.
func (st Store) Verify(ctx context.Context, key string, want int64) (events.Archive, error) {
	head, err := st.API.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(st.Bucket), Key: aws.String(key)})
	if err != nil {
		return events.Archive{}, fmt.Errorf("verifying s3://%s/%s: %w", st.Bucket, key, err)
	}
	got := aws.ToInt64(head.ContentLength)
	if want >= 0 && got != want {
		return events.Archive{}, fmt.Errorf("verifying s3://%s/%s: %d bytes stored, %d streamed", st.Bucket, key, got, want)
	}
	if head.ServerSideEncryption != s3types.ServerSideEncryptionAwsKms {
		return events.Archive{}, fmt.Errorf("verifying s3://%s/%s: server-side encryption %q, want aws:kms", st.Bucket, key, head.ServerSideEncryption)
	}
	return events.Archive{Bucket: st.Bucket, Key: key, SizeBytes: got}, nil
}

// meter is the upload's body: it counts, hashes and feeds the tar.gz check with every byte
// read, and fails the read past max bytes or when the check has failed.
type meter struct {
	r     io.Reader
	n     int64
	max   int64
	sum   hash.Hash
	check *tarCheck
	err   error // why meter failed a read (not the source's own errors)
}

func (m *meter) Read(p []byte) (int, error) {
	if m.err != nil {
		return 0, m.err
	}
	n, err := m.r.Read(p)
	if n > 0 {
		m.n += int64(n)
		if m.n > m.max {
			m.err = fmt.Errorf("%w: more than %d bytes", ErrTooLarge, m.max)
			return 0, m.err
		}
		m.sum.Write(p[:n])
		if werr := m.check.write(p[:n]); werr != nil {
			m.err = werr
			return 0, m.err
		}
	}
	return n, err
}

// tarCheck reads a tar.gz as it streams, in a goroutine of its own, and says whether it was
// complete.
type tarCheck struct {
	w     *io.PipeWriter
	done  chan struct{}
	names []string
	err   error
	once  sync.Once
}

func newTarCheck() *tarCheck {
	r, w := io.Pipe()
	c := &tarCheck{w: w, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		c.names, c.err = readTarGz(r)
		// A reader that stopped closes the pipe, so a write never blocks on it: the next one
		// fails (readTarGz reads to EOF when it succeeds, so that is only after an error).
		r.Close()
	}()
	return c
}

// write hands p to the reader; it fails once the reader found the stream broken.
func (c *tarCheck) write(p []byte) error {
	if _, err := c.w.Write(p); err != nil {
		<-c.done
		if c.err == nil {
			return fmt.Errorf("%w: data after its end", ErrNotTarGz)
		}
		return c.err
	}
	return nil
}

// finish ends the stream (abandoned when upErr is set) and returns the reader's verdict.
func (c *tarCheck) finish(upErr error) ([]string, error) {
	c.once.Do(func() {
		if upErr != nil {
			c.w.CloseWithError(upErr)
		} else {
			c.w.Close()
		}
	})
	<-c.done
	return c.names, c.err
}

// readTarGz reads a whole tar.gz and returns the names of its entries.
func readTarGz(r io.Reader) ([]string, error) {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("%w: not gzip: %w", ErrNotTarGz, err)
	}
	tr := tar.NewReader(zr)
	var names []string
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrNotTarGz, err)
		}
		if _, err := io.Copy(io.Discard, tr); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrNotTarGz, h.Name, err)
		}
		names = append(names, h.Name)
	}
	if _, err := io.Copy(io.Discard, zr); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotTarGz, err)
	}
	if err := zr.Close(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotTarGz, err)
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("%w: empty tar", ErrNotTarGz)
	}
	return names, nil
}

// ReadTarGz reads a whole tar.gz from r, as Put checks it, and returns its entries' names.
func ReadTarGz(r io.Reader) ([]string, error) { return readTarGz(r) }
