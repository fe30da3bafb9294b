package localcloud

import (
	"errors"
	"maps"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/tags"
)

func TestRunInstancesShape(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{})
	client, _ := ec2Client(t, c)

	in := runInput(launch{count: 2, tags: map[string]string{"sortie:job-id": "job-1"}})
	in.SubnetId = aws.String("subnet-0abc")
	in.SecurityGroupIds = []string{"sg-0aaa", "sg-0bbb"}
	in.IamInstanceProfile = &types.IamInstanceProfileSpecification{Name: aws.String("sortie-worker")}
	out, err := client.RunInstances(ctxT(t), in)
	if err != nil {
		t.Fatalf("RunInstances: %v", err)
	}
	if !regexp.MustCompile(`^r-[0-9a-f]{17}$`).MatchString(aws.ToString(out.ReservationId)) {
		t.Errorf("reservation id = %q, want r- and 17 hex digits", aws.ToString(out.ReservationId))
	}
	if aws.ToString(out.OwnerId) != ownerID {
		t.Errorf("owner = %q", aws.ToString(out.OwnerId))
	}
	if len(out.Instances) != 2 {
		t.Fatalf("launched %d instances, want 2", len(out.Instances))
	}
	ips := map[string]bool{}
	for i, inst := range out.Instances {
		if !regexp.MustCompile(`^i-[0-9a-f]{17}$`).MatchString(aws.ToString(inst.InstanceId)) {
			t.Errorf("instance id = %q, want i- and 17 hex digits", aws.ToString(inst.InstanceId))
		}
		if inst.State == nil || inst.State.Name != types.InstanceStateNamePending || aws.ToInt32(inst.State.Code) != 0 {
			t.Errorf("state = %+v, want pending (0)", inst.State)
		}
		if inst.InstanceType != types.InstanceTypeT3Micro || aws.ToString(inst.ImageId) != testImage {
			t.Errorf("type/image = %s/%s", inst.InstanceType, aws.ToString(inst.ImageId))
		}
		if aws.ToInt32(inst.AmiLaunchIndex) != int32(i) {
			t.Errorf("launch index = %d, want %d", aws.ToInt32(inst.AmiLaunchIndex), i)
		}
		if v, _ := tagValue(inst, "sortie:job-id"); v != "job-1" {
			t.Errorf("tag sortie:job-id = %q, want job-1", v)
		}
		if aws.ToString(inst.SubnetId) != "subnet-0abc" {
			t.Errorf("subnet = %q", aws.ToString(inst.SubnetId))
		}
		var groups []string
		for _, g := range inst.SecurityGroups {
			groups = append(groups, aws.ToString(g.GroupId))
		}
		if !slices.Equal(groups, []string{"sg-0aaa", "sg-0bbb"}) {
			t.Errorf("security groups = %v", groups)
		}
		if inst.IamInstanceProfile == nil || aws.ToString(inst.IamInstanceProfile.Arn) != "arn:aws:iam::000000000000:instance-profile/sortie-worker" {
			t.Errorf("instance profile = %+v", inst.IamInstanceProfile)
		}
		ip := aws.ToString(inst.PrivateIpAddress)
		if !strings.HasPrefix(ip, "10.0.") || ips[ip] {
			t.Errorf("private ip %q: want a fresh 10.0.0.0/16 address", ip)
		}
		ips[ip] = true
		if inst.LaunchTime == nil || inst.LaunchTime.IsZero() {
			t.Error("launch time missing")
		}
		if inst.Placement == nil || aws.ToString(inst.Placement.AvailabilityZone) != "us-east-1a" {
			t.Errorf("placement = %+v", inst.Placement)
		}
	}
}

