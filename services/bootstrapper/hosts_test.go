package bootstrapper

import (
	"context"
	"encoding/base64"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/sortie-fleet/sortie/pkg/remote"
	"github.com/sortie-fleet/sortie/pkg/tags"
	"github.com/sortie-fleet/sortie/pkg/verify"
)

// silentEC2 describes one running instance of fleet job-1 in stack sortie-test whose
// console never shows a host key block.
type silentEC2 struct {
	consoleReads int
}

func (f *silentEC2) CreateTags(context.Context, *ec2.CreateTagsInput, ...func(*ec2.Options)) (*ec2.CreateTagsOutput, error) {
	return &ec2.CreateTagsOutput{}, nil
}

func (f *silentEC2) DescribeInstances(context.Context, *ec2.DescribeInstancesInput, ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error) {
	return &ec2.DescribeInstancesOutput{Reservations: []ec2types.Reservation{{Instances: []ec2types.Instance{{
		InstanceId:       aws.String("i-0123456789abcdef0"),
		State:            &ec2types.InstanceState{Name: ec2types.InstanceStateNameRunning},
		PrivateIpAddress: aws.String("10.0.0.7"),
		PublicIpAddress:  aws.String("203.0.113.7"),
		Tags: []ec2types.Tag{
			{Key: aws.String(tags.Stack), Value: aws.String("sortie-test")},
			{Key: aws.String(tags.Fleet), Value: aws.String("job-1")},
		},
	}}}}}, nil
}

func (f *silentEC2) GetConsoleOutput(_ context.Context, in *ec2.GetConsoleOutputInput, _ ...func(*ec2.Options)) (*ec2.GetConsoleOutputOutput, error) {
	f.consoleReads++
	return &ec2.GetConsoleOutputOutput{InstanceId: in.InstanceId, Output: aws.String(base64.StdEncoding.EncodeToString([]byte("[ 0.1] booting\n")))}, nil
}

// An instance that makes its own host key but never prints it is failed with the reason
// once the bounded wait is over, and nothing connects to it.
func TestInstanceHostKeyNeverAppears(t *testing.T) {
	f := &silentEC2{}
	h := hostResolver{ec2: f, stack: "sortie-test", consoleWait: 100 * time.Millisecond, consolePoll: verify.ConsolePoll{First: 5 * time.Millisecond, Max: 20 * time.Millisecond}}
	ev := testEvent()
	ev.FleetID, ev.Template, ev.HostKey = "job-1", "own-keys", ""
	p, err := planFleet(ev, testOps(t))
	if err != nil {
		t.Fatal(err)
	}
	if p.target, err = h.targets(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	dialed := false
	r := testRunner(func(context.Context, remote.DialConfig) (session, error) {
		dialed = true
		return newFake(), nil
	})
	res := r.bootstrap(context.Background(), slog.New(slog.DiscardHandler), p, p.ev.Instances[0], staticRender, r.newGate(1))
	if res.OK || dialed || len(res.Steps) != 0 {
		t.Fatalf("ok=%t dialed=%t steps=%d: want the instance failed before any connection", res.OK, dialed, len(res.Steps))
	}
	for _, want := range []string{"instance host key unknown after 100ms", "i-0123456789abcdef0", "no -----BEGIN SSH HOST KEY KEYS----- block", "not contacted"} {
		if !strings.Contains(res.Error, want) {
			t.Errorf("error %q does not say %q", res.Error, want)
		}
	}
	if f.consoleReads < 2 {
		t.Errorf("console read %d times, want it polled until the wait was over", f.consoleReads)
	}
}

// Outside local mode the address is EC2's (public here, as the template says), whatever
// the event claims.
func TestTargetAddressFromEC2(t *testing.T) {
	h := hostResolver{ec2: &silentEC2{}, stack: "sortie-test"}
	ev := testEvent()
	ev.FleetID = "job-1"
	for _, tt := range []struct{ template, want string }{{"test", "10.0.0.7:22"}, {"own-keys", "203.0.113.7:22"}} {
		ev.Template = tt.template
		p, err := planFleet(ev, testOps(t))
		if err != nil {
			t.Fatal(err)
		}
		p.instanceKeys = false // the address alone
		target, err := h.targets(context.Background(), p)
		if err != nil {
			t.Fatal(err)
		}
		addr, _, err := target(context.Background(), "i-0123456789abcdef0")
		if err != nil || addr != tt.want {
			t.Errorf("template %s: address %q (%v), want %s (the event says %s)", tt.template, addr, err, tt.want, ev.Instances[0].SSHEndpoint)
		}
	}
}
