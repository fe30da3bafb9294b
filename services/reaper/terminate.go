package reaper

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/sortie-fleet/sortie/pkg/cost"
	"github.com/sortie-fleet/sortie/pkg/tags"
)

// Instance tags the reaper reads.

// EC2API is the EC2 calls the reaper makes.
type EC2API interface {
	DescribeInstances(ctx context.Context, params *ec2.DescribeInstancesInput, optFns ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error)
	TerminateInstances(ctx context.Context, params *ec2.TerminateInstancesInput, optFns ...func(*ec2.Options)) (*ec2.TerminateInstancesOutput, error)
	GetConsoleOutput(ctx context.Context, params *ec2.GetConsoleOutputInput, optFns ...func(*ec2.Options)) (*ec2.GetConsoleOutputOutput, error)
}

var _ EC2API = (*ec2.Client)(nil)

// maxFilterValues is EC2's limit on the values of one filter.
const maxFilterValues = 200

// describe returns every instance matching the filters, across pages.
func describe(ctx context.Context, api EC2API, filters []ec2types.Filter) ([]ec2types.Instance, error) {
	var out []ec2types.Instance
	p := ec2.NewDescribeInstancesPaginator(api, &ec2.DescribeInstancesInput{Filters: filters, MaxResults: aws.Int32(1000)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("describing instances: %w", err)
		}
		for _, r := range page.Reservations {
			out = append(out, r.Instances...)
		}
	}
	return out, nil
}

// stackFilter selects what the stack owns: every DescribeInstances of the reaper has it.
func stackFilter(stack string) ec2types.Filter {
	return ec2types.Filter{Name: aws.String("tag:" + tags.Stack), Values: []string{stack}}
}

// describeFleet returns the fleet's instances in the stack, in every state: those tagged
// with both the stack and the fleet id, whether the event named them (ids) or not. An id
// of ids that is not among them is not the fleet's in this stack.
func describeFleet(ctx context.Context, api EC2API, stack, fleetID string, ids []string) ([]ec2types.Instance, error) {
	owned := []ec2types.Filter{stackFilter(stack), {Name: aws.String("tag:" + tags.Fleet), Values: []string{fleetID}}}
	found, err := describe(ctx, api, owned)
	if err != nil {
		return nil, err
	}
	// The fleet tag filter finds the ids as well; asking for them by id too costs one call
	// and keeps a paginated or eventually consistent listing from missing one.
	for chunk := range slices.Chunk(ids, maxFilterValues) {
		more, err := describe(ctx, api, append(slices.Clone(owned), ec2types.Filter{Name: aws.String("instance-id"), Values: chunk}))
		if err != nil {
			return nil, err
		}
		found = append(found, more...)
	}
	seen := map[string]bool{}
	var out []ec2types.Instance
	for _, in := range found {
		id := aws.ToString(in.InstanceId)
		tg := tags.Map(in.Tags)
		if seen[id] || tg[tags.Stack] != stack || tg[tags.Fleet] != fleetID {
			continue // the filters said so; checked again, as a wrong answer must not reap
		}
		seen[id] = true
		out = append(out, in)
	}
	slices.SortFunc(out, compareIDs)
	return out, nil
}

func compareIDs(a, b ec2types.Instance) int {
	return strings.Compare(aws.ToString(a.InstanceId), aws.ToString(b.InstanceId))
}

func stateOf(in ec2types.Instance) ec2types.InstanceStateName {
	if in.State == nil {
		return ""
	}
	return in.State.Name
}

// terminator terminates instances and waits for them.
type terminator struct {
	api                EC2API
	stack              string // the waiter describes only the stack's instances
	minDelay, maxDelay time.Duration
	timeout            time.Duration
}

// terminate terminates the instances (TerminateInstances is idempotent) and, when wait is
// set, waits until every one is terminated; it returns their last descriptions.
func (t terminator) terminate(ctx context.Context, ids []string, wait bool) ([]ec2types.Instance, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	for chunk := range slices.Chunk(ids, 1000) {
		if _, err := t.api.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: chunk}); err != nil {
			return nil, fmt.Errorf("terminating %d instances: %w", len(chunk), err)
		}
	}
	if !wait {
		return nil, nil
	}
	w := ec2.NewInstanceTerminatedWaiter(t.api, func(o *ec2.InstanceTerminatedWaiterOptions) {
		o.MinDelay, o.MaxDelay = t.minDelay, t.maxDelay
	})
	var out []ec2types.Instance
	for chunk := range slices.Chunk(ids, 1000) {
		desc, err := w.WaitForOutput(ctx, &ec2.DescribeInstancesInput{InstanceIds: chunk, Filters: []ec2types.Filter{stackFilter(t.stack)}}, t.timeout)
		if err != nil {
			return nil, fmt.Errorf("waiting for %d instances to terminate: %w", len(chunk), err)
		}
		for _, r := range desc.Reservations {
			out = append(out, r.Instances...)
		}
	}
	slices.SortFunc(out, compareIDs)
	return out, nil
}

// terminatedAt is when a terminated instance stopped running (see cost.Ended).
func terminatedAt(in ec2types.Instance, now time.Time) time.Time { return cost.Ended(in, now) }

// InstanceSeconds sums the lifetimes (termination − launch) of instances; instances
// without a launch time count nothing.
func InstanceSeconds(insts []ec2types.Instance, now time.Time) float64 {
	var total float64
	for _, in := range insts {
		launch := aws.ToTime(in.LaunchTime)
		if launch.IsZero() {
			continue
		}
		total += terminatedAt(in, now).Sub(launch).Seconds()
	}
	return total
}

// stillRunning says whether an instance of the stack is still pending or running, for the
// archiver to stop retrying on one that has gone.
func stillRunning(api EC2API, stack string) func(ctx context.Context, id string) (bool, error) {
	return func(ctx context.Context, id string) (bool, error) {
		found, err := describe(ctx, api, []ec2types.Filter{
			{Name: aws.String("instance-id"), Values: []string{id}},
			{Name: aws.String("tag:" + tags.Stack), Values: []string{stack}},
		})
		if err != nil {
			return false, err
		}
		for _, in := range found {
			if in.State != nil && (in.State.Name == ec2types.InstanceStateNamePending || in.State.Name == ec2types.InstanceStateNameRunning) {
				return true, nil
			}
		}
		return false, nil
	}
}
