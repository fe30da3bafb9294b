package provisioner

import (
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/hostkey"
	"github.com/sortie-fleet/sortie/pkg/learn"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/tags"
)

var (
	testSecret = []byte("0123456789abcdef0123456789abcdef")
	submitted  = time.Date(2025, 3, 14, 9, 26, 53, 0, time.UTC)
	now        = submitted.Add(3 * time.Second)
)

// plan is the demo job's plan: 3 × m3.medium of the demo template.
func plan() events.FleetPlanned {
	return events.FleetPlanned{
		Header:           events.NewHeader("job-42", "corr-42", submitted.Add(time.Second)),
		FleetID:          "job-42",
		PlanRevision:     1,
		Template:         "demo",
		Profile:          "demo-fast",
		Recipe:           "demo-worker",
		Params:           map[string]string{"bucket": "demo", "queue": "work"},
		DeadlineSeconds:  10,
		SubmittedAt:      submitted,
		Items:            202,
		InstanceType:     "m3.medium",
		Count:            3,
		EstimatedSeconds: 7.7,
		MeetsDeadline:    true,
		Rationale:        "202 items, 600/min per m3.medium, 1 s boot, 10 s deadline → 3 instances",
		Nonce:            nonceA,
	}
}

// Two plan nonces: a plan and a duplicate planned from the same job again.
const (
	nonceA = "AAECAwQFBgcICQoLDA0ODw"
	nonceB = "BBECAwQFBgcICQoLDA0ODw"
)

