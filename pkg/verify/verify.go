// Package verify resolves the instances an event names from EC2 itself before Sortie acts
// on them: only instances of this stack and of the event's fleet are returned, described
// by EC2 (whose address pkg/sshaddr reads), and, for templates whose instances make their
// own host keys, the key each one printed to its console. An event is a claim; EC2 is the
// evidence.
package verify

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/hostkey"
	"github.com/sortie-fleet/sortie/pkg/tags"
)

// DescribeAPI is the EC2 call Fleet makes.
type DescribeAPI interface {
	DescribeInstances(ctx context.Context, params *ec2.DescribeInstancesInput, optFns ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error)
}

// ConsoleAPI is the EC2 call ConsoleHostKey makes.
type ConsoleAPI interface {
	GetConsoleOutput(ctx context.Context, params *ec2.GetConsoleOutputInput, optFns ...func(*ec2.Options)) (*ec2.GetConsoleOutputOutput, error)
}

var (
	_ DescribeAPI = (*ec2.Client)(nil)
	_ ConsoleAPI  = (*ec2.Client)(nil)
)

// filterValues is how many instance ids go in one DescribeInstances filter (EC2 takes up
// to 200 values per filter).
const filterValues = 200

// Owner is whose instances Sortie may act on for one event: the stack's (its prefix, the
// sortie:stack tag) and the event's fleet's (the sortie:fleet tag).
type Owner struct {
	Stack string
	Fleet string
}

// Instances is what EC2 says of the instances an event names.
type Instances struct {
	// Owned are the instances of the owner's stack and fleet, by id, as EC2 describes them.
	Owned map[string]ec2types.Instance
	// Refused says, for every other id the event named, why it is not acted on.
	Refused map[string]string
}

// Fleet describes ids with DescribeInstances filtered on instance-id, tag:sortie:stack and
// tag:sortie:fleet, so that nothing outside the owner's fleet is even described. An id EC2
// does not return is refused: it is another stack's or fleet's instance, or no instance.
func Fleet(ctx context.Context, api DescribeAPI, o Owner, ids []string) (Instances, error) {
	if o.Stack == "" || o.Fleet == "" {
		return Instances{}, errors.New("verifying instances: stack and fleet are required")
	}
	out := Instances{Owned: map[string]ec2types.Instance{}, Refused: map[string]string{}}
	for start := 0; start < len(ids); start += filterValues {
		chunk := ids[start:min(start+filterValues, len(ids))]
		pages := ec2.NewDescribeInstancesPaginator(api, &ec2.DescribeInstancesInput{
			Filters: []ec2types.Filter{
				{Name: aws.String("instance-id"), Values: literals(chunk...)},
				{Name: aws.String("tag:" + tags.Stack), Values: literals(o.Stack)},
				{Name: aws.String("tag:" + tags.Fleet), Values: literals(o.Fleet)},
			},
			MaxResults: aws.Int32(1000),
		})
		for pages.HasMorePages() {
			page, err := pages.NextPage(ctx)
			if err != nil {
				return Instances{}, fmt.Errorf("describing the instances of fleet %s: %w", o.Fleet, err)
			}
			for _, r := range page.Reservations {
				for _, in := range r.Instances {
					out.Owned[aws.ToString(in.InstanceId)] = in
				}
			}
		}
	}
	for _, id := range ids {
		if _, ok := out.Owned[id]; !ok {
			out.Refused[id] = fmt.Sprintf("instance %s is not an instance of fleet %s in stack %s (EC2 has no such instance with tags %s=%s, %s=%s): not contacted",
				id, o.Fleet, o.Stack, tags.Stack, o.Stack, tags.Fleet, o.Fleet)
		}
	}
	return out, nil
}

// literals escapes EC2 filter wildcards (*, ?) and the escape character, so that a value
// matches only itself.
func literals(values ...string) []string {
	out := make([]string, len(values))
	for i, v := range values {
		out[i] = filterEscaper.Replace(v)
	}
	return out
}

var filterEscaper = strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`)

// Running reports whether EC2 describes in as running.
func Running(in ec2types.Instance) bool {
	return in.State != nil && in.State.Name == ec2types.InstanceStateNameRunning
}

// ConsolePoll bounds the delay between two reads of an instance's console output.
type ConsolePoll struct {
	First, Max time.Duration
}

// DefaultConsolePoll starts at 1 s and backs off to 15 s: EC2 publishes console output a
// few minutes after boot.
var DefaultConsolePoll = ConsolePoll{First: time.Second, Max: 15 * time.Second}

// ConsoleHostKey reads the host key the instance printed to its console at first boot
// (hostkey.FromConsole, hostkey.Preferred), polling until the block appears or ctx ends
// (an API error is retried the same way): the caller bounds the wait with ctx's deadline.
// It never returns a key that is not in the block.
func ConsoleHostKey(ctx context.Context, api ConsoleAPI, id string, poll ConsolePoll) (ssh.PublicKey, error) {
	if poll.First <= 0 {
		poll = DefaultConsolePoll
	}
	delay := poll.First
	for {
		key, err := consoleKey(ctx, api, id)
		if err == nil {
			return key, nil
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w (gave up: %w)", err, context.Cause(ctx))
		case <-t.C:
		}
		delay = min(2*delay, poll.Max)
	}
}

func consoleKey(ctx context.Context, api ConsoleAPI, id string) (ssh.PublicKey, error) {
	out, err := api.GetConsoleOutput(ctx, &ec2.GetConsoleOutputInput{InstanceId: aws.String(id)})
	if err != nil {
		return nil, fmt.Errorf("reading the console output of %s: %w", id, err)
	}
	text, err := base64.StdEncoding.DecodeString(aws.ToString(out.Output))
	if err != nil {
		return nil, fmt.Errorf("reading the console output of %s: %w", id, err)
	}
	keys, err := hostkey.FromConsole(string(text))
	if err != nil {
		return nil, fmt.Errorf("host key of %s: %w", id, err)
	}
	k := hostkey.Preferred(keys)
	if k == nil {
		return nil, fmt.Errorf("host key of %s: the console's host keys are of no type Sortie pins (ed25519, ECDSA, RSA)", id)
	}
	return k, nil
}
