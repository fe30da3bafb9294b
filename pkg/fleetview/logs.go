package fleetview

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// Limits on reading log archives. Nothing is written to disk: archives are streamed from
// S3 through gunzip and tar to the output.
const (
	// MaxArchiveBytes is the largest (compressed) archive Logs reads.
	MaxArchiveBytes = 256 << 20
	// MaxExpandedBytes bounds what one archive may expand to (a gzip bomb stops here).
	MaxExpandedBytes = 2 << 30
	// MaxLineBytes is the longest line --tail keeps; longer lines are cut.
	MaxLineBytes = 64 << 10
)

// stateRoot is the directory the reaper archives (recipe.StateRoot).
const stateRoot = ".sortie/"

// S3API is the S3 calls reading log archives makes.
type S3API interface {
	ListObjectsV2(ctx context.Context, params *s3.ListObjectsV2Input, optFns ...func(*s3.Options)) (*s3.ListObjectsV2Output, error)
	GetObject(ctx context.Context, params *s3.GetObjectInput, optFns ...func(*s3.Options)) (*s3.GetObjectOutput, error)
}

var _ S3API = (*s3.Client)(nil)

var jobIDRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// CheckJobID rejects a job id that cannot name a log archive (the reaper files those
// under "_invalid").
func CheckJobID(jobID string) error {
	if !jobIDRE.MatchString(jobID) || jobID == "." || jobID == ".." {
		return fmt.Errorf("job id %q cannot name a log archive (want 1 to 64 of A-Z a-z 0-9 . _ -)", jobID)
	}
	return nil
}

// ArchivePrefix is the S3 key prefix of a job's log archives.
func ArchivePrefix(jobID string) string { return "logs/" + jobID + "/" }

// Archive is one instance's log archive.
type Archive struct {
	InstanceID string
	Key        string
	Size       int64
}

// NoArchivesError says a job (or one of its instances) has no log archive.
type NoArchivesError struct {
	Bucket, JobID, InstanceID string
	Found                     []string // with InstanceID: the instances that have one
}

func (e *NoArchivesError) Error() string {
	where := fmt.Sprintf("s3://%s/%s", e.Bucket, ArchivePrefix(e.JobID))
	if e.InstanceID == "" {
		return fmt.Sprintf("no log archives for job %s in %s (is the job finished?)", e.JobID, where)
	}
	return fmt.Sprintf("no log archive for instance %s of job %s in %s (archives: %s)",
		e.InstanceID, e.JobID, where, strings.Join(e.Found, ", "))
}

// ListArchives lists a job's log archives, across pages, sorted by instance id.
func ListArchives(ctx context.Context, api S3API, bucket, jobID string) ([]Archive, error) {
	if err := CheckJobID(jobID); err != nil {
		return nil, err
	}
	prefix := ArchivePrefix(jobID)
	var out []Archive
	p := s3.NewListObjectsV2Paginator(api, &s3.ListObjectsV2Input{Bucket: aws.String(bucket), Prefix: aws.String(prefix)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing s3://%s/%s: %w", bucket, prefix, err)
		}
		for _, o := range page.Contents {
			key := aws.ToString(o.Key)
			id, ok := strings.CutSuffix(strings.TrimPrefix(key, prefix), ".tar.gz")
			if !ok || id == "" || strings.Contains(id, "/") {
				continue
			}
			out = append(out, Archive{InstanceID: id, Key: key, Size: aws.ToInt64(o.Size)})
		}
	}
	slices.SortFunc(out, func(a, b Archive) int { return strings.Compare(a.InstanceID, b.InstanceID) })
	return out, nil
}

// Matcher returns the file selector for --file: with pattern empty, every *.log and stderr
// file; otherwise a path.Match pattern tried on the file's base name, its path in the
// archive, and its path below .sortie/ (so "work/*.log" selects .sortie/work/stdout.log).
func Matcher(pattern string) (func(name string) bool, error) {
	if pattern == "" {
		return func(name string) bool {
			base := path.Base(name)
			return base == "stderr" || strings.HasSuffix(base, ".log")
		}, nil
	}
	if _, err := path.Match(pattern, ""); err != nil {
		return nil, fmt.Errorf("--file %q: %w", pattern, err)
	}
	return func(name string) bool {
		clean := strings.TrimPrefix(name, "./")
		for _, cand := range []string{path.Base(name), clean, strings.TrimPrefix(clean, stateRoot)} {
			if ok, _ := path.Match(pattern, cand); ok {
				return true
			}
		}
		return false
	}, nil
}

