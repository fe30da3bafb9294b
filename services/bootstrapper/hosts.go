package bootstrapper

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/sshaddr"
	"github.com/sortie-fleet/sortie/pkg/verify"
)

// EC2API is the EC2 calls the bootstrapper makes: it verifies the event's instances, reads
// instance host keys from the console, and tags the instances it bootstrapped.
type EC2API interface {
	CreateTags(ctx context.Context, params *ec2.CreateTagsInput, optFns ...func(*ec2.Options)) (*ec2.CreateTagsOutput, error)
	DescribeInstances(ctx context.Context, params *ec2.DescribeInstancesInput, optFns ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error)
	GetConsoleOutput(ctx context.Context, params *ec2.GetConsoleOutputInput, optFns ...func(*ec2.Options)) (*ec2.GetConsoleOutputOutput, error)
}

var _ EC2API = (*ec2.Client)(nil)

// targetFunc says where to connect to one instance of the fleet and which host key to pin,
// or why the instance is not contacted at all.
type targetFunc func(ctx context.Context, id string) (addr string, hostKey ssh.PublicKey, err error)

// errNoTarget is what an instance without a verified target gets: nothing is contacted.
var errNoTarget = errors.New("no verified address for the instance: not contacted")

// hostResolver verifies a fleet's instances with EC2 before anything connects to them.
type hostResolver struct {
	ec2   EC2API
	stack string
	local bool // SORTIE_LOCAL_MODE: the local cloud's sortie:ssh-endpoint tag is honoured
	// consoleWait bounds the wait for an instance's console host key block
	// (SORTIE_BOOTSTRAP_HOSTKEY_TIMEOUT); consolePoll paces the reads.
	consoleWait time.Duration
	consolePoll verify.ConsolePoll
}

// targets resolves the event's instances from EC2: only this stack's instances of the
// event's fleet, running, are reached, at the address EC2 gives (never the event's), with
// the fleet's derived host key, or with the key each instance printed to its console when
// the template's instances make their own. Its error (EC2 unreadable) is transient.
func (h hostResolver) targets(ctx context.Context, p fleetPlan) (targetFunc, error) {
	ids := make([]string, len(p.ev.Instances))
	for i, in := range p.ev.Instances {
		ids[i] = in.ID
	}
	found, err := verify.Fleet(ctx, h.ec2, verify.Owner{Stack: h.stack, Fleet: p.ev.FleetID}, ids)
	if err != nil {
		return nil, err
	}
	mode := sshaddr.Mode{Local: h.local, PublicIP: p.publicIP}
	return func(ctx context.Context, id string) (string, ssh.PublicKey, error) {
		if reason, ok := found.Refused[id]; ok {
			return "", nil, errors.New(reason)
		}
		in, ok := found.Owned[id]
		if !ok {
			return "", nil, errNoTarget
		}
		if !verify.Running(in) {
			return "", nil, fmt.Errorf("instance %s is %s, not running: not contacted", id, in.State.Name)
		}
		addr, err := mode.Of(in)
		if err != nil {
			return "", nil, fmt.Errorf("%w: not contacted", err)
		}
		if !p.instanceKeys {
			return addr, p.hostKey, nil
		}
		wait, cancel := context.WithTimeout(ctx, h.consoleWait)
		defer cancel()
		key, err := verify.ConsoleHostKey(wait, h.ec2, id, h.consolePoll)
		if err != nil {
			return "", nil, fmt.Errorf("instance host key unknown after %s: %w: not contacted", h.consoleWait, err)
		}
		return addr, key, nil
	}, nil
}