func TestRunInstancesValidation(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{})
	client, _ := ec2Client(t, c)

	tests := []struct {
		name   string
		mutate func(*ec2.RunInstancesInput)
		code   string
	}{
		{"missing image", func(in *ec2.RunInstancesInput) { in.ImageId = nil }, "MissingParameter"},
		{"malformed image", func(in *ec2.RunInstancesInput) { in.ImageId = aws.String("ubuntu") }, "InvalidAMIID.Malformed"},
		{"min above max", func(in *ec2.RunInstancesInput) { in.MinCount, in.MaxCount = aws.Int32(3), aws.Int32(2) }, "InvalidParameterValue"},
		{"zero min", func(in *ec2.RunInstancesInput) { in.MinCount = aws.Int32(0) }, "InvalidParameterValue"},
		{"token too long", func(in *ec2.RunInstancesInput) { in.ClientToken = aws.String(strings.Repeat("x", 65)) }, "InvalidParameterValue"},
		{"user data not base64", func(in *ec2.RunInstancesInput) { in.UserData = aws.String("#cloud-config!") }, "InvalidParameterValue"},
		{"unknown key pair", func(in *ec2.RunInstancesInput) { in.KeyName = aws.String("nope") }, "InvalidKeyPair.NotFound"},
		{"reserved tag", func(in *ec2.RunInstancesInput) {
			in.TagSpecifications = []types.TagSpecification{{ResourceType: types.ResourceTypeInstance, Tags: []types.Tag{{Key: aws.String("aws:x"), Value: aws.String("y")}}}}
		}, "InvalidParameterValue"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := runInput(launch{})
			tt.mutate(in)
			_, err := client.RunInstances(ctxT(t), in)
			wantCode(t, err, tt.code)
			if !awsx.IsPermanent(err) && !awsx.IsNotFound(err) {
				t.Errorf("awsx classifies %v as neither permanent nor not-found", err)
			}
		})
	}
	if got := describe(t, client, &ec2.DescribeInstancesInput{}); len(got) != 0 {
		t.Errorf("invalid requests launched %d instances", len(got))
	}
}

func TestClientTokenIdempotency(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{})
	client, _ := ec2Client(t, c)
	ctx := ctxT(t)

	l := launch{count: 3, token: "job-42-rev-1", tags: map[string]string{"sortie:fleet": "f42"}}
	first, err := client.RunInstances(ctx, runInput(l))
	if err != nil {
		t.Fatalf("RunInstances: %v", err)
	}

	// The same request again, several times at once (duplicate FleetPlanned messages).
	var wg sync.WaitGroup
	errs := make([]error, 4)
	outs := make([]*ec2.RunInstancesOutput, 4)
	for i := range outs {
		wg.Go(func() { outs[i], errs[i] = client.RunInstances(ctx, runInput(l)) })
	}
	wg.Wait()
	for i, out := range outs {
		if errs[i] != nil {
			t.Fatalf("repeat %d: %v", i, errs[i])
		}
		if aws.ToString(out.ReservationId) != aws.ToString(first.ReservationId) {
			t.Errorf("repeat %d: reservation %s, want %s", i, aws.ToString(out.ReservationId), aws.ToString(first.ReservationId))
		}
		if got, want := instanceIDs(out.Instances), instanceIDs(first.Instances); !slices.Equal(got, want) {
			t.Errorf("repeat %d: instances %v, want %v", i, got, want)
		}
		if got := aws.ToString(out.Instances[0].ClientToken); got != l.token {
			t.Errorf("client token = %q, want %q", got, l.token)
		}
	}
	all := describe(t, client, &ec2.DescribeInstancesInput{})
	if len(all) != 3 {
		t.Errorf("%d instances exist, want 3", len(all))
	}

	t.Run("different parameters", func(t *testing.T) {
		changed := l
		changed.count = 4
		_, err := client.RunInstances(ctx, runInput(changed))
		wantCode(t, err, "IdempotentParameterMismatch")
		if !awsx.IsPermanent(err) {
			t.Errorf("awsx.IsPermanent(%v) = false", err)
		}
	})
	t.Run("new token launches anew", func(t *testing.T) {
		other := l
		other.token = "job-42-rev-2"
		out, err := client.RunInstances(ctx, runInput(other))
		if err != nil {
			t.Fatal(err)
		}
		if aws.ToString(out.ReservationId) == aws.ToString(first.ReservationId) {
			t.Error("a new token reused the reservation")
		}
	})
	t.Run("failed launch does not consume the token", func(t *testing.T) {
		c.SetCapacityFault("c5.large", true)
		l := launch{instanceType: types.InstanceTypeC5Large, token: "cap-token"}
		_, err := client.RunInstances(ctx, runInput(l))
		wantCode(t, err, "InsufficientInstanceCapacity")
		c.SetCapacityFault("c5.large", false)
		if _, err := client.RunInstances(ctx, runInput(l)); err != nil {
			t.Fatalf("retry with the same token after capacity returned: %v", err)
		}
	})
}