// Printer prints files out of log archives, each under a `==> instance/path <==` header
// as tail(1) does.
type Printer struct {
	W     io.Writer
	Match func(name string) bool // which regular files to print
	Tail  int                    // > 0: only the last Tail lines of each file
	// MaxExpandedBytes bounds one archive's expanded size (0: MaxExpandedBytes).
	MaxExpandedBytes int64

	files int
}

// Files is the number of files printed so far.
func (p *Printer) Files() int { return p.files }

// Archive reads one instance's tar.gz from r and prints the files that match. Entries are
// only ever printed, never written anywhere, so hostile names (absolute, "..") are harmless.
func (p *Printer) Archive(instanceID string, r io.Reader) error {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return fmt.Errorf("archive of %s: not gzip: %w", instanceID, err)
	}
	limit := p.MaxExpandedBytes
	if limit <= 0 {
		limit = MaxExpandedBytes
	}
	lr := &io.LimitedReader{R: zr, N: limit + 1}
	tr := tar.NewReader(lr)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return p.readErr(instanceID, lr, limit, err)
		}
		if !h.FileInfo().Mode().IsRegular() || !p.Match(h.Name) {
			continue
		}
		if p.files > 0 {
			if _, err := io.WriteString(p.W, "\n"); err != nil {
				return err
			}
		}
		p.files++
		if _, err := fmt.Fprintf(p.W, "==> %s/%s <==\n", printable(instanceID), printable(h.Name)); err != nil {
			return err
		}
		if err := p.file(tr); err != nil {
			return p.readErr(instanceID, lr, limit, fmt.Errorf("%s: %w", printable(h.Name), err))
		}
	}
}

// readErr explains an error reading an archive, naming the expansion limit when that was
// the cause.
func (p *Printer) readErr(instanceID string, lr *io.LimitedReader, limit int64, err error) error {
	if lr.N <= 0 {
		return fmt.Errorf("archive of %s expands to more than %d bytes: not read further", instanceID, limit)
	}
	return fmt.Errorf("archive of %s: %w", instanceID, err)
}

// file prints one file's content, or its last p.Tail lines, ending with a newline.
func (p *Printer) file(r io.Reader) error {
	if p.Tail <= 0 {
		ew := &endWriter{w: p.W}
		if _, err := io.Copy(ew, r); err != nil {
			return err
		}
		return ew.finish()
	}
	lines, err := lastLines(r, p.Tail)
	if err != nil {
		return err
	}
	for _, l := range lines {
		if _, err := p.W.Write(append(l, '\n')); err != nil {
			return err
		}
	}
	return nil
}

// lastLines returns the last n lines of r without their newlines, each cut at MaxLineBytes.
func lastLines(r io.Reader, n int) ([][]byte, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	ring := make([][]byte, n)
	total := 0 // lines seen; the latest is at ring[(total-1)%n]
	var cur []byte
	push := func() {
		ring[total%n] = cur
		total++
		cur = nil
	}
	last := func() [][]byte {
		if total <= n {
			return ring[:total]
		}
		k := total % n
		return append(ring[k:], ring[:k]...)
	}
	started := false
	for {
		chunk, err := br.ReadSlice('\n')
		if len(chunk) > 0 {
			started = true
			body := bytes.TrimSuffix(chunk, []byte("\n"))
			if room := MaxLineBytes - len(cur); room > 0 {
				cur = append(cur, body[:min(room, len(body))]...)
			}
			if len(chunk) > len(body) { // ended by a newline
				push()
				started = false
			}
		}
		switch {
		case err == nil, errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF):
			if started {
				push()
			}
			return last(), nil
		default:
			return nil, err
		}
	}
}

// endWriter passes writes through and remembers whether the last byte was a newline.
type endWriter struct {
	w    io.Writer
	last byte
	any  bool
}

func (e *endWriter) Write(b []byte) (int, error) {
	if len(b) > 0 {
		e.last, e.any = b[len(b)-1], true
	}
	return e.w.Write(b)
}

// finish ends a non-empty output that lacks a final newline with one.
func (e *endWriter) finish() error {
	if e.any && e.last != '\n' {
		_, err := io.WriteString(e.w, "\n")
		return err
	}
	return nil
}

// printable quotes a name holding anything a terminal might act on.
func printable(s string) string {
	for _, r := range s {
		if !unicode.IsPrint(r) || r == '\\' {
			return strconv.Quote(s)
		}
	}
	return s
}

// LogsRequest is what `sortie logs` prints.
type LogsRequest struct {
	Bucket     string
	JobID      string
	InstanceID string // empty: every instance
	Pattern    string // see Matcher
	Tail       int    // > 0: the last Tail lines of each file
}

