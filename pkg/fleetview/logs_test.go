package fleetview

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
)

type entry struct {
	name string
	body string
	typ  byte // 0: regular file
}

// tarGz builds a tar.gz of the entries, in order.
func tarGz(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: 0o600, Size: int64(len(e.body)), Typeflag: tar.TypeReg}
		switch e.typ {
		case tar.TypeDir:
			h.Typeflag, h.Size, h.Mode = tar.TypeDir, 0, 0o700
		case tar.TypeSymlink:
			h.Typeflag, h.Size, h.Linkname = tar.TypeSymlink, 0, e.body
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := io.WriteString(tw, e.body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// demoArchive is what the reaper stores for one demo-worker instance.
func demoArchive(t *testing.T) []byte {
	return tarGz(t,
		entry{name: ".sortie/", typ: tar.TypeDir},
		entry{name: ".sortie/job.env", body: "SORTIE_JOB_ID=j1\n"},
		entry{name: ".sortie/work/", typ: tar.TypeDir},
		entry{name: ".sortie/work/stdout.log", body: "one\ntwo\nthree\n"},
		entry{name: ".sortie/work/stderr", body: "warn a\nwarn b"},
		entry{name: ".sortie/work/pid", body: "42\n"},
		entry{name: ".sortie/work/exit_code", body: "0\n"},
	)
}

func TestPrinterArchive(t *testing.T) {
	tests := []struct {
		name    string
		pattern string
		tail    int
		want    string
	}{
		{"default: logs and stderr", "", 0,
			"==> i-1/.sortie/work/stdout.log <==\none\ntwo\nthree\n\n==> i-1/.sortie/work/stderr <==\nwarn a\nwarn b\n"},
		{"tail", "", 2,
			"==> i-1/.sortie/work/stdout.log <==\ntwo\nthree\n\n==> i-1/.sortie/work/stderr <==\nwarn a\nwarn b\n"},
		{"tail longer than the file", "", 10,
			"==> i-1/.sortie/work/stdout.log <==\none\ntwo\nthree\n\n==> i-1/.sortie/work/stderr <==\nwarn a\nwarn b\n"},
		{"base name pattern", "exit_code", 0, "==> i-1/.sortie/work/exit_code <==\n0\n"},
		{"path below .sortie", "work/p*", 0, "==> i-1/.sortie/work/pid <==\n42\n"},
		{"full path", ".sortie/job.env", 0, "==> i-1/.sortie/job.env <==\nSORTIE_JOB_ID=j1\n"},
		{"no match", "nothing", 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			match, err := Matcher(tt.pattern)
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			p := &Printer{W: &out, Match: match, Tail: tt.tail}
			if err := p.Archive("i-1", bytes.NewReader(demoArchive(t))); err != nil {
				t.Fatal(err)
			}
			if out.String() != tt.want {
				t.Errorf("output:\n%s\nwant:\n%s", out.String(), tt.want)
			}
		})
	}
}

func TestMatcherRejectsBadPattern(t *testing.T) {
	if _, err := Matcher("[oops"); err == nil || !strings.Contains(err.Error(), "[oops") {
		t.Fatalf("want an error naming the pattern, got %v", err)
	}
}

// Hostile entries are only ever printed: nothing reaches the file system, whatever the name.
func TestPrinterHostileEntries(t *testing.T) {
	archive := tarGz(t,
		entry{name: "/etc/evil.log", body: "absolute\n"},
		entry{name: "../../escape.log", body: "dotdot\n"},
		entry{name: ".sortie/link.log", body: "/etc/passwd", typ: tar.TypeSymlink},
		entry{name: ".sortie/\x1b[2Jclear.log", body: "escape\n"},
	)
	match, _ := Matcher("")
	var out bytes.Buffer
	p := &Printer{W: &out, Match: match}
	t.Chdir(t.TempDir()) // were anything written relative to the working directory, it would land here
	if err := p.Archive("i-1", bytes.NewReader(archive)); err != nil {
		t.Fatal(err)
	}
	want := "==> i-1//etc/evil.log <==\nabsolute\n\n==> i-1/../../escape.log <==\ndotdot\n\n" +
		"==> i-1/\".sortie/\\x1b[2Jclear.log\" <==\nescape\n"
	if out.String() != want {
		t.Errorf("output:\n%q\nwant:\n%q", out.String(), want)
	}
	if p.Files() != 3 {
		t.Errorf("files = %d, want 3 (the symlink is not followed or printed)", p.Files())
	}
}

func TestPrinterStopsAtExpansionLimit(t *testing.T) {
	archive := tarGz(t, entry{name: ".sortie/work/stdout.log", body: strings.Repeat("x", 1<<20)})
	match, _ := Matcher("")
	p := &Printer{W: io.Discard, Match: match, MaxExpandedBytes: 64 << 10}
	err := p.Archive("i-1", bytes.NewReader(archive))
	if err == nil || !strings.Contains(err.Error(), "expands to more than 65536 bytes") {
		t.Fatalf("want the expansion limit error, got %v", err)
	}
}

func TestPrinterRejectsNonGzip(t *testing.T) {
	p := &Printer{W: io.Discard, Match: func(string) bool { return true }}
	if err := p.Archive("i-1", strings.NewReader("plain text")); err == nil || !strings.Contains(err.Error(), "not gzip") {
		t.Fatalf("want a gzip error, got %v", err)
	}
}

func TestLastLines(t *testing.T) {
	long := strings.Repeat("y", MaxLineBytes+10)
	tests := []struct {
		name, in string
		n        int
		want     []string
	}{
		{"empty", "", 3, nil},
		{"no final newline", "a\nb\nc", 2, []string{"b", "c"}},
		{"final newline", "a\nb\nc\n", 2, []string{"b", "c"}},
		{"blank lines count", "a\n\n\n", 2, []string{"", ""}},
		{"wraps the ring many times", strings.Repeat("z\n", 1000) + "last\n", 2, []string{"z", "last"}},
		{"long line is cut", "a\n" + long + "\nb\n", 2, []string{long[:MaxLineBytes], "b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := lastLines(strings.NewReader(tt.in), tt.n)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d lines, want %d", len(got), len(tt.want))
			}
			for i := range got {
				if string(got[i]) != tt.want[i] {
					t.Errorf("line %d = %.20q (%d bytes), want %.20q (%d bytes)", i, got[i], len(got[i]), tt.want[i], len(tt.want[i]))
				}
			}
		})
	}
}