func TestDescribeInstancesFilters(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{})
	client, _ := ec2Client(t, c)
	ctx := ctxT(t)

	a := run(t, client, launch{count: 2, tags: map[string]string{"sortie:fleet": "alpha", "sortie:stage": "boot"}})
	b := run(t, client, launch{count: 1, instanceType: types.InstanceTypeT3Small, tags: map[string]string{"sortie:fleet": "beta"}})
	plain := run(t, client, launch{count: 1})
	gone := run(t, client, launch{count: 1, tags: map[string]string{"sortie:fleet": "alpha-old"}})
	waitRunning(t, client, slices.Concat(a, b, plain, gone))
	if _, err := client.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: gone}); err != nil {
		t.Fatal(err)
	}
	waitTerminated(t, client, gone)

	filter := func(name string, values ...string) types.Filter {
		return types.Filter{Name: aws.String(name), Values: values}
	}
	tests := []struct {
		name    string
		filters []types.Filter
		want    []string
	}{
		{"no filter", nil, slices.Concat(a, b, plain, gone)},
		{"tag value", []types.Filter{filter("tag:sortie:fleet", "alpha")}, a},
		{"tag values are ORed", []types.Filter{filter("tag:sortie:fleet", "alpha", "beta")}, slices.Concat(a, b)},
		{"tag wildcard", []types.Filter{filter("tag:sortie:fleet", "alpha*")}, slices.Concat(a, gone)},
		{"tag single-character wildcard", []types.Filter{filter("tag:sortie:fleet", "bet?")}, b},
		{"tag key", []types.Filter{filter("tag-key", "sortie:stage")}, a},
		{"tag key of any fleet", []types.Filter{filter("tag-key", "sortie:fleet")}, slices.Concat(a, b, gone)},
		{"state running", []types.Filter{filter("instance-state-name", "running")}, slices.Concat(a, b, plain)},
		{"state terminated", []types.Filter{filter("instance-state-name", "terminated")}, gone},
		{"instance type", []types.Filter{filter("instance-type", "t3.small")}, b},
		{"filters are ANDed", []types.Filter{filter("tag:sortie:fleet", "alpha*"), filter("instance-state-name", "running", "pending")}, a},
		{"no match", []types.Filter{filter("tag:sortie:fleet", "gamma")}, nil},
		{"endpoint tag", []types.Filter{filter("tag-key", tags.SSHEndpoint), filter("instance-state-name", "running")}, slices.Concat(a, b, plain)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := instanceIDs(describe(t, client, &ec2.DescribeInstancesInput{Filters: tt.filters}))
			want := slices.Sorted(slices.Values(tt.want))
			if !slices.Equal(got, want) {
				t.Errorf("got %v, want %v", got, want)
			}
		})
	}

	t.Run("unknown filter", func(t *testing.T) {
		_, err := client.DescribeInstances(ctx, &ec2.DescribeInstancesInput{Filters: []types.Filter{filter("availability-zone-of-doom", "x")}})
		wantCode(t, err, "InvalidParameterValue")
	})
	t.Run("instance ids and filters", func(t *testing.T) {
		got := instanceIDs(describe(t, client, &ec2.DescribeInstancesInput{
			InstanceIds: slices.Concat(a, b),
			Filters:     []types.Filter{filter("instance-type", "t3.micro")},
		}))
		if !slices.Equal(got, a) {
			t.Errorf("got %v, want %v", got, a)
		}
	})
}

