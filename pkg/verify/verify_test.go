package verify_test

import (
	"context"
	"encoding/base64"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/hostkey"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
	"github.com/sortie-fleet/sortie/pkg/remote"
	"github.com/sortie-fleet/sortie/pkg/tags"
	"github.com/sortie-fleet/sortie/pkg/verify"
)

// Only the instances of the owner's stack and fleet come back; every other id the event
// names (another fleet's, another stack's, Sortie's tags without a stack, no tags at all,
// no such instance, a wildcard) is refused with the reason.
func TestFleet(t *testing.T) {
	s := cloudtest.NewStack(t, cloudtest.NewCloud(t, localcloud.Options{}))
	kp := cloudtest.NewKeyPair(t, s.EC2, "verify-login")
	launch := func(tg map[string]string) string {
		return cloudtest.Launch(t, s.EC2, 1, cloudtest.LaunchSpec{KeyName: kp.Name, Tags: tg})[0].ID
	}
	mine := launch(map[string]string{tags.Stack: "blue", tags.Fleet: "job-1"})
	mine2 := launch(map[string]string{tags.Stack: "blue", tags.Fleet: "job-1", tags.JobID: "job-1"})
	otherFleet := launch(map[string]string{tags.Stack: "blue", tags.Fleet: "job-2"})
	otherStack := launch(map[string]string{tags.Stack: "green", tags.Fleet: "job-1"})
	noStack := launch(map[string]string{tags.Fleet: "job-1", tags.JobID: "job-1"})
	untagged := launch(map[string]string{"Name": "prod-db"})
	missing := "i-0123456789abcdef0"

	ids := []string{mine, otherFleet, otherStack, noStack, untagged, missing, mine2}
	got, err := verify.Fleet(t.Context(), s.EC2, verify.Owner{Stack: "blue", Fleet: "job-1"}, ids)
	if err != nil {
		t.Fatal(err)
	}
	owned := make([]string, 0, len(got.Owned))
	for id, in := range got.Owned {
		owned = append(owned, id)
		if !verify.Running(in) || aws.ToString(in.PrivateIpAddress) == "" {
			t.Errorf("%s: described %+v, want running with a private IP", id, in.State)
		}
	}
	if slices.Sort(owned); !slices.Equal(owned, slices.Sorted(slices.Values([]string{mine, mine2}))) {
		t.Errorf("owned %v, want %s and %s", owned, mine, mine2)
	}
	for _, id := range []string{otherFleet, otherStack, noStack, untagged, missing} {
		r := got.Refused[id]
		if !strings.Contains(r, "is not an instance of fleet job-1 in stack blue") || !strings.Contains(r, "not contacted") {
			t.Errorf("%s: refusal %q", id, r)
		}
	}
	if len(got.Refused) != 5 {
		t.Errorf("refused %d ids, want 5: %v", len(got.Refused), got.Refused)
	}

	// Filter values are literals: a fleet id with a wildcard matches no other fleet.
	wild, err := verify.Fleet(t.Context(), s.EC2, verify.Owner{Stack: "blue", Fleet: "job-*"}, ids)
	if err != nil || len(wild.Owned) != 0 {
		t.Errorf("fleet job-*: owned %d (%v), want none", len(wild.Owned), err)
	}
	if _, err := verify.Fleet(t.Context(), s.EC2, verify.Owner{Fleet: "job-1"}, ids); err == nil {
		t.Error("no stack: want an error")
	}
}

// An instance launched without a host key in user data makes its own and prints it to the
// console: ConsoleHostKey returns exactly the key the instance's SSH server presents.
func TestConsoleHostKeyOnTheLocalCloud(t *testing.T) {
	s := cloudtest.NewStack(t, cloudtest.NewCloud(t, localcloud.Options{}))
	kp := cloudtest.NewKeyPair(t, s.EC2, "console-login")
	insts := cloudtest.Launch(t, s.EC2, 2, cloudtest.LaunchSpec{KeyName: kp.Name})
	var keys []string
	for _, in := range insts {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		key, err := verify.ConsoleHostKey(ctx, s.EC2, in.ID, verify.ConsolePoll{First: 10 * time.Millisecond, Max: 100 * time.Millisecond})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, string(key.Marshal()))
		ctx, cancel = context.WithTimeout(t.Context(), 10*time.Second)
		c, err := remote.Dial(ctx, remote.DialConfig{Addr: in.SSHEndpoint, User: "sortie", Signer: kp.Signer, HostKey: key})
		cancel()
		if err != nil {
			t.Fatalf("%s: dial pinned to its console key: %v", in.ID, err)
		}
		_ = c.Close()
	}
	if keys[0] == keys[1] {
		t.Error("two instances printed the same host key")
	}
}

// consoleFake serves scripted console outputs, the last one for ever.
type consoleFake struct {
	outputs []string
	errs    []error
	calls   int
}

func (f *consoleFake) GetConsoleOutput(_ context.Context, in *ec2.GetConsoleOutputInput, _ ...func(*ec2.Options)) (*ec2.GetConsoleOutputOutput, error) {
	i := min(f.calls, len(f.outputs)-1)
	f.calls++
	if i < len(f.errs) && f.errs[i] != nil {
		return nil, f.errs[i]
	}
	return &ec2.GetConsoleOutputOutput{InstanceId: in.InstanceId, Output: aws.String(base64.StdEncoding.EncodeToString([]byte(f.outputs[i])))}, nil
}

func TestConsoleHostKeyWaits(t *testing.T) {
	signer := cloudtest.NewSigner(t)
	block := "boot\n" + hostkey.ConsoleBegin + "\n" + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))) + " root@host\n" + hostkey.ConsoleEnd + "\n"
	poll := verify.ConsolePoll{First: time.Millisecond, Max: 5 * time.Millisecond}

	t.Run("appears after a while, after an API error", func(t *testing.T) {
		f := &consoleFake{outputs: []string{"", "[ 0.1] booting", "x", block}, errs: []error{nil, nil, errors.New("throttled")}}
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		key, err := verify.ConsoleHostKey(ctx, f, "i-0123456789abcdef0", poll)
		if err != nil {
			t.Fatal(err)
		}
		if string(key.Marshal()) != string(signer.PublicKey().Marshal()) || f.calls != 4 {
			t.Errorf("key %s after %d reads, want the block's after 4", ssh.FingerprintSHA256(key), f.calls)
		}
	})
	t.Run("never appears: a clear error once the wait is over", func(t *testing.T) {
		f := &consoleFake{outputs: []string{"[ 0.1] booting"}}
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		key, err := verify.ConsoleHostKey(ctx, f, "i-0123456789abcdef0", poll)
		if key != nil || !errors.Is(err, hostkey.ErrNoConsoleKeys) || !strings.Contains(err.Error(), "i-0123456789abcdef0") ||
			!errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("key %v, error %v: want no key, ErrNoConsoleKeys naming the instance and the deadline", key, err)
		}
		if f.calls < 2 {
			t.Errorf("read the console %d times, want it polled", f.calls)
		}
	})
}
