package reaper

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/cenkalti/backoff/v5"

	"github.com/sortie-fleet/sortie/pkg/archive"
	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
	"github.com/sortie-fleet/sortie/pkg/sshaddr"
	"github.com/sortie-fleet/sortie/pkg/tags"
)

// envCloudDir asks the test binary to serve a local cloud (instances in that directory)
// instead of running tests: the memory measurements run the local cloud, its instances and
// kumo (which keeps S3 objects in memory) in a process of their own, so that only the
// reaper's side of an archive counts.
const envCloudDir = "SORTIE_TEST_CLOUD_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(envCloudDir); dir != "" {
		os.Exit(serveCloud(dir))
	}
	os.Exit(m.Run())
}

// serveCloud serves a local cloud, prints its URL, and stops when its standard input
// closes (the parent ended or died).
func serveCloud(dir string) int {
	cloud, err := localcloud.New(localcloud.Options{Addr: "127.0.0.1:0", DataDir: dir, BootDelay: cloudtest.BootDelay, ShutdownDelay: cloudtest.ShutdownDelay})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(cloud.URL())
	_, _ = io.Copy(io.Discard, os.Stdin)
	_ = cloud.Close()
	return 0
}

// remoteCloud is a local cloud in a child process.
type remoteCloud struct {
	url string
	dir string
}

func startRemoteCloud(tb testing.TB) remoteCloud {
	tb.Helper()
	dir := tb.TempDir()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), envCloudDir+"="+dir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = stdin.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			tb.Errorf("the local cloud process did not stop within 30s of its stdin closing")
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		tb.Fatalf("reading the local cloud's URL: %v", err)
	}
	return remoteCloud{url: strings.TrimSpace(line), dir: dir}
}

// bigLogTarget launches one instance on a local cloud of its own process, writes an
// incompressible log of size bytes into its .sortie, and returns the archiver (its S3 in
// that process too) and the target the reaper would make of it.
func bigLogTarget(tb testing.TB, size int64) (*archiver, target) {
	tb.Helper()
	rc := startRemoteCloud(tb)
	cfg := awsx.ForEndpoint(rc.url)
	ec2c := ec2.NewFromConfig(cfg)
	s3c := s3.NewFromConfig(cfg, awsx.S3Options(cfg))
	bucket := cloudtest.Unique("mem") + "-logs"
	if _, err := s3c.CreateBucket(tb.Context(), &s3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
		tb.Fatal(err)
	}
	key := cloudtest.NewKeyPair(tb, ec2c, cloudtest.Unique("mem"))
	hk := cloudtest.NewHostKey(tb)
	in := cloudtest.Launch(tb, ec2c, 1, cloudtest.LaunchSpec{KeyName: key.Name, UserData: hk.UserData, Tags: map[string]string{tags.JobID: "job-mem"}})[0]
	desc := cloudtest.DescribeInstances(tb, ec2c, &ec2.DescribeInstancesInput{InstanceIds: []string{in.ID}})[0]
	addr, err := sshaddr.Mode{Local: true}.Of(desc)
	if err != nil {
		tb.Fatal(err)
	}
	log := filepath.Join(rc.dir, in.ID, ".sortie/worker/big.log")
	if err := os.MkdirAll(filepath.Dir(log), 0o700); err != nil {
		tb.Fatal(err)
	}
	f, err := os.Create(log)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.Reader, size); err != nil {
		tb.Fatal(err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
	a := &archiver{
		dial: dialRemote, signer: key.Signer, maxBytes: DefaultArchiveMaxBytes,
		store:   archive.Store{API: s3c, Bucket: bucket},
		backoff: func() backoff.BackOff { return &backoff.StopBackOff{} },
	}
	return a, target{InstanceID: in.ID, JobID: "job-mem", Addr: addr, User: "sortie", HostKey: hk.Public}
}

// memoryUse is what one archive took of this process's memory.
type memoryUse struct {
	heapPeak uint64        // the highest heap (live and unswept objects) seen, above the start
	rssPeak  int64         // VmHWM above VmRSS at the start (-1: unknown)
	took     time.Duration // the archive's duration
}

// measure runs f, sampling the heap every 2 ms. It resets the kernel's peak RSS first
// (clear_refs 5), so VmHWM afterwards is f's peak.
func measure(f func()) memoryUse {
	runtime.GC()
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	heap := func() uint64 { metrics.Read(sample); return sample[0].Value.Uint64() }
	base := heap()
	rssBase := procStatus("VmRSS")
	reset := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
	var peak uint64
	var mu sync.Mutex
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			h := heap()
			mu.Lock()
			peak = max(peak, h)
			mu.Unlock()
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	start := time.Now()
	f()
	took := time.Since(start)
	close(stop)
	<-done
	u := memoryUse{took: took, rssPeak: -1}
	if peak > base {
		u.heapPeak = peak - base
	}
	if hwm := procStatus("VmHWM"); reset && hwm >= 0 && rssBase >= 0 {
		u.rssPeak = hwm - rssBase
	}
	return u
}

// procStatus reads a size field of /proc/self/status in bytes (-1: unknown).
func procStatus(field string) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, l := range bytes.Split(b, []byte("\n")) {
		if name, rest, ok := strings.Cut(string(l), ":"); ok && name == field {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return -1
			}
			return kb << 10
		}
	}
	return -1
}

