package reaper

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/tags"
)

// Sweep timer attributes.
const (
	AttrTimer    = "sortie_timer"     // the timer's kind
	TimerSweep   = "sweep"            // AttrTimer of the sweep
	TimerHeld    = "held"             // AttrTimer of a held job's check: its body is the JobFinished
	AttrSweepDue = "sortie_sweep_due" // when the sweep timer was due (RFC 3339)
)

// Lease is the verdict on one instance's lease.
type Lease struct {
	Expired   bool
	ExpiredAt time.Time // when the lease (or the TTL) ended, if Expired
	Reason    string    // for the logs
}

// CheckLease decides whether an instance may be swept. An instance is expired when its
// sortie:lease-expires tag (RFC 3339) is in the past; when the tag is missing or does not
// parse, when its launch time plus ttl is in the past. Without either it is kept: the
// sweep never terminates an instance it cannot prove abandoned.
func CheckLease(tg map[string]string, launch, now time.Time, ttl time.Duration) Lease {
	raw, ok := tg[tags.LeaseExpires]
	if ok {
		if exp, err := time.Parse(time.RFC3339, raw); err == nil {
			if now.After(exp) {
				return Lease{Expired: true, ExpiredAt: exp, Reason: fmt.Sprintf("lease expired at %s", exp.UTC().Format(time.RFC3339))}
			}
			return Lease{Reason: fmt.Sprintf("lease live until %s", exp.UTC().Format(time.RFC3339))}
		}
	}
	why := "no lease tag"
	if ok {
		why = fmt.Sprintf("lease tag %q does not parse", clipValue(raw))
	}
	if launch.IsZero() {
		return Lease{Reason: why + " and no launch time: kept"}
	}
	end := launch.Add(ttl)
	if now.After(end) {
		return Lease{Expired: true, ExpiredAt: end, Reason: fmt.Sprintf("%s; launched %s, TTL %s ended at %s", why, launch.UTC().Format(time.RFC3339), ttl, end.UTC().Format(time.RFC3339))}
	}
	return Lease{Reason: fmt.Sprintf("%s; within TTL %s of its launch until %s", why, ttl, end.UTC().Format(time.RFC3339))}
}

func clipValue(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// Expired is an instance the sweep terminates, and why.
type Expired struct {
	Instance  ec2types.Instance
	ExpiredAt time.Time
	Reason    string
}

// SelectExpired returns the instances whose lease has expired at now; ttl gives the TTL
// that applies to an instance without a usable lease tag.
func SelectExpired(insts []ec2types.Instance, now time.Time, ttl func(tg map[string]string) time.Duration) []Expired {
	var out []Expired
	for _, in := range insts {
		tg := tags.Map(in.Tags)
		if l := CheckLease(tg, aws.ToTime(in.LaunchTime), now, ttl(tg)); l.Expired {
			out = append(out, Expired{Instance: in, ExpiredAt: l.ExpiredAt, Reason: l.Reason})
		}
	}
	return out
}

// sweepFilters select the stack's Sortie instances that are still pending or running.
func sweepFilters(stack string) []ec2types.Filter {
	return []ec2types.Filter{
		stackFilter(stack),
		{Name: aws.String("tag-key"), Values: []string{tags.JobID}},
		{Name: aws.String("instance-state-name"), Values: []string{"pending", "running"}},
	}
}

// HostKeyFromConsole reads the SSH host key cloud-init prints to the console between
// "-----BEGIN SSH HOST KEY KEYS-----" and "-----END SSH HOST KEY KEYS-----", preferring
// ed25519, then ECDSA, then RSA.
func HostKeyFromConsole(output string) (ssh.PublicKey, error) {
	const begin, end = "-----BEGIN SSH HOST KEY KEYS-----", "-----END SSH HOST KEY KEYS-----"
	_, rest, ok := strings.Cut(output, begin)
	if !ok {
		return nil, fmt.Errorf("console output has no %s block", begin)
	}
	block, _, ok := strings.Cut(rest, end)
	if !ok {
		return nil, fmt.Errorf("console output's host key block has no end")
	}
	var best ssh.PublicKey
	rank := func(k ssh.PublicKey) int {
		switch {
		case k.Type() == ssh.KeyAlgoED25519:
			return 3
		case strings.HasPrefix(k.Type(), "ecdsa-"):
			return 2
		case k.Type() == ssh.KeyAlgoRSA:
			return 1
		}
		return 0
	}
	for _, line := range strings.Split(block, "\n") {
		k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			continue
		}
		if r := rank(k); r > 0 && (best == nil || r > rank(best)) {
			best = k
		}
	}
	if best == nil {
		return nil, fmt.Errorf("console output's host key block has no usable key")
	}
	return best, nil
}

// consoleHostKey asks EC2 for an instance's console output and reads its host key.
func consoleHostKey(ctx context.Context, api EC2API, id string) (ssh.PublicKey, error) {
	out, err := api.GetConsoleOutput(ctx, &ec2.GetConsoleOutputInput{InstanceId: aws.String(id), Latest: aws.Bool(true)})
	if err != nil {
		return nil, fmt.Errorf("reading console output of %s: %w", id, err)
	}
	text, err := base64.StdEncoding.DecodeString(aws.ToString(out.Output))
	if err != nil {
		return nil, fmt.Errorf("reading console output of %s: %w", id, err)
	}
	k, err := HostKeyFromConsole(string(text))
	if err != nil {
		return nil, fmt.Errorf("host key of %s: %w", id, err)
	}
	return k, nil
}

// sweepChain keeps the number of sweep timer chains bounded. Every replica starts one chain
// when it starts; a sweep timer arms the next one only if no later sweep timer has been
// armed by this replica, so the chain of a restarted or duplicated timer dies out while at
// least one chain (the latest) always lives.
type sweepChain struct {
	mu     sync.Mutex
	latest time.Time
}

// shouldRearm reports whether the timer due at due (zero: unknown) is the latest this
// replica knows of.
func (c *sweepChain) shouldRearm(due time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !due.Before(c.latest)
}

// armed records a sweep timer sent for due.
func (c *sweepChain) armed(due time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if due.After(c.latest) {
		c.latest = due
	}
}