// PrintLogs prints the files of a job's log archives that match, instance by instance.
// It fails when the job (or the instance) has no archive, or no file matched.
func PrintLogs(ctx context.Context, api S3API, w io.Writer, req LogsRequest) error {
	match, err := Matcher(req.Pattern)
	if err != nil {
		return err
	}
	archives, err := ListArchives(ctx, api, req.Bucket, req.JobID)
	if err != nil {
		return err
	}
	if len(archives) == 0 {
		return &NoArchivesError{Bucket: req.Bucket, JobID: req.JobID}
	}
	if req.InstanceID != "" {
		var found []string
		for _, a := range archives {
			found = append(found, a.InstanceID)
		}
		archives = slices.DeleteFunc(archives, func(a Archive) bool { return a.InstanceID != req.InstanceID })
		if len(archives) == 0 {
			return &NoArchivesError{Bucket: req.Bucket, JobID: req.JobID, InstanceID: req.InstanceID, Found: found}
		}
	}
	p := &Printer{W: w, Match: match, Tail: req.Tail}
	for _, a := range archives {
		if err := printArchive(ctx, api, p, req.Bucket, a); err != nil {
			return err
		}
	}
	if p.Files() == 0 {
		what := "*.log or stderr"
		if req.Pattern != "" {
			what = strconv.Quote(req.Pattern)
		}
		return fmt.Errorf("no file matching %s in %d log archive(s) of job %s", what, len(archives), req.JobID)
	}
	return nil
}

// printArchive streams one archive from S3 into the printer, refusing one over
// MaxArchiveBytes.
func printArchive(ctx context.Context, api S3API, p *Printer, bucket string, a Archive) error {
	where := fmt.Sprintf("s3://%s/%s", bucket, a.Key)
	if a.Size > MaxArchiveBytes {
		return fmt.Errorf("%s is %d bytes, over the %d-byte limit: download it with the AWS CLI instead", where, a.Size, MaxArchiveBytes)
	}
	// Emulators store no checksums; the SDK would warn on stderr about each download.
	quiet := func(o *s3.Options) { o.DisableLogOutputChecksumValidationSkipped = true }
	out, err := api.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(a.Key)}, quiet)
	if err != nil {
		return fmt.Errorf("downloading %s: %w", where, err)
	}
	defer out.Body.Close()
	if n := aws.ToInt64(out.ContentLength); n > MaxArchiveBytes {
		return fmt.Errorf("%s is %d bytes, over the %d-byte limit: download it with the AWS CLI instead", where, n, MaxArchiveBytes)
	}
	lr := &io.LimitedReader{R: out.Body, N: MaxArchiveBytes + 1}
	if err := p.Archive(a.InstanceID, lr); err != nil {
		if lr.N <= 0 {
			return fmt.Errorf("%s is over the %d-byte limit: download it with the AWS CLI instead", where, MaxArchiveBytes)
		}
		return fmt.Errorf("reading %s: %w", where, err)
	}
	return nil
}

// PrintArchivedLog prints one file of an instance's log archive, from its line from
// (1-based; earlier lines are skipped): what `sortie logs --follow` shows of a log whose
// instance went away while it was followed. It returns a *NoArchivesError while the
// archive is not there yet, and an error when the archive lacks the file.
func PrintArchivedLog(ctx context.Context, api S3API, w io.Writer, bucket, jobID, instanceID, file string, from int) error {
	archives, err := ListArchives(ctx, api, bucket, jobID)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(archives, func(a Archive) bool { return a.InstanceID == instanceID })
	if i < 0 {
		return &NoArchivesError{Bucket: bucket, JobID: jobID, InstanceID: instanceID}
	}
	want := path.Clean(file)
	skip := &skipLines{w: w, n: from}
	p := &Printer{W: skip, Match: func(name string) bool { return path.Clean(name) == want }}
	if err := printArchive(ctx, api, p, bucket, archives[i]); err != nil {
		return err
	}
	if p.Files() == 0 {
		return fmt.Errorf("the archive of %s holds no %s", instanceID, printable(file))
	}
	return nil
}

// skipLines drops the `==> … <==` header and the lines before line n, passing the rest.
type skipLines struct {
	w    io.Writer
	n    int // the first line to pass (1-based), after the header
	seen int // newlines seen, the header's included
}

func (s *skipLines) Write(b []byte) (int, error) {
	total := len(b)
	for len(b) > 0 && s.seen < s.n {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return total, nil
		}
		b = b[i+1:]
		s.seen++
	}
	if len(b) > 0 {
		if _, err := s.w.Write(b); err != nil {
			return 0, err
		}
	}
	return total, nil
}
