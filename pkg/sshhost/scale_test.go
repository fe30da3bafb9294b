package sshhost_test

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sortie-fleet/sortie/pkg/remote"
	"github.com/sortie-fleet/sortie/pkg/sshhost"
	"golang.org/x/crypto/ssh"
)

// startHosts starts n hosts sharing one host key and one client key.
func startHosts(tb testing.TB, n int, hostKey, clientKey ssh.Signer) []*sshhost.Host {
	tb.Helper()
	base := tb.TempDir()
	hosts := make([]*sshhost.Host, 0, n)
	for i := range n {
		h, err := sshhost.Start(sshhost.Config{
			HostKey:        hostKey,
			AuthorizedKeys: []ssh.PublicKey{clientKey.PublicKey()},
			Dir:            base + "/i-" + strconv.Itoa(i),
		})
		if err != nil {
			tb.Fatalf("starting host %d: %v", i, err)
		}
		hosts = append(hosts, h)
	}
	return hosts
}

// runEverywhere runs cmd once on every host, in parallel.
func runEverywhere(tb testing.TB, hosts []*sshhost.Host, hostKey, clientKey ssh.Signer, cmd string) {
	tb.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(hosts))
	for _, h := range hosts {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, err := remote.Dial(ctx, remote.DialConfig{Addr: h.Addr(), User: "ec2-user", Signer: clientKey, HostKey: hostKey.PublicKey()})
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			res, err := c.Run(ctx, cmd, nil)
			if err == nil && (res.ExitCode != 0 || !bytes.Equal(res.Stdout, []byte("ok\n"))) {
				err = &unexpected{res}
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		tb.Fatal(err)
	}
}

type unexpected struct{ res remote.Result }

func (u *unexpected) Error() string {
	return "exit " + strconv.Itoa(u.res.ExitCode) + " stdout " + strconv.Quote(string(u.res.Stdout))
}

// TestIdleHostsMemory checks that 100 idle hosts stay small, after each has
// served a command, and cost one goroutine (the accept loop) each.
func TestIdleHostsMemory(t *testing.T) {
	const n = 100
	hostKey, clientKey := newKey(t), newKey(t)
	settle := func() {
		runtime.GC()
		debug.FreeOSMemory() // return what the handshakes used, so RSS shows what idling costs
	}
	settle()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	goroutinesBefore := runtime.NumGoroutine()
	rssBefore := rssBytes(t)

	hosts := startHosts(t, n, hostKey, clientKey)
	defer func() {
		for _, h := range hosts {
			if err := h.Close(); err != nil {
				t.Error(err)
			}
		}
	}()
	runEverywhere(t, hosts, hostKey, clientKey, "echo ok")

	// Connection goroutines wind down asynchronously after the clients close.
	var goroutines int
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		goroutines = runtime.NumGoroutine() - goroutinesBefore
		if goroutines <= n || time.Now().After(deadline) {
			break
		}
	}
	settle()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	rssAfter := rssBytes(t)

	heap := int64(after.HeapInuse) - int64(before.HeapInuse)
	stacks := int64(after.StackInuse) - int64(before.StackInuse)
	t.Logf("%d idle hosts: heap in use +%.2f MiB, goroutine stacks +%.2f MiB, RSS %.1f → %.1f MiB (+%.1f MiB), goroutines +%d",
		n, mib(heap), mib(stacks), mib(rssBefore), mib(rssAfter), mib(rssAfter-rssBefore), goroutines)
	if goroutines != n {
		t.Errorf("%d idle hosts hold %d extra goroutines, want %d (one accept loop each)", n, goroutines, n)
	}
	if heap+stacks > 20<<20 {
		t.Errorf("%d idle hosts use %.1f MiB of heap and stacks, want < 20 MiB", n, mib(heap+stacks))
	}
	if !raceEnabled && rssBefore > 0 && rssAfter-rssBefore > 60<<20 {
		t.Errorf("RSS grew by %.1f MiB for %d idle hosts, want < 60 MiB", mib(rssAfter-rssBefore), n)
	}
}

// rssBytes is the process's resident set size from /proc (0 without /proc).
func rssBytes(t *testing.T) int64 {
	t.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("parsing VmRSS %q: %v", rest, err)
			}
			return kb << 10
		}
	}
	return 0
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// BenchmarkStart100Hosts starts 100 hosts, runs one command on each (100
// parallel clients: dial, handshake, exec) and closes them all.
func BenchmarkStart100Hosts(b *testing.B) {
	hostKey, clientKey := newKey(b), newKey(b)
	for b.Loop() {
		hosts := startHosts(b, 100, hostKey, clientKey)
		runEverywhere(b, hosts, hostKey, clientKey, "echo ok")
		for _, h := range hosts {
			if err := h.Close(); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/100/1000, "ms/host")
}