func TestDescribeInstancesPagination(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{})
	client, _ := ec2Client(t, c)
	ctx := ctxT(t)

	var launched []string
	for range 4 { // several reservations, so pages cut through them
		launched = append(launched, run(t, client, launch{count: 3, tags: map[string]string{"sortie:fleet": "paged"}})...)
	}
	run(t, client, launch{count: 2, tags: map[string]string{"sortie:fleet": "other"}})

	p := ec2.NewDescribeInstancesPaginator(client, &ec2.DescribeInstancesInput{
		MaxResults: aws.Int32(5),
		Filters:    []types.Filter{{Name: aws.String("tag:sortie:fleet"), Values: []string{"paged"}}},
	})
	var pages []int
	seen := map[string]int{}
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			t.Fatalf("page %d: %v", len(pages)+1, err)
		}
		n := 0
		for _, r := range out.Reservations {
			if len(r.Instances) == 0 {
				t.Errorf("reservation %s has no instances", aws.ToString(r.ReservationId))
			}
			for _, inst := range r.Instances {
				seen[aws.ToString(inst.InstanceId)]++
				n++
			}
		}
		pages = append(pages, n)
	}
	if !slices.Equal(pages, []int{5, 5, 2}) {
		t.Errorf("page sizes = %v, want [5 5 2]", pages)
	}
	for _, id := range launched {
		if seen[id] != 1 {
			t.Errorf("instance %s seen %d times, want once", id, seen[id])
		}
	}
	if len(seen) != len(launched) {
		t.Errorf("saw %d instances, want %d", len(seen), len(launched))
	}

	tests := []struct {
		name string
		in   *ec2.DescribeInstancesInput
		code string
	}{
		{"max results too small", &ec2.DescribeInstancesInput{MaxResults: aws.Int32(4)}, "InvalidParameterValue"},
		{"max results too large", &ec2.DescribeInstancesInput{MaxResults: aws.Int32(1001)}, "InvalidParameterValue"},
		{"max results with ids", &ec2.DescribeInstancesInput{MaxResults: aws.Int32(5), InstanceIds: launched[:1]}, "InvalidParameterCombination"},
		{"bad token", &ec2.DescribeInstancesInput{MaxResults: aws.Int32(5), NextToken: aws.String("garbage")}, "InvalidParameterValue"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := client.DescribeInstances(ctx, tt.in)
			wantCode(t, err, tt.code)
		})
	}
}

func TestInstanceLifecycle(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{BootDelay: 300 * time.Millisecond, ShutdownDelay: 100 * time.Millisecond})
	client, _ := ec2Client(t, c)
	ctx := ctxT(t)

	ids := run(t, client, launch{count: 2})
	for _, inst := range describe(t, client, &ec2.DescribeInstancesInput{InstanceIds: ids}) {
		if inst.State.Name != types.InstanceStateNamePending {
			t.Errorf("%s is %s right after launch, want pending", aws.ToString(inst.InstanceId), inst.State.Name)
		}
	}
	waitRunning(t, client, ids)
	for _, inst := range describe(t, client, &ec2.DescribeInstancesInput{InstanceIds: ids}) {
		if inst.State.Name != types.InstanceStateNameRunning || aws.ToInt32(inst.State.Code) != 16 {
			t.Errorf("state = %s/%d, want running/16", inst.State.Name, aws.ToInt32(inst.State.Code))
		}
		endpoint, ok := tagValue(inst, tags.SSHEndpoint)
		if !ok || !regexp.MustCompile(`^127\.0\.0\.1:\d+$`).MatchString(endpoint) {
			t.Errorf("%s = %q, want 127.0.0.1:PORT", tags.SSHEndpoint, endpoint)
		}
	}

	out, err := client.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: ids})
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range out.TerminatingInstances {
		if ch.PreviousState.Name != types.InstanceStateNameRunning || ch.CurrentState.Name != types.InstanceStateNameShuttingDown ||
			aws.ToInt32(ch.CurrentState.Code) != 32 {
			t.Errorf("%s: %s -> %s, want running -> shutting-down", aws.ToString(ch.InstanceId), ch.PreviousState.Name, ch.CurrentState.Name)
		}
	}
	waitTerminated(t, client, ids)
	for _, inst := range describe(t, client, &ec2.DescribeInstancesInput{InstanceIds: ids}) {
		if aws.ToInt32(inst.State.Code) != 48 || inst.StateReason == nil || aws.ToString(inst.StateReason.Code) != "Client.UserInitiatedShutdown" {
			t.Errorf("terminated instance: state %d reason %+v", aws.ToInt32(inst.State.Code), inst.StateReason)
		}
	}

	again, err := client.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: ids})
	if err != nil {
		t.Fatalf("terminating twice: %v", err)
	}
	for _, ch := range again.TerminatingInstances {
		if ch.PreviousState.Name != types.InstanceStateNameTerminated || ch.CurrentState.Name != types.InstanceStateNameTerminated {
			t.Errorf("second terminate: %s -> %s, want terminated -> terminated", ch.PreviousState.Name, ch.CurrentState.Name)
		}
	}

	t.Run("terminate while pending", func(t *testing.T) {
		ids := run(t, client, launch{})
		if _, err := client.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: ids}); err != nil {
			t.Fatal(err)
		}
		waitTerminated(t, client, ids)
	})
}

