package bootstrapper

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/recipe"
)

// TestRedialResumesAtTheStep: over real SSH, a connection cut while a step runs is
// redialled and the recipe resumes at that step; the steps before it do not run again.
func TestRedialResumesAtTheStep(t *testing.T) {
	h := cloudtest.StartSSHHost(t, "")
	proxy := cloudtest.StartProxy(t, h.Addr)
	steps := []recipe.Step{
		{Name: "first", Kind: "run", Command: "echo x >> first-runs"},
		// Waits to be cut on its first run (the marker tells the test it runs), passes on
		// the second.
		{Name: "slow", Kind: "upload", Rerun: true, Command: "if test -f slow-started; then echo again >> slow-runs; else : > slow-started; sleep 30; fi"},
		{Name: "last", Kind: "run", Command: "echo x >> last-runs"},
	}
	r := &runner{
		dial: dialRemote, signer: h.Login, dialTimeout: 30 * time.Second, stepTimeout: time.Minute,
		prefix: "sortie-test", now: time.Now,
	}
	ev := testEvent()
	ev.Instances[0].SSHEndpoint = proxy.Addr
	p, err := planFleet(ev, testOps(t))
	if err != nil {
		t.Fatal(err)
	}
	p.hostKey = h.HostKey
	p.target = eventTargets(p)
	go func() {
		// Cut once the slow step runs (if it never does, the step's own test fails below).
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(cloudtest.PollInterval) {
			if _, err := os.Stat(filepath.Join(h.Dir, "slow-started")); err == nil {
				break
			}
		}
		proxy.Cut()
	}()
	render := func(context.Context) ([]recipe.Step, []string, error) { return steps, nil, nil }
	res := r.bootstrap(context.Background(), slog.New(slog.DiscardHandler), p, p.ev.Instances[0], render, r.newGate(1))
	if !res.OK || len(res.Steps) != 3 {
		t.Fatalf("result %+v, want every step done after a redial", res)
	}
	for file, want := range map[string]string{"first-runs": "x\n", "slow-runs": "again\n", "last-runs": "x\n"} {
		b, err := os.ReadFile(filepath.Join(h.Dir, file))
		if err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", file, b, err, want)
		}
	}
	if b, err := os.ReadFile(filepath.Join(h.Dir, MarkerPath)); err != nil || !strings.Contains(string(b), "job=job-42") {
		t.Errorf("marker %q, %v", b, err)
	}
}