const mib = 1 << 20

// maxArchiveHeap is the bound the streaming archive keeps to whatever the log's size: the
// upload's parts (archive.PartBytes × (archive.UploadConcurrency+1)), SSH's window, and
// the buffers of gzip and tar, with room to spare.
const maxArchiveHeap = 48 * mib

// TestArchiveMemoryBounded archives a 128 MiB incompressible log and asserts the heap grew
// far less than the log: the archive streams, it is never held whole.
func TestArchiveMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("archives a 128 MiB log (-short)")
	}
	const size = 128 * mib
	a, tg := bigLogTarget(t, size)
	var got archiveOutcome
	use := measure(func() { got = archiveOnce(t.Context(), a, tg) })
	if got.err != nil {
		t.Fatalf("archive: %v", got.err)
	}
	if got.size < size {
		t.Fatalf("archive of %d bytes, want at least the log's %d (incompressible)", got.size, size)
	}
	t.Logf("log %d MiB: archive %d MiB in %s; heap peak +%.1f MiB, RSS peak +%.1f MiB",
		size/mib, got.size/mib, use.took.Round(time.Millisecond), float64(use.heapPeak)/mib, float64(use.rssPeak)/mib)
	if use.heapPeak > maxArchiveHeap {
		t.Errorf("heap grew by %.1f MiB archiving a %d MiB log, want at most %d MiB", float64(use.heapPeak)/mib, size/mib, maxArchiveHeap/mib)
	}
}

// BenchmarkArchive1GiB archives a 1 GiB incompressible log from an instance to S3 and
// reports the heap's and RSS's peak growth beside the log's size.
func BenchmarkArchive1GiB(b *testing.B) {
	const size = 1 << 30
	a, tg := bigLogTarget(b, size)
	b.SetBytes(size)
	b.ResetTimer()
	var worst memoryUse
	for range b.N {
		var got archiveOutcome
		use := measure(func() { got = archiveOnce(b.Context(), a, tg) })
		if got.err != nil {
			b.Fatalf("archive: %v", got.err)
		}
		worst.heapPeak = max(worst.heapPeak, use.heapPeak)
		worst.rssPeak = max(worst.rssPeak, use.rssPeak)
		worst.took = max(worst.took, use.took)
	}
	b.ReportMetric(float64(size)/mib, "log-MiB")
	b.ReportMetric(float64(worst.heapPeak)/mib, "heap-peak-MiB")
	b.ReportMetric(float64(worst.rssPeak)/mib, "rss-peak-MiB")
	b.ReportMetric(worst.took.Seconds(), "s/archive")
}

type archiveOutcome struct {
	size int64
	err  error
}

func archiveOnce(ctx context.Context, a *archiver, tg target) archiveOutcome {
	arch, err := a.archive(ctx, tg, 10*time.Minute)
	return archiveOutcome{size: arch.SizeBytes, err: err}
}