// derivedKey is the public host key of job-42's fleet derived with nonce.
func derivedKey(t *testing.T, nonce string) string {
	t.Helper()
	priv, _, err := hostkey.Derive(testSecret, "job-42", 1, nonce)
	if err != nil {
		t.Fatal(err)
	}
	k, err := hostkey.AuthorizedKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// Known answers: hex(sha256("sortie/job-42/1")) and
// hex(sha256("sortie/job-42/1/c5.large/subnet-0123456789abcdef0")).
const (
	baseToken     = "d2d9583f4ae7879d96b42552310fd1529e1f4be3477e3878543b9a611c31f2ac"
	fallbackToken = "cd25a048460fa19c44cd252c5a8c30f477492ff265797aa96bc208695f0cf4b0"
)

// twoSubnets is the default ops config with a second subnet in the demo template.
func twoSubnets() *opsconfig.Config {
	ops := opsconfig.Default()
	t := ops.Templates["demo"]
	t.Subnets = append(t.Subnets, "subnet-0123456789abcdef1")
	ops.Templates["demo"] = t
	return ops
}

func TestAttempts(t *testing.T) {
	tests := []struct {
		name    string
		ops     *opsconfig.Config
		planned string
		want    []string // type@subnet
	}{
		{"planned type first", opsconfig.Default(), "m3.medium", []string{"m3.medium@subnet-0123456789abcdef0", "c5.large@subnet-0123456789abcdef0"}},
		{"planned type first even when listed second", opsconfig.Default(), "c5.large", []string{"c5.large@subnet-0123456789abcdef0", "m3.medium@subnet-0123456789abcdef0"}},
		{"types, then subnets", twoSubnets(), "m3.medium", []string{
			"m3.medium@subnet-0123456789abcdef0", "c5.large@subnet-0123456789abcdef0",
			"m3.medium@subnet-0123456789abcdef1", "c5.large@subnet-0123456789abcdef1",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fp := plan()
			fp.InstanceType = tt.planned
			atts := attempts("sortie", tt.ops.Templates["demo"], fp)
			var got []string
			seen := map[string]bool{}
			for _, a := range atts {
				got = append(got, a.InstanceType+"@"+a.Subnet)
				if len(a.Token) != 64 || seen[a.Token] {
					t.Errorf("token %q: want 64 characters, unique per attempt", a.Token)
				}
				seen[a.Token] = true
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("attempts %v, want %v", got, tt.want)
			}
			if atts[0].Token != baseToken {
				t.Errorf("first token %s, want hex(sha256(job_id/plan_revision)) = %s", atts[0].Token, baseToken)
			}
			again := attempts("sortie", tt.ops.Templates["demo"], fp)
			if !slices.Equal(tokens(atts), tokens(again)) {
				t.Error("tokens are not deterministic")
			}
		})
	}
	if got := attempts("sortie", opsconfig.Default().Templates["demo"], plan())[1].Token; got != fallbackToken {
		t.Errorf("fallback token %s, want %s", got, fallbackToken)
	}
	fp := plan()
	fp.PlanRevision = 2
	if attempts("sortie", opsconfig.Default().Templates["demo"], fp)[0].Token == baseToken {
		t.Error("revision 2 reuses revision 1's token")
	}
}

// spotTemplate is the demo template asking for spot at up to maxPrice, with fallback.
func spotTemplate(maxPrice float64, fallback ...string) *opsconfig.Config {
	ops := opsconfig.Default()
	t := ops.Templates["demo"]
	t.Spot = &opsconfig.Spot{MaxPrice: maxPrice, Fallback: fallback}
	ops.Templates["demo"] = t
	return ops
}

func TestSpotAttempts(t *testing.T) {
	const sub = "@subnet-0123456789abcdef0"
	tests := []struct {
		name     string
		fallback []string
		want     []string // type/market@subnet
	}{
		{"spot only", nil, []string{"m3.medium/spot" + sub}},
		{"spot, then on demand", []string{"on-demand"}, []string{"m3.medium/spot" + sub, "m3.medium/on-demand" + sub, "c5.large/on-demand" + sub}},
		{"spot, other types as spot", []string{"types"}, []string{"m3.medium/spot" + sub, "c5.large/spot" + sub}},
		{"spot, other types as spot, then on demand", []string{"types", "on-demand"}, []string{
			"m3.medium/spot" + sub, "c5.large/spot" + sub, "m3.medium/on-demand" + sub, "c5.large/on-demand" + sub,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			atts := attempts("sortie", spotTemplate(0, tt.fallback...).Templates["demo"], plan())
			var got []string
			seen := map[string]bool{}
			for _, a := range atts {
				got = append(got, a.InstanceType+"/"+a.Market+"@"+a.Subnet)
				if seen[a.Token] {
					t.Errorf("token %s used twice", a.Token)
				}
				seen[a.Token] = true
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("attempts %v, want %v", got, tt.want)
			}
			if atts[0].Token != baseToken {
				t.Errorf("first attempt's token %s, want the plan's %s", atts[0].Token, baseToken)
			}
		})
	}
}

func TestRunInput(t *testing.T) {
	tmpl := opsconfig.Default().Templates["demo"]
	a := launch{attempt: attempt{InstanceType: "c5.large", Subnet: "subnet-0123456789abcdef0", Market: events.MarketOnDemand, Token: fallbackToken},
		Count: 3, HourlyPrice: 0.17}
	fp := plan()
	fp.PlannedCost = 0.0034
	in := runInput("sortie", fp, tmpl, a, hostKeys{userData: "#cloud-config\n", public: "ssh-ed25519 AAAA", nonce: nonceA}, now)

	if aws.ToString(in.ImageId) != "ami-0123456789abcdef0" || in.InstanceType != "c5.large" ||
		aws.ToInt32(in.MinCount) != 3 || aws.ToInt32(in.MaxCount) != 3 ||
		aws.ToString(in.KeyName) != "sortie-dev" || aws.ToString(in.SubnetId) != a.Subnet ||
		!slices.Equal(in.SecurityGroupIds, []string{"sg-0123456789abcdef0"}) ||
		in.IamInstanceProfile == nil || aws.ToString(in.IamInstanceProfile.Name) != "sortie-worker" ||
		aws.ToString(in.ClientToken) != fallbackToken {
		t.Errorf("request: %+v", in)
	}
	if ud, err := base64.StdEncoding.DecodeString(aws.ToString(in.UserData)); err != nil || string(ud) != "#cloud-config\n" {
		t.Errorf("user data %q (%v): want the cloud-config, base64", ud, err)
	}
	if len(in.TagSpecifications) != 2 || in.TagSpecifications[0].ResourceType != types.ResourceTypeInstance ||
		in.TagSpecifications[1].ResourceType != types.ResourceTypeVolume {
		t.Fatalf("tag specifications %+v: want the instance's and its volumes'", in.TagSpecifications)
	}
	volume := map[string]string{}
	for _, tag := range in.TagSpecifications[1].Tags {
		volume[aws.ToString(tag.Key)] = aws.ToString(tag.Value)
	}
	if volume[tags.Stack] != "sortie" || volume[tags.Fleet] != "job-42" || volume[tags.JobID] != "job-42" || volume[tags.PlanRevision] != "1" {
		t.Errorf("volume tags %v: want the stack, job, fleet and plan revision", volume)
	}
	got := map[string]string{}
	for _, tag := range in.TagSpecifications[0].Tags {
		got[aws.ToString(tag.Key)] = aws.ToString(tag.Value)
	}
	want := map[string]string{
		"Name":                  "sortie-job-42",
		"sortie:stack":          "sortie",
		"sortie:job-id":         "job-42",
		"sortie:fleet":          "job-42",
		"sortie:plan-revision":  "1",
		"sortie:lease-expires":  "2025-03-14T09:56:56Z", // now + the template's 30 min TTL
		"sortie:stage":          "launched",
		"sortie:template":       "demo",
		"sortie:correlation-id": "corr-42",
		"sortie:hostkey-nonce":  nonceA,
		"sortie:market":         "on-demand",
		"sortie:hourly-price":   "0.17",
		"sortie:planned-cost":   "0.0034",
		"sortie:host-key":       "ssh-ed25519 AAAA", // what `sortie ssh` pins
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("tg %v, want %v", got, want)
	}
	if in.InstanceMarketOptions != nil {
		t.Errorf("on-demand attempt asks for market %+v", in.InstanceMarketOptions)
	}
	spot := a
	spot.Market = events.MarketSpot
	in2 := runInput("sortie", fp, spotTemplate(0.05).Templates["demo"], spot, hostKeys{}, now)
	if mo := in2.InstanceMarketOptions; mo == nil || mo.MarketType != types.MarketTypeSpot || mo.SpotOptions == nil ||
		aws.ToString(mo.SpotOptions.MaxPrice) != "0.05" || mo.SpotOptions.SpotInstanceType != types.SpotInstanceTypeOneTime ||
		mo.SpotOptions.InstanceInterruptionBehavior != types.InstanceInterruptionBehaviorTerminate {
		t.Errorf("spot attempt: market options %+v", mo)
	}
	if in2 = runInput("sortie", fp, spotTemplate(0).Templates["demo"], spot, hostKeys{}, now); in2.InstanceMarketOptions.SpotOptions.MaxPrice != nil {
		t.Errorf("spot without a max price sends %q", aws.ToString(in2.InstanceMarketOptions.SpotOptions.MaxPrice))
	}
	if m := in.MetadataOptions; m == nil || m.HttpTokens != types.HttpTokensStateRequired ||
		aws.ToInt32(m.HttpPutResponseHopLimit) != 1 || m.HttpEndpoint != types.InstanceMetadataEndpointStateEnabled {
		t.Errorf("metadata options %+v: want IMDSv2 required, hop limit 1, endpoint enabled", m)
	}

	// Instance host keys: no user data (cloud-init makes the keys), no nonce to record.
	own := tmpl
	own.HostKeys = opsconfig.HostKeysInstance
	in = runInput("sortie", plan(), own, a, hostKeys{}, now)
	if in.UserData != nil {
		t.Errorf("instance host keys: user data %q, want none", aws.ToString(in.UserData))
	}
	for _, tag := range in.TagSpecifications[0].Tags {
		if k := aws.ToString(tag.Key); k == tags.HostKeyNonce || k == tags.HostKey {
			t.Errorf("instance host keys: tagged %s", k)
		}
	}

	tmpl.InstanceProfile = "arn:aws:iam::000000000000:instance-profile/worker"
	tmpl.Subnets = nil
	in = runInput("sortie", plan(), tmpl, launch{attempt: attempt{InstanceType: "m3.medium", Market: events.MarketOnDemand, Token: baseToken}, Count: 3}, hostKeys{}, now)
	if in.IamInstanceProfile.Name != nil || aws.ToString(in.IamInstanceProfile.Arn) != tmpl.InstanceProfile || in.SubnetId != nil {
		t.Errorf("profile by ARN, no subnet: %+v %+v", in.IamInstanceProfile, in.SubnetId)
	}
}

func apiError(code string) error {
	return &smithy.GenericAPIError{Code: code, Message: code + " (test)"}
}

// fakeEC2 is an in-memory EC2 with AWS's idempotency semantics: enough to drive every
// branch of the launcher. The service test runs the same flows on the local cloud.
type fakeEC2 struct {
	mu        sync.Mutex
	instances []*types.Instance
	tokens    map[string]string // client token → request fingerprint

	noCapacity  map[string]bool // instance types that are out of capacity
	runErrs     []error         // returned by the next RunInstances calls, in order
	onRun       func(f *fakeEC2, in *ec2.RunInstancesInput)
	noTag       bool  // launch without the sortie:ssh-endpoint tag
	publicIPs   bool  // instances get a public IP too
	bootPolls   int   // DescribeInstances by id before pending turns running; < 0: never
	failBoot    bool  // instances go to terminated instead of running
	describeErr error // returned by DescribeInstances by id

	runs       []*ec2.RunInstancesInput
	polls      int
	terminated []string
}

func (f *fakeEC2) add(token, fleet, state string, n int) {
	for range n {
		id := fmt.Sprintf("i-%017x", len(f.instances)+1)
		f.instances = append(f.instances, &types.Instance{
			InstanceId:       aws.String(id),
			InstanceType:     "m3.medium",
			ClientToken:      aws.String(token),
			State:            &types.InstanceState{Name: types.InstanceStateName(state)},
			PrivateIpAddress: aws.String(fmt.Sprintf("10.0.0.%d", len(f.instances)+10)),
			LaunchTime:       aws.Time(now),
			Tags:             []types.Tag{{Key: aws.String(tags.Stack), Value: aws.String("sortie")}, {Key: aws.String(tags.Fleet), Value: aws.String(fleet)}, {Key: aws.String(tags.SSHEndpoint), Value: aws.String(fmt.Sprintf("127.0.0.1:%d", 2200+len(f.instances)))}},
		})
	}
}

func (f *fakeEC2) RunInstances(_ context.Context, in *ec2.RunInstancesInput, _ ...func(*ec2.Options)) (*ec2.RunInstancesOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.runs = append(f.runs, in)
	if f.onRun != nil {
		f.onRun(f, in)
	}
	if len(f.runErrs) > 0 {
		err := f.runErrs[0]
		f.runErrs = f.runErrs[1:]
		return nil, err
	}
	if f.noCapacity[string(in.InstanceType)] {
		return nil, apiError("InsufficientInstanceCapacity")
	}
	token := aws.ToString(in.ClientToken)
	fingerprint := fmt.Sprintf("%s %s %d %v %s", in.InstanceType, aws.ToString(in.SubnetId), aws.ToInt32(in.MinCount), in.TagSpecifications, aws.ToString(in.UserData))
	if have, ok := f.tokens[token]; ok {
		if have != fingerprint {
			return nil, apiError("IdempotentParameterMismatch")
		}
		out := &ec2.RunInstancesOutput{}
		for _, i := range f.instances {
			if aws.ToString(i.ClientToken) == token {
				out.Instances = append(out.Instances, *i)
			}
		}
		return out, nil
	}
	if f.tokens == nil {
		f.tokens = map[string]string{}
	}
	f.tokens[token] = fingerprint
	out := &ec2.RunInstancesOutput{ReservationId: aws.String("r-1")}
	for range aws.ToInt32(in.MaxCount) {
		n := len(f.instances) + 1
		tg := slices.Clone(in.TagSpecifications[0].Tags)
		if !f.noTag {
			tg = append(tg, types.Tag{Key: aws.String(tags.SSHEndpoint), Value: aws.String(fmt.Sprintf("127.0.0.1:%d", 2200+n))})
		}
		i := &types.Instance{
			InstanceId:       aws.String(fmt.Sprintf("i-%017x", n)),
			InstanceType:     in.InstanceType,
			ClientToken:      in.ClientToken,
			State:            &types.InstanceState{Name: types.InstanceStateNamePending},
			PrivateIpAddress: aws.String(fmt.Sprintf("10.0.0.%d", n+10)),
			LaunchTime:       aws.Time(now),
			Tags:             tg,
		}
		if f.publicIPs {
			i.PublicIpAddress = aws.String(fmt.Sprintf("203.0.113.%d", n+10))
		}
		f.instances = append(f.instances, i)
		out.Instances = append(out.Instances, *i)
	}
	return out, nil
}

func (f *fakeEC2) DescribeInstances(_ context.Context, in *ec2.DescribeInstancesInput, _ ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(in.InstanceIds) > 0 {
		if f.describeErr != nil {
			return nil, f.describeErr
		}
		f.polls++
		if f.bootPolls >= 0 && f.polls > f.bootPolls {
			for _, i := range f.instances {
				if i.State.Name == types.InstanceStateNamePending {
					i.State = &types.InstanceState{Name: types.InstanceStateNameRunning}
					if f.failBoot {
						i.State = &types.InstanceState{Name: types.InstanceStateNameTerminated}
					}
				}
			}
		}
	}
	var r types.Reservation
	for _, i := range f.instances {
		if len(in.InstanceIds) > 0 && !slices.Contains(in.InstanceIds, aws.ToString(i.InstanceId)) {
			continue
		}
		if !matches(i, in.Filters) {
			continue
		}
		r.Instances = append(r.Instances, *i)
	}
	return &ec2.DescribeInstancesOutput{Reservations: []types.Reservation{r}}, nil
}

func matches(i *types.Instance, filters []types.Filter) bool {
	for _, flt := range filters {
		var v string
		switch name := aws.ToString(flt.Name); {
		case name == "client-token":
			v = aws.ToString(i.ClientToken)
		case strings.HasPrefix(name, "tag:"):
			v, _ = tagLookup(i.Tags, strings.TrimPrefix(name, "tag:"))
		default:
			panic("fake: filter " + name)
		}
		if !slices.Contains(flt.Values, v) {
			return false
		}
	}
	return true
}

func (f *fakeEC2) TerminateInstances(_ context.Context, in *ec2.TerminateInstancesInput, _ ...func(*ec2.Options)) (*ec2.TerminateInstancesOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.terminated = append(f.terminated, in.InstanceIds...)
	for _, i := range f.instances {
		if slices.Contains(in.InstanceIds, aws.ToString(i.InstanceId)) {
			i.State = &types.InstanceState{Name: types.InstanceStateNameShuttingDown}
		}
	}
	return &ec2.TerminateInstancesOutput{}, nil
}

var _ EC2API = (*fakeEC2)(nil)

func TestLaunch(t *testing.T) {
	tests := []struct {
		name      string
		ops       *opsconfig.Config
		fp        func(*events.FleetPlanned)
		ec2       *fakeEC2
		wantRuns  []string // type@token-prefix of each RunInstances
		wantType  string   // of the launched instances
		wantCount int      // of the launched instances; 0 means the plan's 3
		wantFall  string   // a substring of FleetLaunched.Fallback; "" means none
		wantIDs   []string
		wantEnd   []string // endpoints
		wantErr   string
		permanent bool
		ended     bool
		wantTerm  int       // instances terminated
		rates     fakeRates // learned rates by "profile/type"
	}{
		{
			name: "fresh launch: one RunInstances with the plan's token", ec2: &fakeEC2{bootPolls: 1},
			wantRuns: []string{"m3.medium@" + baseToken[:8]}, wantType: "m3.medium",
			wantIDs: []string{"i-00000000000000001", "i-00000000000000002", "i-00000000000000003"},
			wantEnd: []string{"127.0.0.1:2201", "127.0.0.1:2202", "127.0.0.1:2203"},
		},
		{
			name: "no endpoint tag: private IP, port 22", ec2: &fakeEC2{noTag: true},
			wantRuns: []string{"m3.medium@" + baseToken[:8]}, wantType: "m3.medium",
			wantEnd: []string{"10.0.0.11:22", "10.0.0.12:22", "10.0.0.13:22"},
		},
		{
			name: "already launched: reuses the live instances, launches nothing",
			ec2: func() *fakeEC2 {
				f := &fakeEC2{}
				f.add(baseToken, "job-42", "running", 2)
				f.add(baseToken, "job-42", "pending", 1)
				f.add(baseToken, "job-41", "running", 1) // another fleet
				f.add("other", "job-42", "running", 1)   // another revision
				return f
			}(),
			wantType: "m3.medium", wantIDs: []string{"i-00000000000000001", "i-00000000000000002", "i-00000000000000003"},
		},
		{
			name: "launched with a fallback token before: reused too",
			ec2: func() *fakeEC2 {
				f := &fakeEC2{}
				f.add(fallbackToken, "job-42", "running", 3)
				return f
			}(),
			wantType: "m3.medium", wantIDs: []string{"i-00000000000000001", "i-00000000000000002", "i-00000000000000003"},
		},
		{
			name: "fleet ended: nothing to do",
			ec2: func() *fakeEC2 {
				f := &fakeEC2{}
				f.add(baseToken, "job-42", "terminated", 3)
				return f
			}(),
			ended: true,
		},
		{
			// 202 items, 7 s left of 10 s at 3 s past submission, 1 s boot: c5.large does 60
			// items in the 6 s, so 4 of them (the plan's 3 were sized as m3.mediums).
			name:     "no capacity for the planned type: falls back to the next, re-sized for it, with its own token",
			ec2:      &fakeEC2{noCapacity: map[string]bool{"m3.medium": true}},
			wantRuns: []string{"m3.medium@" + baseToken[:8], "c5.large@" + fallbackToken[:8]}, wantType: "c5.large", wantCount: 4,
			wantFall: "m3.medium in subnet-0123456789abcdef0: InsufficientInstanceCapacity; re-sized for c5.large: 202 items, 600/min per c5.large (configured; 0 of 5 samples learned), 1 s boot, 10 s deadline, 7.0 s left after 3.0 s waiting → 4 instances",
		},
		{
			// The same, but the ledger has learned c5.large does 300/min (12 samples): 30
			// items each in the 6 s, so 7 of them.
			name:     "the fallback type is re-sized with its learned rate",
			ec2:      &fakeEC2{noCapacity: map[string]bool{"m3.medium": true}},
			rates:    fakeRates{"demo-fast/c5.large": {Mean: 300, Samples: 12}},
			wantRuns: []string{"m3.medium@" + baseToken[:8], "c5.large@" + fallbackToken[:8]}, wantType: "c5.large", wantCount: 7,
			wantFall: "re-sized for c5.large: 202 items, 300/min per c5.large (learned",
		},
		{
			name: "fallback type that cannot meet the deadline is not launched",
			fp:   func(fp *events.FleetPlanned) { fp.Items = 2000; fp.InstanceType = "c5.large"; fp.Count = 10 },
			ops: func() *opsconfig.Config { // m3.medium at 10/min: 2000 items need far more than 10
				ops := opsconfig.Default()
				ops.Profiles["demo-fast"]["m3.medium"] = opsconfig.Capacity{ItemsPerMinute: 10, BootSeconds: 1, HourlyPrice: 0.067}
				return ops
			}(),
			ec2:       &fakeEC2{noCapacity: map[string]bool{"c5.large": true}},
			wantRuns:  []string{"c5.large@" + baseToken[:8]},
			wantErr:   "m3.medium cannot meet the deadline: 2000 items, 10/min per m3.medium",
			permanent: true,
		},
		{
			name: "no capacity anywhere: every type in every subnet, then a permanent failure", ops: twoSubnets(),
			ec2:       &fakeEC2{noCapacity: map[string]bool{"m3.medium": true, "c5.large": true}},
			wantRuns:  []string{"m3.medium@" + baseToken[:8], "c5.large@" + fallbackToken[:8], "m3.medium@", "c5.large@"},
			wantErr:   "no capacity for 3 instances of any type in any subnet of template \"demo\": m3.medium in subnet-0123456789abcdef0: InsufficientInstanceCapacity",
			permanent: true,
		},
		{
			name: "throttled: retried later", ec2: &fakeEC2{runErrs: []error{apiError("RequestLimitExceeded")}},
			wantRuns: []string{"m3.medium@" + baseToken[:8]}, wantErr: "RequestLimitExceeded",
		},
		{
			name: "template names a missing AMI: permanent", ec2: &fakeEC2{runErrs: []error{apiError("InvalidAMIID.NotFound")}},
			wantRuns: []string{"m3.medium@" + baseToken[:8]}, wantErr: "InvalidAMIID.NotFound", permanent: true,
		},
		{
			name: "a concurrent delivery launched first: its instances are reused",
			ec2: &fakeEC2{
				runErrs: []error{apiError("IdempotentParameterMismatch")},
				onRun:   func(f *fakeEC2, _ *ec2.RunInstancesInput) { f.add(baseToken, "job-42", "pending", 3) },
			},
			wantRuns: []string{"m3.medium@" + baseToken[:8]}, wantType: "m3.medium",
			wantIDs: []string{"i-00000000000000001", "i-00000000000000002", "i-00000000000000003"},
		},
		{
			name: "token taken but no instance carries it: permanent", ec2: &fakeEC2{runErrs: []error{apiError("IdempotentParameterMismatch")}},
			wantRuns: []string{"m3.medium@" + baseToken[:8]}, wantErr: "is taken, but no instance carries it", permanent: true,
		},
		{
			name: "never running: terminated, permanent", ec2: &fakeEC2{bootPolls: -1},
			wantRuns: []string{"m3.medium@" + baseToken[:8]}, wantErr: "did not reach running within", permanent: true, wantTerm: 3,
		},
		{
			name: "an instance fails to boot: the fleet is terminated, permanent", ec2: &fakeEC2{failBoot: true},
			wantRuns: []string{"m3.medium@" + baseToken[:8]}, wantErr: "did not reach running", permanent: true, wantTerm: 3,
		},
		{
			name: "describe throttled while waiting: retried, instances kept", ec2: &fakeEC2{describeErr: apiError("RequestLimitExceeded")},
			wantRuns: []string{"m3.medium@" + baseToken[:8]}, wantErr: "RequestLimitExceeded",
		},
		{
			name: "unknown template: permanent, no EC2 call", fp: func(fp *events.FleetPlanned) { fp.Template = "x" }, ec2: &fakeEC2{},
			wantErr: `unknown template "x"`, permanent: true,
		},
		{
			name: "type outside the template: permanent", fp: func(fp *events.FleetPlanned) { fp.InstanceType = "p4d.24xlarge" }, ec2: &fakeEC2{},
			wantErr: `instance type "p4d.24xlarge" is not one of template "demo"'s (m3.medium, c5.large)`, permanent: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ops := tt.ops
			if ops == nil {
				ops = opsconfig.Default()
			}
			fp := plan()
			if tt.fp != nil {
				tt.fp(&fp)
			}
			l := &launcher{
				stack: "sortie", local: true, ec2: tt.ec2, ops: ops, secret: testSecret, now: func() time.Time { return now },
				waiterMinDelay: time.Millisecond, waiterMaxDelay: 5 * time.Millisecond, timeout: 300 * time.Millisecond,
			}
			if tt.rates != nil {
				l.rates = tt.rates
			}
			got, err := l.launch(context.Background(), fp)

			var runs []string
			for _, r := range tt.ec2.runs {
				runs = append(runs, string(r.InstanceType)+"@"+aws.ToString(r.ClientToken)[:8])
			}
			for i, w := range tt.wantRuns {
				if i >= len(runs) || !strings.HasPrefix(runs[i], w) {
					t.Errorf("RunInstances calls %v, want %v", runs, tt.wantRuns)
					break
				}
			}
			if len(runs) != len(tt.wantRuns) {
				t.Errorf("%d RunInstances calls (%v), want %d", len(runs), runs, len(tt.wantRuns))
			}
			if len(tt.ec2.terminated) != tt.wantTerm {
				t.Errorf("terminated %v, want %d instances", tt.ec2.terminated, tt.wantTerm)
			}
			switch {
			case tt.ended:
				if !errors.Is(err, errFleetEnded) {
					t.Fatalf("error %v, want errFleetEnded", err)
				}
				return
			case tt.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				if bus.IsPermanent(err) != tt.permanent {
					t.Errorf("permanent = %t, want %t (%v)", bus.IsPermanent(err), tt.permanent, err)
				}
				return
			case err != nil:
				t.Fatal(err)
			}

			if _, err := events.Encode(got); err != nil {
				t.Fatalf("FleetLaunched does not validate: %v", err)
			}
			if got.HostKey != derivedKey(t, nonceA) || got.KeyName != "sortie-dev" || got.FleetID != "job-42" || got.PlanRevision != 1 ||
				got.Recipe != "demo-worker" || got.Template != "demo" || fmt.Sprint(got.Params) != fmt.Sprint(fp.Params) ||
				!got.DeadlineAt.Equal(submitted.Add(10*time.Second)) || got.CorrelationID != "corr-42" || !got.Time.Equal(now) {
				t.Errorf("FleetLaunched %+v", got)
			}
			var ids, endpoints []string
			for _, in := range got.Instances {
				ids = append(ids, in.ID)
				endpoints = append(endpoints, in.SSHEndpoint)
				if in.InstanceType != tt.wantType || !in.LaunchedAt.Equal(now) || in.PrivateIP == "" {
					t.Errorf("instance %+v, want type %s launched at %s", in, tt.wantType, now)
				}
			}
			wantCount := cmp.Or(tt.wantCount, 3)
			if len(ids) != wantCount {
				t.Errorf("instances %v, want %d", ids, wantCount)
			}
			if got.PlannedInstanceType != fp.InstanceType || got.PlannedCount != fp.Count {
				t.Errorf("planned %d × %s in FleetLaunched, want the plan's %d × %s", got.PlannedCount, got.PlannedInstanceType, fp.Count, fp.InstanceType)
			}
			if tt.wantFall == "" && got.Fallback != "" || !strings.Contains(got.Fallback, tt.wantFall) {
				t.Errorf("fallback %q, want %q", got.Fallback, tt.wantFall)
			}
			if n := len(tt.ec2.runs); n > 0 {
				if last := tt.ec2.runs[n-1]; aws.ToInt32(last.MinCount) != int32(wantCount) || aws.ToInt32(last.MaxCount) != int32(wantCount) {
					t.Errorf("RunInstances counts %d..%d, want %d", aws.ToInt32(last.MinCount), aws.ToInt32(last.MaxCount), wantCount)
				}
			}
			if tt.wantIDs != nil && !slices.Equal(ids, tt.wantIDs) {
				t.Errorf("instances %v, want %v", ids, tt.wantIDs)
			}
			if tt.wantEnd != nil && !slices.Equal(endpoints, tt.wantEnd) {
				t.Errorf("endpoints %v, want %v", endpoints, tt.wantEnd)
			}
		})
	}
}

