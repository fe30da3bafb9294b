package bootstrapper_test

import (
	"os"
	"strings"
	"sync"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/sshhost"
	"github.com/sortie-fleet/sortie/pkg/tags"
)

// attacker is an SSH server of someone who can publish a FleetLaunched: it accepts the
// fleet's login key and records every command it is sent.
type attacker struct {
	addr     string
	hostKey  string // authorized_keys line
	mu       sync.Mutex
	commands []string
}

func startAttacker(t *testing.T, login ssh.PublicKey) *attacker {
	t.Helper()
	a := &attacker{}
	signer := cloudtest.NewSigner(t)
	h, err := sshhost.Start(sshhost.Config{
		HostKey: signer, AuthorizedKeys: []ssh.PublicKey{login}, Dir: t.TempDir(),
		OnExec: func(cmd string) {
			a.mu.Lock()
			defer a.mu.Unlock()
			a.commands = append(a.commands, cmd)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	a.addr = h.Addr()
	a.hostKey = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
	return a
}

func (a *attacker) received() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.commands...)
}

// TestForgedFleetLaunched: a FleetLaunched whose ssh_endpoint and host_key point at
// another SSH server never reaches that server. The address comes from EC2: the fleet's
// real instance is used (and must present the key EC2's launch gave it), an instance of
// another stack or fleet, or no instance at all, is refused with the reason.
func TestForgedFleetLaunched(t *testing.T) {
	e := newEnv(t)
	out := e.Subscribe(t, bus.FleetBootstrapped)
	e.start()
	evil := startAttacker(t, e.key.Signer.PublicKey())

	// The attacker's server works: a client that trusted the event would have used it.
	if res := e.ssh(events.Instance{SSHEndpoint: evil.addr}, evil.hostKey, "true"); res.ExitCode != 0 {
		t.Fatalf("the attacker's server does not run commands: %+v", res)
	}
	probe := len(evil.received())

	hk := cloudtest.NewHostKey(t)
	forge := func(jobID, hostKey string, insts []events.Instance) events.FleetLaunched {
		forged := make([]events.Instance, len(insts))
		for i, in := range insts {
			in.SSHEndpoint = evil.addr
			forged[i] = in
		}
		return e.fleetLaunched(jobID, hostKey, forged)
	}
	noCommands := func(t *testing.T) {
		t.Helper()
		if got := evil.received()[probe:]; len(got) != 0 {
			t.Fatalf("the attacker's server received %d commands: %q", len(got), got)
		}
	}
	untouched := func(t *testing.T, id string) {
		t.Helper()
		if _, err := os.Stat(e.instanceFile(id, ".sortie")); err == nil {
			t.Errorf("instance %s was bootstrapped", id)
		}
	}

	t.Run("endpoint forged, true host key: the real instance is bootstrapped", func(t *testing.T) {
		real := e.launch("job-forged-ep", 1, hk.UserData)
		e.Publish(t, forge("job-forged-ep", hk.Authorized, real))
		got := e.receive(t, out, "job-forged-ep")
		r := got.Instances[0]
		if !r.OK || r.SSHEndpoint != real[0].SSHEndpoint {
			t.Errorf("ok=%t error=%q endpoint %s; want the real instance (%s) bootstrapped", r.OK, r.Error, r.SSHEndpoint, real[0].SSHEndpoint)
		}
		noCommands(t)
	})

	t.Run("endpoint and host key forged: the real instance is refused for its key", func(t *testing.T) {
		real := e.launch("job-forged-key", 1, hk.UserData)
		e.Publish(t, forge("job-forged-key", evil.hostKey, real))
		got := e.receive(t, out, "job-forged-key")
		if r := got.Instances[0]; r.OK || !strings.Contains(r.Error, "host key mismatch") || len(r.Steps) != 0 {
			t.Errorf("ok=%t error=%q steps=%d; want a host key mismatch and no step", r.OK, r.Error, len(r.Steps))
		}
		untouched(t, real[0].ID)
		noCommands(t)
	})

	t.Run("instances of another stack, another fleet, no stack, none: refused with the reason", func(t *testing.T) {
		otherStack := e.launchTagged(1, hk.UserData, map[string]string{tags.Stack: "someone-else", tags.Fleet: "job-forged-ids"})
		otherFleet := e.launch("job-other", 1, hk.UserData)
		noStack := e.launchTagged(1, hk.UserData, map[string]string{tags.Fleet: "job-forged-ids", tags.JobID: "job-forged-ids"})
		ghost := []events.Instance{{ID: "i-0123456789abcdef0", InstanceType: "t3.micro", SSHEndpoint: evil.addr, LaunchedAt: otherStack[0].LaunchedAt}}
		insts := append(append(append(otherStack, otherFleet...), noStack...), ghost...)
		e.Publish(t, forge("job-forged-ids", hk.Authorized, insts))
		got := e.receive(t, out, "job-forged-ids")
		if len(got.Instances) != 4 {
			t.Fatalf("%d results, want 4", len(got.Instances))
		}
		for i, r := range got.Instances {
			if r.OK || !strings.Contains(r.Error, "is not an instance of fleet job-forged-ids in stack "+e.Topology.Prefix) || len(r.Steps) != 0 {
				t.Errorf("%s: ok=%t error=%q steps=%d; want refused with the reason", r.ID, r.OK, r.Error, len(r.Steps))
			}
			if i < 3 {
				untouched(t, r.ID)
			}
		}
		if stages := e.stageTags(insts[:3]); len(stages) != 3 || stages[otherStack[0].ID]+stages[otherFleet[0].ID]+stages[noStack[0].ID] != "" {
			t.Errorf("stage tags %v: the refused instances were tagged", stages)
		}
		noCommands(t)
	})
}

// TestInstanceHostKeys: a template with host_keys: instance. The instances get no host key
// in user data, generate their own and print it to the console; the bootstrapper pins
// exactly that key per instance.
func TestInstanceHostKeys(t *testing.T) {
	e := newEnv(t)
	out := e.Subscribe(t, bus.FleetBootstrapped)
	e.start()
	evil := startAttacker(t, e.key.Signer.PublicKey())

	insts := e.launch("job-own-keys", 2, "")
	ev := e.fleetLaunched("job-own-keys", "", insts)
	ev.Template = "own-keys"
	e.Publish(t, ev)
	got := e.receive(t, out, "job-own-keys")
	for _, r := range got.Instances {
		if !r.OK || r.Error != "" {
			t.Errorf("%s: ok=%t error=%q, want bootstrapped", r.ID, r.OK, r.Error)
		}
		if _, err := os.Stat(e.instanceFile(r.ID, ".sortie/bootstrapped")); err != nil {
			t.Errorf("%s: %v", r.ID, err)
		}
	}
	if got.HostKey != "" {
		t.Errorf("FleetBootstrapped carries host key %q, want none", got.HostKey)
	}

	// An event naming the attacker's key and endpoint for such a fleet changes nothing: the
	// keys come from the instances' consoles, the addresses from EC2.
	more := e.launch("job-own-keys-2", 1, "")
	forged := e.fleetLaunched("job-own-keys-2", evil.hostKey, []events.Instance{{ID: more[0].ID, InstanceType: "t3.micro", SSHEndpoint: evil.addr, LaunchedAt: more[0].LaunchedAt}})
	forged.Template = "own-keys"
	e.Publish(t, forged)
	if r := e.receive(t, out, "job-own-keys-2").Instances[0]; !r.OK {
		t.Errorf("ok=false (%s), want the real instance bootstrapped with its console key", r.Error)
	}
	if n := len(evil.received()); n != 0 {
		t.Errorf("the attacker's server received %d commands", n)
	}
}
