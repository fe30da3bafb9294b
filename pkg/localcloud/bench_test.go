package localcloud

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/tags"
)

// rssHelperEnv makes the test binary act as the child process BenchmarkIdleInstancesRSS
// measures: a local cloud with rssInstances running instances and nothing else.
const rssHelperEnv = "SORTIE_LOCALCLOUD_RSS_HELPER"

const rssInstances = 100

func TestMain(m *testing.M) {
	if os.Getenv(rssHelperEnv) == "1" {
		if err := rssHelper(); err != nil {
			fmt.Fprintln(os.Stderr, "rss helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// fleet is what the benchmarks launch with: a key pair and a pinned host key.
type fleet struct {
	client   *ec2.Client
	user     ssh.Signer
	hostKey  ssh.PublicKey
	userData string
}

func newFleet(t testing.TB, c *Cloud) *fleet {
	t.Helper()
	f, err := makeFleet(c)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func makeFleet(c *Cloud) (*fleet, error) {
	client, _ := newEC2Client(c.URL())
	user, _, err := genEd25519()
	if err != nil {
		return nil, err
	}
	if _, err := client.ImportKeyPair(context.Background(), &ec2.ImportKeyPairInput{
		KeyName: aws.String("bench"), PublicKeyMaterial: ssh.MarshalAuthorizedKey(user.PublicKey()),
	}); err != nil {
		return nil, fmt.Errorf("importing key pair: %w", err)
	}
	host, hostPEM, err := genEd25519()
	if err != nil {
		return nil, err
	}
	return &fleet{client: client, user: user, hostKey: host.PublicKey(), userData: cloudConfigWithHostKey(hostPEM)}, nil
}

// launchUntilSSH launches n instances and returns once every one of them has run a
// command over SSH.
func (f *fleet) launchUntilSSH(ctx context.Context, n int) ([]string, error) {
	out, err := f.client.RunInstances(ctx, runInput(launch{count: int32(n), keyName: "bench", userData: f.userData}))
	if err != nil {
		return nil, fmt.Errorf("launching: %w", err)
	}
	ids := instanceIDs(out.Instances)

	endpoints := map[string]string{}
	for len(endpoints) < n {
		desc, err := f.client.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: ids})
		if err != nil {
			return nil, fmt.Errorf("describing: %w", err)
		}
		for _, r := range desc.Reservations {
			for _, inst := range r.Instances {
				if ep, ok := tagValue(inst, tags.SSHEndpoint); ok {
					endpoints[aws.ToString(inst.InstanceId)] = ep
				}
			}
		}
		if len(endpoints) < n {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
		}
	}

	cfg := &ssh.ClientConfig{
		User:            "admin",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(f.user)},
		HostKeyCallback: ssh.FixedHostKey(f.hostKey),
		Timeout:         10 * time.Second,
	}
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for id, ep := range endpoints {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			conn, err := ssh.Dial("tcp", ep, cfg)
			if err != nil {
				errs <- fmt.Errorf("ssh to %s: %w", id, err)
				return
			}
			defer conn.Close()
			s, err := conn.NewSession()
			if err != nil {
				errs <- fmt.Errorf("session on %s: %w", id, err)
				return
			}
			defer s.Close()
			if out, err := s.Output("echo ok"); err != nil || string(out) != "ok\n" {
				errs <- fmt.Errorf("command on %s: %q %v", id, out, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return nil, err
	}
	return ids, nil
}

// BenchmarkRunInstances100UntilSSH measures RunInstances of 100 instances with the default
// 200 ms boot delay until every instance has run a command over SSH (target: <= 2 s/op).
func BenchmarkRunInstances100UntilSSH(b *testing.B) {
	c := newCloud(b, Options{BootDelay: DefaultBootDelay, ShutdownDelay: time.Millisecond})
	f := newFleet(b, c)
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		ids, err := f.launchUntilSSH(ctx, 100)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if _, err := f.client.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: ids}); err != nil {
			b.Fatal(err)
		}
		waitTerminated(b, f.client, ids)
		b.StartTimer()
	}
}

// BenchmarkIdleInstancesRSS reports the resident memory of a child process running a local
// cloud (kumo included) with 100 running, idle instances that have each served one SSH
// command (target: <= 60 MB).
func BenchmarkIdleInstancesRSS(b *testing.B) {
	for b.Loop() {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), rssHelperEnv+"=1")
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			b.Fatalf("rss helper: %v", err)
		}
		fields := map[string]float64{}
		for _, f := range strings.Fields(string(out)) {
			k, v, _ := strings.Cut(f, "=")
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				b.Fatalf("rss helper printed %q", out)
			}
			fields[k] = n
		}
		b.ReportMetric(fields["rss_kb"]/1024, "MB-rss")
		b.ReportMetric(fields["baseline_kb"]/1024, "MB-rss-0-instances")
		b.ReportMetric(fields["goroutines"], "goroutines")
	}
}

// rssHelper is the child process of BenchmarkIdleInstancesRSS. It prints
// "baseline_kb=… rss_kb=… goroutines=…".
func rssHelper() error {
	c, err := New(Options{Addr: "127.0.0.1:0"})
	if err != nil {
		return err
	}
	defer c.Close()
	baseline, err := vmRSS()
	if err != nil {
		return err
	}
	f, err := makeFleet(c)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := f.launchUntilSSH(ctx, rssInstances); err != nil {
		return err
	}
	time.Sleep(500 * time.Millisecond) // let finished sessions and connections wind down
	rss, err := vmRSS()
	if err != nil {
		return err
	}
	fmt.Printf("baseline_kb=%d rss_kb=%d goroutines=%d\n", baseline, rss, runtime.NumGoroutine())
	return nil
}

// vmRSS reads this process's resident set size in kB from /proc/self/status.
func vmRSS() (int, error) {
	fh, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
		}
	}
	return 0, fmt.Errorf("VmRSS not found in /proc/self/status")
}