// fakeS3 serves objects from a map, one key per ListObjectsV2 page.
type fakeS3 struct {
	objects map[string][]byte
	size    map[string]int64 // overrides the listed and returned size
	gets    []string
}

func (f *fakeS3) ListObjectsV2(_ context.Context, in *s3.ListObjectsV2Input, _ ...func(*s3.Options)) (*s3.ListObjectsV2Output, error) {
	var keys []string
	for k := range f.objects {
		if strings.HasPrefix(k, aws.ToString(in.Prefix)) && k > aws.ToString(in.ContinuationToken) {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return &s3.ListObjectsV2Output{}, nil
	}
	first := keys[0]
	for _, k := range keys {
		first = min(first, k)
	}
	out := &s3.ListObjectsV2Output{Contents: []s3types.Object{{Key: aws.String(first), Size: aws.Int64(f.sizeOf(first))}}}
	if len(keys) > 1 {
		out.IsTruncated, out.NextContinuationToken = aws.Bool(true), aws.String(first)
	}
	return out, nil
}

func (f *fakeS3) GetObject(_ context.Context, in *s3.GetObjectInput, _ ...func(*s3.Options)) (*s3.GetObjectOutput, error) {
	k := aws.ToString(in.Key)
	f.gets = append(f.gets, k)
	b, ok := f.objects[k]
	if !ok {
		return nil, errors.New("NoSuchKey")
	}
	return &s3.GetObjectOutput{Body: io.NopCloser(bytes.NewReader(b)), ContentLength: aws.Int64(f.sizeOf(k))}, nil
}

func (f *fakeS3) sizeOf(k string) int64 {
	if n, ok := f.size[k]; ok {
		return n
	}
	return int64(len(f.objects[k]))
}

var _ S3API = (*fakeS3)(nil)

func TestPrintLogs(t *testing.T) {
	one := tarGz(t, entry{name: ".sortie/work/stdout.log", body: "from one\n"})
	two := tarGz(t, entry{name: ".sortie/work/stdout.log", body: "from two\n"})
	api := &fakeS3{objects: map[string][]byte{
		"logs/j1/i-2.tar.gz":         two,
		"logs/j1/i-1.tar.gz":         one,
		"logs/j1/nested/i-3.tar.gz":  one, // not an instance archive
		"logs/j1/notes.txt":          []byte("x"),
		"logs/j10/i-9.tar.gz":        one, // another job sharing the prefix text
		"logs/big/i-1.tar.gz":        one,
		"logs/quiet/i-1.tar.gz":      tarGz(t, entry{name: ".sortie/work/pid", body: "1\n"}),
		"logs/broken/i-1.tar.gz":     []byte("not gzip"),
		"logs/j1-other/i-1.tar.gz":   one,
		"logs/_invalid/i-1.tar.gz":   one,
		"logs/otherjob/i-1.tar.gzip": one,
	}, size: map[string]int64{"logs/big/i-1.tar.gz": MaxArchiveBytes + 1}}

	tests := []struct {
		name     string
		req      LogsRequest
		want     string
		wantErr  string
		wantGets int
	}{
		{name: "every instance in order", req: LogsRequest{JobID: "j1"},
			want: "==> i-1/.sortie/work/stdout.log <==\nfrom one\n\n==> i-2/.sortie/work/stdout.log <==\nfrom two\n", wantGets: 2},
		{name: "one instance", req: LogsRequest{JobID: "j1", InstanceID: "i-2"},
			want: "==> i-2/.sortie/work/stdout.log <==\nfrom two\n", wantGets: 1},
		{name: "unknown instance", req: LogsRequest{JobID: "j1", InstanceID: "i-7"},
			wantErr: "no log archive for instance i-7 of job j1 in s3://B/logs/j1/ (archives: i-1, i-2)"},
		{name: "unknown job", req: LogsRequest{JobID: "nope"},
			wantErr: "no log archives for job nope in s3://B/logs/nope/ (is the job finished?)"},
		{name: "job id that names no archive", req: LogsRequest{JobID: "../x"}, wantErr: `job id "../x" cannot name a log archive`},
		{name: "archive over the limit is refused before download", req: LogsRequest{JobID: "big"},
			wantErr: "s3://B/logs/big/i-1.tar.gz is 268435457 bytes, over the 268435456-byte limit"},
		{name: "nothing matches", req: LogsRequest{JobID: "quiet"}, wantErr: "no file matching *.log or stderr in 1 log archive(s) of job quiet", wantGets: 1},
		{name: "nothing matches a pattern", req: LogsRequest{JobID: "j1", Pattern: "x*"}, wantErr: `no file matching "x*" in 2 log archive(s) of job j1`, wantGets: 2},
		{name: "not an archive", req: LogsRequest{JobID: "broken"}, wantErr: "reading s3://B/logs/broken/i-1.tar.gz: archive of i-1: not gzip", wantGets: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			api.gets = nil
			tt.req.Bucket = "B"
			var out bytes.Buffer
			err := PrintLogs(t.Context(), api, &out, tt.req)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("want error %q, got %v", tt.wantErr, err)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if out.String() != tt.want {
				t.Errorf("output:\n%s\nwant:\n%s", out.String(), tt.want)
			}
			if len(api.gets) != tt.wantGets {
				t.Errorf("downloaded %v, want %d archives", api.gets, tt.wantGets)
			}
		})
	}
}