func TestUnknownInstances(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{})
	client, _ := ec2Client(t, c)
	ctx := ctxT(t)
	known := run(t, client, launch{})

	const missing = "i-0123456789abcdef0"
	tests := []struct {
		name string
		call func() error
		code string
	}{
		{"describe", func() error {
			_, err := client.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{known[0], missing}})
			return err
		}, "InvalidInstanceID.NotFound"},
		{"terminate", func() error {
			_, err := client.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{missing}})
			return err
		}, "InvalidInstanceID.NotFound"},
		{"create tags", func() error {
			_, err := client.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{missing}, Tags: []types.Tag{{Key: aws.String("k"), Value: aws.String("v")}}})
			return err
		}, "InvalidInstanceID.NotFound"},
		{"console output", func() error {
			_, err := client.GetConsoleOutput(ctx, &ec2.GetConsoleOutputInput{InstanceId: aws.String(missing)})
			return err
		}, "InvalidInstanceID.NotFound"},
		{"malformed", func() error {
			_, err := client.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{"i-nothex"}})
			return err
		}, "InvalidInstanceID.Malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			wantCode(t, err, tt.code)
			if tt.code == "InvalidInstanceID.NotFound" && !awsx.IsNotFound(err) {
				t.Errorf("awsx.IsNotFound(%v) = false", err)
			}
			if tt.code == "InvalidInstanceID.Malformed" && !awsx.IsPermanent(err) {
				t.Errorf("awsx.IsPermanent(%v) = false", err)
			}
		})
	}
}

func TestTags(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{})
	client, _ := ec2Client(t, c)
	ctx := ctxT(t)
	ids := run(t, client, launch{count: 2, tags: map[string]string{"keep": "1"}})

	tag := func(k, v string) types.Tag { return types.Tag{Key: aws.String(k), Value: aws.String(v)} }
	if _, err := client.CreateTags(ctx, &ec2.CreateTagsInput{Resources: ids, Tags: []types.Tag{tag("sortie:stage", "bootstrapped"), tag("owner", "ci")}}); err != nil {
		t.Fatal(err)
	}
	tagsOf := func() map[string]string {
		t.Helper()
		m := map[string]string{}
		for _, inst := range describe(t, client, &ec2.DescribeInstancesInput{InstanceIds: ids[:1]}) {
			for _, tg := range inst.Tags {
				if aws.ToString(tg.Key) != tags.SSHEndpoint {
					m[aws.ToString(tg.Key)] = aws.ToString(tg.Value)
				}
			}
		}
		return m
	}
	steps := []struct {
		name string
		del  []types.Tag
		want map[string]string
	}{
		{"value mismatch keeps the tag", []types.Tag{tag("owner", "someone-else")}, map[string]string{"keep": "1", "sortie:stage": "bootstrapped", "owner": "ci"}},
		{"matching value deletes", []types.Tag{tag("owner", "ci")}, map[string]string{"keep": "1", "sortie:stage": "bootstrapped"}},
		{"no value deletes any value", []types.Tag{{Key: aws.String("sortie:stage")}}, map[string]string{"keep": "1"}},
		{"no tags deletes all", nil, map[string]string{}},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if _, err := client.DeleteTags(ctx, &ec2.DeleteTagsInput{Resources: ids, Tags: s.del}); err != nil {
				t.Fatal(err)
			}
			if got := tagsOf(); !maps.Equal(got, s.want) {
				t.Errorf("tags = %v, want %v", got, s.want)
			}
		})
	}
	t.Run("overwrite", func(t *testing.T) {
		for _, v := range []string{"a", "b"} {
			if _, err := client.CreateTags(ctx, &ec2.CreateTagsInput{Resources: ids[:1], Tags: []types.Tag{tag("lease", v)}}); err != nil {
				t.Fatal(err)
			}
		}
		if got := tagsOf()["lease"]; got != "b" {
			t.Errorf("lease = %q, want b", got)
		}
	})
}