func TestLaunchIsIdempotent(t *testing.T) {
	f := &fakeEC2{}
	l := &launcher{
		stack: "sortie", ec2: f, ops: opsconfig.Default(), secret: testSecret, now: func() time.Time { return now },
		waiterMinDelay: time.Millisecond, waiterMaxDelay: 5 * time.Millisecond, timeout: time.Second,
	}
	first, err := l.launch(context.Background(), plan())
	if err != nil {
		t.Fatal(err)
	}
	second, err := l.launch(context.Background(), plan())
	if err != nil {
		t.Fatal(err)
	}
	if len(f.runs) != 1 || len(f.instances) != 3 {
		t.Errorf("%d RunInstances, %d instances: want 1 and 3", len(f.runs), len(f.instances))
	}
	if fmt.Sprint(first.Instances) != fmt.Sprint(second.Instances) || first.HostKey != second.HostKey {
		t.Error("the second delivery describes another fleet")
	}
}

func TestHandle(t *testing.T) {
	body := cloudtest.Encode(t, plan())
	ended := &fakeEC2{}
	ended.add(baseToken, "job-42", "terminated", 3)
	tests := []struct {
		name      string
		payload   []byte
		ec2       *fakeEC2
		pubErr    error
		wantErr   string
		permanent bool
		wantPub   int
		cancelled bool
	}{
		{name: "launched and published", payload: body, ec2: &fakeEC2{}, wantPub: 1},
		{name: "cancelled before its launch: not launched, ended cancelled", payload: body, ec2: &fakeEC2{}, wantPub: 1, cancelled: true},
		{name: "invalid body", payload: []byte(`{"schema_version":1}`), ec2: &fakeEC2{}, wantErr: "fleet_id", permanent: true},
		{name: "ended fleet: acknowledged, nothing published", payload: body, ec2: ended},
		{name: "publish fails: retried", payload: body, ec2: &fakeEC2{}, pubErr: errors.New("sns down"), wantErr: "sns down"},
	}
	cloud := cloudtest.NewCloud(t, localcloud.Options{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pub := &cloudtest.Recorder{Err: tt.pubErr}
			l := cloudtest.NewStack(t, cloud).Ledger()
			h := handler{launcher: &launcher{
				stack: "sortie", ec2: tt.ec2, ops: opsconfig.Default(), secret: testSecret, now: time.Now,
				waiterMinDelay: time.Millisecond, waiterMaxDelay: 5 * time.Millisecond, timeout: time.Second,
			}, pub: pub, ledger: l, cancels: ledger.Rejecter{Ledger: l, Publisher: pub, Service: bus.Provisioner}}
			if tt.cancelled {
				if _, err := l.Submit(t.Context(), "job-42", "digest"); err != nil {
					t.Fatal(err)
				}
				if err := l.CancelJob(t.Context(), "job-42", ledger.Cancel{By: "ops", Reason: "wrong input"}); err != nil {
					t.Fatal(err)
				}
			}
			err := h.handle(context.Background(), &bus.Message{Payload: tt.payload})
			if tt.cancelled {
				ft, ok := pub.Published[0].(events.FleetTerminated)
				if !ok || ft.Outcome != events.OutcomeCancelled || ft.Reason != "cancelled by ops: wrong input" || len(tt.ec2.runs) != 0 {
					t.Errorf("published %+v after %d RunInstances, want a cancelled FleetTerminated and no launch", pub.Published[0], len(tt.ec2.runs))
				}
				rec, _ := l.Get(t.Context(), "job-42")
				if rec.State() != events.OutcomeCancelled {
					t.Errorf("state %s, want cancelled", rec.State())
				}
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || bus.IsPermanent(err) != tt.permanent {
					t.Fatalf("error %v, want one containing %q (permanent %t)", err, tt.wantErr, tt.permanent)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if len(pub.Published) != tt.wantPub {
				t.Errorf("published %d events, want %d", len(pub.Published), tt.wantPub)
			}
		})
	}
}

// The host key a FleetLaunched pins is the one its instances were launched with, whichever
// plan of the fleet is being handled; a job id planned afresh on a fresh fleet gets another.
func TestLaunchPinsTheInstancesKey(t *testing.T) {
	newLauncher := func(f *fakeEC2) *launcher {
		return &launcher{
			stack: "sortie", local: true, ec2: f, ops: opsconfig.Default(), secret: testSecret, now: func() time.Time { return now },
			waiterMinDelay: time.Millisecond, waiterMaxDelay: 5 * time.Millisecond, timeout: time.Second,
		}
	}
	withNonce := func(n string) events.FleetPlanned { fp := plan(); fp.Nonce = n; return fp }

	t.Run("duplicate plan with another nonce: the first plan's key", func(t *testing.T) {
		f := &fakeEC2{}
		l := newLauncher(f)
		first, err := l.launch(context.Background(), withNonce(nonceA))
		if err != nil {
			t.Fatal(err)
		}
		dup, err := l.launch(context.Background(), withNonce(nonceB))
		if err != nil {
			t.Fatal(err)
		}
		if len(f.runs) != 1 || first.HostKey != derivedKey(t, nonceA) || dup.HostKey != first.HostKey {
			t.Errorf("%d launches; keys %q then %q, want one launch and nonce A's key twice", len(f.runs), first.HostKey, dup.HostKey)
		}
	})
	t.Run("a racing delivery launched first with another nonce: its key", func(t *testing.T) {
		f := &fakeEC2{runErrs: []error{apiError("IdempotentParameterMismatch")}}
		f.onRun = func(f *fakeEC2, in *ec2.RunInstancesInput) {
			f.add(aws.ToString(in.ClientToken), "job-42", "pending", 3)
			for _, i := range f.instances {
				i.Tags = append(i.Tags, types.Tag{Key: aws.String(tags.HostKeyNonce), Value: aws.String(nonceA)})
			}
		}
		got, err := newLauncher(f).launch(context.Background(), withNonce(nonceB))
		if err != nil {
			t.Fatal(err)
		}
		if got.HostKey != derivedKey(t, nonceA) {
			t.Errorf("pinned %q, want the racing launch's (nonce A) key", got.HostKey)
		}
	})
	t.Run("the job id submitted again, a fresh fleet: another key", func(t *testing.T) {
		a, err := newLauncher(&fakeEC2{}).launch(context.Background(), withNonce(nonceA))
		if err != nil {
			t.Fatal(err)
		}
		b, err := newLauncher(&fakeEC2{}).launch(context.Background(), withNonce(nonceB))
		if err != nil {
			t.Fatal(err)
		}
		if a.HostKey == b.HostKey {
			t.Error("two submissions of job-42 got the same host key")
		}
	})
	t.Run("instance host keys: no key in the event, no private key in user data", func(t *testing.T) {
		ops := opsconfig.Default()
		tm := ops.Templates["demo"]
		tm.HostKeys = opsconfig.HostKeysInstance
		ops.Templates["demo"] = tm
		f := &fakeEC2{}
		l := newLauncher(f)
		l.ops = ops
		got, err := l.launch(context.Background(), plan())
		if err != nil {
			t.Fatal(err)
		}
		if got.HostKey != "" || len(f.runs) != 1 || f.runs[0].UserData != nil {
			t.Errorf("host key %q, user data %v: want neither", got.HostKey, f.runs[0].UserData)
		}
		if _, err := events.Encode(got); err != nil {
			t.Errorf("FleetLaunched without a host key does not validate: %v", err)
		}
	})
}

// Outside local mode the sortie:ssh-endpoint tag is ignored: the address is EC2's
// private IP (or its public IP where the template says so).
func TestLaunchAddressesFromEC2(t *testing.T) {
	for _, tt := range []struct {
		name   string
		public bool
		want   string
	}{
		{"private", false, "10.0.0.11:22"},
		{"public", true, "203.0.113.11:22"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ops := opsconfig.Default()
			tm := ops.Templates["demo"]
			if tt.public {
				tm.SSHAddress = opsconfig.AddressPublic
			}
			ops.Templates["demo"] = tm
			f := &fakeEC2{publicIPs: true}
			l := &launcher{
				stack: "sortie", ec2: f, ops: ops, secret: testSecret, now: func() time.Time { return now },
				waiterMinDelay: time.Millisecond, waiterMaxDelay: 5 * time.Millisecond, timeout: time.Second,
			}
			got, err := l.launch(context.Background(), plan())
			if err != nil {
				t.Fatal(err)
			}
			if got.Instances[0].SSHEndpoint != tt.want {
				t.Errorf("endpoint %s, want %s (the tag says 127.0.0.1:2201)", got.Instances[0].SSHEndpoint, tt.want)
			}
		})
	}
}