func TestNoArchivesErrorIsTyped(t *testing.T) {
	err := PrintLogs(t.Context(), &fakeS3{}, io.Discard, LogsRequest{Bucket: "b", JobID: "j"})
	var na *NoArchivesError
	if !errors.As(err, &na) || na.JobID != "j" {
		t.Fatalf("want a NoArchivesError for j, got %v", err)
	}
}

// TestPrintArchivedLog: the rest of one followed log from its instance's archive, from a
// given line; an archive not there yet is a NoArchivesError (the caller waits for it).
func TestPrintArchivedLog(t *testing.T) {
	arch := tarGz(t, entry{name: ".sortie/", typ: tar.TypeDir}, entry{name: "work.log", body: "l1\nl2\nl3\nl4"}, entry{name: ".sortie/w/stderr", body: "e\n"})
	api := &fakeS3{objects: map[string][]byte{"logs/j1/i-1.tar.gz": arch}}
	tests := []struct {
		name, instance, file string
		from                 int
		want, err            string
	}{
		{"from line 3", "i-1", "work.log", 3, "l3\nl4\n", ""},
		{"from the start", "i-1", "./work.log", 1, "l1\nl2\nl3\nl4\n", ""},
		{"past the end", "i-1", "work.log", 5, "", ""},
		{"no such file", "i-1", "other.log", 1, "", "holds no other.log"},
		{"not archived yet", "i-2", "work.log", 1, "", "no log archive for instance i-2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			err := PrintArchivedLog(context.Background(), api, &out, "b", "j1", tc.instance, tc.file, tc.from)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || out.String() != tc.want {
				t.Errorf("got %q, %v; want %q", out.String(), err, tc.want)
			}
		})
	}
	var none *NoArchivesError
	if err := PrintArchivedLog(context.Background(), api, io.Discard, "b", "j1", "i-2", "work.log", 1); !errors.As(err, &none) {
		t.Errorf("not yet archived: %v, want a *NoArchivesError", err)
	}
}