func TestCapacityFaults(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{MaxInstances: 6})
	client, counter := ec2Client(t, c)
	ctx := ctxT(t)

	c.SetCapacityFault("p5.48xlarge", true)
	before := counter.n.Load()
	_, err := client.RunInstances(ctx, runInput(launch{instanceType: types.InstanceTypeP548xlarge}))
	wantCode(t, err, "InsufficientInstanceCapacity")
	if !awsx.IsCapacity(err) || awsx.IsPermanent(err) || awsx.IsThrottle(err) {
		t.Errorf("classification of %v: capacity=%v permanent=%v throttle=%v", err, awsx.IsCapacity(err), awsx.IsPermanent(err), awsx.IsThrottle(err))
	}
	var respErr *awshttp.ResponseError
	if !errors.As(err, &respErr) || respErr.HTTPStatusCode() != 500 {
		t.Errorf("want HTTP 500 as AWS sends for server errors, got %v", err)
	}
	// A 500 is retryable for the SDK, as it is against AWS.
	if n := counter.n.Load() - before; n != 3 {
		t.Errorf("SDK sent %d attempts, want 3 (default max attempts)", n)
	}

	// MinCount/MaxCount against a capped type: launch what fits, fail below MinCount.
	c.SetCapacity("t3.micro", 3)
	out, err := client.RunInstances(ctx, &ec2.RunInstancesInput{
		ImageId: aws.String(testImage), InstanceType: types.InstanceTypeT3Micro, MinCount: aws.Int32(1), MaxCount: aws.Int32(5),
	})
	if err != nil {
		t.Fatalf("RunInstances 1..5 with capacity 3: %v", err)
	}
	if len(out.Instances) != 3 {
		t.Errorf("launched %d, want the 3 that fit", len(out.Instances))
	}
	_, err = client.RunInstances(ctx, runInput(launch{}))
	wantCode(t, err, "InsufficientInstanceCapacity")

	// Terminating frees capacity.
	if _, err := client.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{aws.ToString(out.Instances[0].InstanceId)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.RunInstances(ctx, runInput(launch{})); err != nil {
		t.Fatalf("launch after a termination freed capacity: %v", err)
	}

	// The account-wide limit (3 running t3.micro + 4 t3.small > 6).
	_, err = client.RunInstances(ctx, runInput(launch{count: 4, instanceType: types.InstanceTypeT3Small}))
	wantCode(t, err, "InstanceLimitExceeded")
	if !awsx.IsCapacity(err) {
		t.Errorf("awsx.IsCapacity(%v) = false", err)
	}

	c.SetCapacityFault("p5.48xlarge", false)
	if _, err := client.RunInstances(ctx, runInput(launch{instanceType: types.InstanceTypeP548xlarge})); err != nil {
		t.Fatalf("after clearing the fault: %v", err)
	}
}