// TestHandleReplacement: a plan of revision 2 (replacing lost instances of a running job)
// launches under its own stage and reservation; one that cannot be launched — no capacity
// within the deadline, a plan the template refuses, a cancelled job — is recorded as the
// revision's failure and acknowledged, with nothing published and its capacity released.
func TestHandleReplacement(t *testing.T) {
	capped := opsconfig.Default()
	capped.Caps = opsconfig.Caps{MaxInstances: 4}
	tests := []struct {
		name      string
		plan      func(fp *events.FleetPlanned)
		ops       *opsconfig.Config
		cancelled bool
		finished  bool  // the job's JobFinished is out
		runErr    error // RunInstances' answer
		// receiveCount is the message's delivery (0: the first); wantErr: handle returns an
		// error for a retry.
		receiveCount int
		wantErr      bool
		wantState    string // the revision's state, a prefix
		wantRuns     int
		wantPub      int
	}{
		{name: "launched", ops: capped, wantState: ledger.RevLaunched, wantRuns: 1, wantPub: 1},
		{name: "no capacity within the deadline", ops: capped, plan: func(fp *events.FleetPlanned) { fp.Count = 2 },
			wantState: ledger.RevFailed + ": no capacity within its deadline"},
		{name: "larger than a cap", ops: capped, plan: func(fp *events.FleetPlanned) { fp.Count = 5 },
			wantState: ledger.RevFailed + ": reserving 5 instances"},
		{name: "a type the template does not have", ops: opsconfig.Default(), plan: func(fp *events.FleetPlanned) { fp.InstanceType = "t3.micro" },
			wantState: ledger.RevFailed + `: instance type "t3.micro" is not one of template "demo"'s`},
		{name: "cancelled", ops: capped, cancelled: true, wantState: ledger.RevFailed + ": cancelled by ops: wrong input"},
		{name: "the job finished meanwhile", ops: capped, finished: true, wantState: ledger.RevFailed + ": the job finished before its replacement was launched"},
		{name: "EC2 failing: retried", ops: capped, runErr: apiError("InternalError"), receiveCount: 1, wantErr: true, wantRuns: 1},
		{name: "EC2 failing on the last delivery: given up", ops: capped, runErr: apiError("InternalError"), receiveCount: bus.MaxReceiveCount,
			wantState: ledger.RevFailed + ": gave up after 5 deliveries", wantRuns: 1},
	}
	cloud := cloudtest.NewCloud(t, localcloud.Options{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pub := &cloudtest.Recorder{}
			l := cloudtest.NewStack(t, cloud).Ledger()
			f := &fakeEC2{}
			if tt.runErr != nil {
				f.runErrs = []error{tt.runErr}
			}
			h := handler{launcher: &launcher{
				stack: "sortie", ec2: f, ops: tt.ops, secret: testSecret, now: time.Now,
				waiterMinDelay: time.Millisecond, waiterMaxDelay: 5 * time.Millisecond, timeout: time.Second,
			}, pub: pub, ledger: l, cancels: ledger.Rejecter{Ledger: l, Publisher: pub, Service: bus.Provisioner}, poll: 100 * time.Millisecond}
			ctx := t.Context()
			// Revision 1 runs its 3 instances: the stack's cap of 4 leaves room for 1.
			if ok, err := l.Reserve(ctx, "job-42", ledger.Reservation{Instances: 3, Template: "demo"}, ledger.Limits{Instances: 4}); !ok || err != nil {
				t.Fatalf("reserving revision 1: %t %v", ok, err)
			}
			if tt.cancelled {
				if _, err := l.Submit(ctx, "job-42", "digest"); err != nil {
					t.Fatal(err)
				}
				if err := l.CancelJob(ctx, "job-42", ledger.Cancel{By: "ops", Reason: "wrong input"}); err != nil {
					t.Fatal(err)
				}
			}
			if tt.finished {
				c, err := l.Claim(ctx, "job-42", ledger.Finished)
				if err != nil {
					t.Fatal(err)
				}
				if err := c.Done(ctx, nil); err != nil {
					t.Fatal(err)
				}
			}
			fp := plan()
			fp.PlanRevision, fp.Count = 2, 1
			fp.SubmittedAt, fp.DeadlineSeconds, fp.EstimatedSeconds = time.Now().UTC(), 3, 1
			if tt.plan != nil {
				tt.plan(&fp)
			}
			err := h.handle(ctx, &bus.Message{Payload: cloudtest.Encode(t, fp), ReceiveCount: tt.receiveCount})
			if tt.wantErr {
				if err == nil || bus.IsPermanent(err) {
					t.Fatalf("handle: %v, want a transient error (a retry)", err)
				}
				if len(pub.Published) != 0 || len(f.runs) != tt.wantRuns {
					t.Errorf("published %d events after %d RunInstances, want none after %d", len(pub.Published), len(f.runs), tt.wantRuns)
				}
				if n, _, _, err := l.InUse(ctx); err != nil || n != 4 {
					t.Errorf("%d instances reserved (%v), want revision 2's kept for the retry", n, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("handle: %v, want the plan acknowledged", err)
			}
			if len(pub.Published) != tt.wantPub || len(f.runs) != tt.wantRuns {
				t.Errorf("published %+v after %d RunInstances, want %d events and %d launches", pub.Published, len(f.runs), tt.wantPub, tt.wantRuns)
			}
			if tt.wantPub == 1 {
				if fl, ok := pub.Published[0].(events.FleetLaunched); !ok || fl.PlanRevision != 2 || len(fl.Instances) != 1 {
					t.Errorf("published %+v, want revision 2's FleetLaunched with 1 instance", pub.Published[0])
				}
			}
			if !tt.cancelled { // the revision is done, launched or failed: its plan again does nothing
				if err := h.handle(ctx, &bus.Message{Payload: cloudtest.Encode(t, fp)}); err != nil {
					t.Fatalf("handle again: %v", err)
				}
				if len(pub.Published) != tt.wantPub || len(f.runs) != tt.wantRuns {
					t.Errorf("the plan again: %d events, %d RunInstances; want %d and %d", len(pub.Published), len(f.runs), tt.wantPub, tt.wantRuns)
				}
			}
			rec, err := l.Get(ctx, "job-42")
			if err != nil {
				t.Fatal(err)
			}
			if st := rec.RevisionState(2); !strings.HasPrefix(st, tt.wantState) {
				t.Errorf("revision 2's state %q, want %q…", st, tt.wantState)
			}
			if w := rec.Attrs["waiting_for_capacity"]; w != "" {
				t.Errorf("the job is noted waiting for capacity (%q): only its replacement may be", w)
			}
			if waited := rec.Attrs["rev2_waiting_for_capacity"] != ""; waited != strings.Contains(tt.wantState, "no capacity within") {
				t.Errorf("rev2_waiting_for_capacity %q: want it noted only while the replacement waits", rec.Attrs["rev2_waiting_for_capacity"])
			}
			if rec.DoneAt(ledger.Rejected) != "" || rec.DoneAt(ledger.Launched) != "" {
				t.Errorf("the job's own stages were touched: rejected %q, launched %q", rec.DoneAt(ledger.Rejected), rec.DoneAt(ledger.Launched))
			}
			wantInUse := 3 // revision 1's, kept
			if tt.wantPub == 1 {
				wantInUse = 4 // and revision 2's, held until the job's release
			}
			if n, _, _, err := l.InUse(ctx); err != nil || n != wantInUse {
				t.Errorf("%d instances reserved (%v), want %d", n, err, wantInUse)
			}
			if err := l.ReleaseAll(ctx, "job-42", 2); err != nil {
				t.Fatal(err)
			}
			if n, _, _, err := l.InUse(ctx); err != nil || n != 0 {
				t.Errorf("after releasing every revision: %d instances reserved (%v), want 0", n, err)
			}
		})
	}
}

// fakeRates are learned rates by "profile/type"; a pair it lacks has no samples.
type fakeRates map[string]learn.Estimate

func (f fakeRates) LearnedRate(_ context.Context, profile, instanceType string) (learn.Estimate, error) {
	return f[profile+"/"+instanceType], nil
}