func TestThrottling(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{})
	client, counter := ec2Client(t, c)
	ctx := ctxT(t)

	t.Run("retried by the SDK", func(t *testing.T) {
		c.ThrottleNext(2)
		before := counter.n.Load()
		if _, err := client.DescribeInstances(ctx, &ec2.DescribeInstancesInput{}); err != nil {
			t.Fatalf("DescribeInstances with 2 throttled attempts: %v", err)
		}
		if n := counter.n.Load() - before; n != 3 {
			t.Errorf("SDK sent %d requests, want 3 (2 throttled + 1)", n)
		}
	})
	t.Run("retries exhausted", func(t *testing.T) {
		c.ThrottleNext(10)
		defer c.ThrottleNext(0)
		before := counter.n.Load()
		_, err := client.DescribeInstances(ctx, &ec2.DescribeInstancesInput{})
		wantCode(t, err, "RequestLimitExceeded")
		if !awsx.IsThrottle(err) || awsx.IsPermanent(err) {
			t.Errorf("awsx.IsThrottle(%v) = %v, IsPermanent = %v", err, awsx.IsThrottle(err), awsx.IsPermanent(err))
		}
		var respErr *awshttp.ResponseError
		if !errors.As(err, &respErr) || respErr.HTTPStatusCode() != 503 {
			t.Errorf("want HTTP 503, got %v", err)
		}
		if n := counter.n.Load() - before; n != 3 {
			t.Errorf("SDK sent %d requests, want 3 (its max attempts)", n)
		}
	})
	t.Run("every nth request", func(t *testing.T) {
		c.SetThrottle(2)
		defer c.SetThrottle(0)
		before := counter.n.Load()
		for i := range 4 {
			if _, err := client.DescribeInstances(ctx, &ec2.DescribeInstancesInput{}); err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
		}
		// Requests 2, 4 and 6 are throttled and retried: 4 calls take 7 requests.
		if n := counter.n.Load() - before; n != 7 {
			t.Errorf("SDK sent %d requests for 4 calls, want 7", n)
		}
	})
}

func TestDryRun(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{})
	client, _ := ec2Client(t, c)
	in := runInput(launch{})
	in.DryRun = aws.Bool(true)
	_, err := client.RunInstances(ctxT(t), in)
	wantCode(t, err, "DryRunOperation")
	if got := describe(t, client, &ec2.DescribeInstancesInput{}); len(got) != 0 {
		t.Errorf("dry run launched %d instances", len(got))
	}
}

func TestFaultOptions(t *testing.T) {
	t.Parallel()
	t.Run("capacity", func(t *testing.T) {
		c := newCloud(t, Options{Capacity: map[string]int{"t3.micro": 0}})
		client, _ := ec2Client(t, c)
		_, err := client.RunInstances(ctxT(t), runInput(launch{}))
		wantCode(t, err, "InsufficientInstanceCapacity")
		if _, err := client.RunInstances(ctxT(t), runInput(launch{instanceType: types.InstanceTypeT3Small})); err != nil {
			t.Errorf("another type: %v", err)
		}
	})
	t.Run("throttle every request", func(t *testing.T) {
		c := newCloud(t, Options{ThrottleEvery: 1})
		client, _ := ec2Client(t, c)
		_, err := client.DescribeInstances(ctxT(t), &ec2.DescribeInstancesInput{})
		wantCode(t, err, "RequestLimitExceeded")
	})
}

// Close terminates every instance: SSH hosts close, their processes die, the endpoint stops.
func TestCloseTerminatesEverything(t *testing.T) {
	t.Parallel()
	c, err := New(Options{Addr: "127.0.0.1:0", DataDir: t.TempDir(), BootDelay: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	f := newFleet(t, c)
	ids, err := f.launchUntilSSH(ctxT(t), 2)
	if err != nil {
		t.Fatal(err)
	}
	endpoint := endpointOf(t, f.client, ids[0])
	conn, err := ssh.Dial("tcp", endpoint, &ssh.ClientConfig{
		User: "admin", Auth: []ssh.AuthMethod{ssh.PublicKeys(f.user)}, HostKeyCallback: ssh.FixedHostKey(f.hostKey),
	})
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(sshRun(t, conn, "nohup sleep 60 > /dev/null 2>&1 < /dev/null & echo $!", "")))
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	run(t, f.client, launch{}) // still booting when Close comes: Close must not wait for it

	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if processAlive(pid) {
		t.Errorf("process %d survived Close", pid)
	}
	if _, err := net.DialTimeout("tcp", endpoint, time.Second); err == nil {
		t.Error("an instance's SSH endpoint still accepts connections after Close")
	}
	if _, err := http.Get(c.URL()); err == nil {
		t.Error("the cloud's endpoint still answers after Close")
	}
}
