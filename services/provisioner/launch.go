package provisioner

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/cost"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/hostkey"
	"github.com/sortie-fleet/sortie/pkg/learn"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/sizing"
	"github.com/sortie-fleet/sortie/pkg/sshaddr"
	"github.com/sortie-fleet/sortie/pkg/tags"
	"github.com/sortie-fleet/sortie/pkg/telemetry"
)

// Instance tags (see the issue 3 notes): EC2 tags are the state of a fleet.
const (
	stageLaunched = "launched"
)

// EC2API is the EC2 calls the provisioner makes; the running waiter uses DescribeInstances.
type EC2API interface {
	RunInstances(ctx context.Context, params *ec2.RunInstancesInput, optFns ...func(*ec2.Options)) (*ec2.RunInstancesOutput, error)
	DescribeInstances(ctx context.Context, params *ec2.DescribeInstancesInput, optFns ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error)
	TerminateInstances(ctx context.Context, params *ec2.TerminateInstancesInput, optFns ...func(*ec2.Options)) (*ec2.TerminateInstancesOutput, error)
}

var _ EC2API = (*ec2.Client)(nil)

// errFleetEnded says the fleet of this plan revision was launched before and its
// instances are all gone (terminated by the reaper, or after a failed launch): a late
// duplicate FleetPlanned, with nothing left to do.
var errFleetEnded = errors.New("the fleet of this plan revision was launched before and has ended")

// launcher turns a FleetPlanned into running instances.
type launcher struct {
	stack  string // the stack's prefix: every instance and volume is tagged sortie:stack=stack
	local  bool   // local mode: the local cloud's sortie:ssh-endpoint tag is the SSH address
	ec2    EC2API
	ops    opsconfig.Source // read once per plan
	secret []byte
	now    func() time.Time
	// metrics counts the instances launched; nil counts nothing.
	metrics *telemetry.Telemetry
	// rates reads the rates learned from finished jobs (the ledger), for re-sizing a
	// fallback type; nil sizes with the configured ones.
	rates learn.Reader

	waiterMinDelay, waiterMaxDelay, timeout time.Duration
}

// launch launches the planned fleet, or finds it when a delivery of the same FleetPlanned
// already did, waits for it to be running and returns the FleetLaunched to publish.
func (l *launcher) launch(ctx context.Context, fp events.FleetPlanned) (events.FleetLaunched, error) {
	ops := l.ops.Current() // one configuration for the whole message
	t, err := ops.Template(fp.Template)
	if err != nil {
		return events.FleetLaunched{}, bus.Permanent(err)
	}
	if !slices.Contains(t.InstanceTypes, fp.InstanceType) {
		return events.FleetLaunched{}, bus.Permanent(fmt.Errorf("instance type %q is not one of template %q's (%s)",
			fp.InstanceType, fp.Template, strings.Join(t.InstanceTypes, ", ")))
	}
	atts := attempts(l.stack, t, fp)
	found, err := l.find(ctx, fp.FleetID, tokens(atts))
	if err != nil {
		return events.FleetLaunched{}, err
	}
	key, err := l.hostKeys(t, fp, found)
	if err != nil {
		return events.FleetLaunched{}, err
	}
	if len(found.ids) > 0 {
		bus.Logger(ctx).Info("fleet already launched: reusing its instances", "instances", found.ids)
	} else if found, err = l.run(ctx, ops, fp, t, atts, key); err != nil {
		return events.FleetLaunched{}, err
	} else if found.raced { // another delivery launched them: their nonce made their key
		if key, err = l.hostKeys(t, fp, found); err != nil {
			return events.FleetLaunched{}, err
		}
	}
	ids := found.ids
	if found.launched != nil && len(ids) != found.launched.Count {
		bus.Logger(ctx).Warn("the fleet's live instances differ from the launch", "launched", found.launched.Count, "live", len(ids))
	}

	out, err := l.wait(ctx, ids)
	if err != nil {
		return events.FleetLaunched{}, err
	}
	instances, err := fleetInstances(out, ids, l.now(), sshaddr.Mode{Local: l.local, PublicIP: t.PublicAddress()})
	if err != nil {
		return events.FleetLaunched{}, err
	}
	fallback := ""
	if found.launched != nil {
		fallback = found.launched.Fallback
	}
	return events.FleetLaunched{
		Header:              events.NewHeader(fp.JobID, fp.CorrelationID, l.now()),
		FleetID:             fp.FleetID,
		PlanRevision:        fp.PlanRevision,
		Template:            fp.Template,
		Recipe:              fp.Recipe,
		Params:              fp.Params,
		DeadlineAt:          fp.DeadlineAt(),
		KeyName:             t.KeyName,
		HostKey:             key.public,
		Instances:           instances,
		PlannedInstanceType: fp.InstanceType,
		PlannedCount:        fp.Count,
		Fallback:            truncate(fallback, events.MaxTextBytes),
	}, nil
}

// hostKeys is what a launch hands its instances: the derived host key's cloud-init user
// data and public half, and the nonce it was derived with (recorded in a tag). All empty
// for a template whose instances generate their own keys: no user data, no key to pin here.
type hostKeys struct {
	userData, public, nonce string
}

// hostKeys derives the fleet's host key from the plan's nonce, or, when the fleet was
// launched before, from the nonce its instances were launched with: a duplicate plan (a
// duplicate JobSubmitted planned twice) carries another nonce but reuses those instances.
func (l *launcher) hostKeys(t opsconfig.Template, fp events.FleetPlanned, found fleet) (hostKeys, error) {
	if t.InstanceHostKeys() {
		return hostKeys{}, nil
	}
	nonce := fp.Nonce
	if found.hasNonce {
		nonce = found.nonce
	}
	priv, _, err := hostkey.Derive(l.secret, fp.FleetID, fp.PlanRevision, nonce)
	if err != nil {
		return hostKeys{}, err
	}
	userData, err := hostkey.CloudConfig(priv)
	if err != nil {
		return hostKeys{}, err
	}
	public, err := hostkey.AuthorizedKey(priv)
	if err != nil {
		return hostKeys{}, err
	}
	return hostKeys{userData: userData, public: public, nonce: nonce}, nil
}

// attempt is one RunInstances of the capacity fallback.
type attempt struct {
	InstanceType string
	Subnet       string
	Market       string // events.MarketSpot or events.MarketOnDemand
	Token        string
}

// launch is how an attempt that succeeded launched: Count instances of its type; Fallback
// says, when it was not the first attempt, which attempts failed and how the count was
// re-sized.
type launch struct {
	attempt
	Count    int
	Fallback string
	// HourlyPrice is the profile's price of the type in the attempt's market, recorded in
	// the instances' tags.
	HourlyPrice float64
}

// price is the profile's hourly price of instanceType in market; 0 when the profile has
// none for it.
func price(ops *opsconfig.Config, fp events.FleetPlanned, instanceType, market string) float64 {
	p, err := ops.Profile(fp.Profile)
	if err != nil {
		return 0
	}
	return p[instanceType].Price(market)
}

// sizeFor returns the count to launch of instanceType: the plan's count for the planned
// type; for another type, the sizing re-run for that type (the profile's rate, boot time
// and price) on the plan's items and the time left now, within the template's bounds.
// ok is false when the re-sized fleet cannot meet a deadline the plan met; why says why,
// or gives the re-sizing's arithmetic.
func (l *launcher) sizeFor(ctx context.Context, ops *opsconfig.Config, fp events.FleetPlanned, t opsconfig.Template, instanceType string) (count int, why string, ok bool) {
	if instanceType == fp.InstanceType || fp.Items < 1 {
		return fp.Count, "", true
	}
	cands, err := ops.Candidates(fp.Template, fp.Profile)
	if err != nil {
		return 0, fmt.Sprintf("%s: not sized: %v", instanceType, err), false
	}
	var cand []sizing.Candidate
	for _, c := range cands {
		if c.InstanceType == instanceType {
			cand = append(cand, c)
		}
	}
	if len(cand) == 0 {
		return 0, fmt.Sprintf("%s: profile %q has no capacity for it", instanceType, fp.Profile), false
	}
	// The rate the planner would size this type with: learned once it has the samples.
	cand = learn.Apply(ctx, l.rates, ops.Learning.Policy(), fp.Profile, cand)
	res, err := sizing.Plan(sizing.Request{
		Items:      fp.Items,
		Deadline:   time.Duration(fp.DeadlineSeconds) * time.Second,
		Waited:     max(l.now().Sub(fp.SubmittedAt), 0),
		Candidates: cand,
		Min:        t.MinInstances,
		Max:        t.MaxInstances,
	})
	if err != nil {
		return 0, fmt.Sprintf("%s: not sized: %v", instanceType, err), false
	}
	if !res.MeetsDeadline && fp.MeetsDeadline {
		return 0, fmt.Sprintf("%s cannot meet the deadline: %s", instanceType, res.Rationale), false
	}
	return res.Count, fmt.Sprintf("re-sized for %s: %s", instanceType, res.Rationale), true
}

// clientToken is RunInstances' idempotency token: hex(sha256(parts joined by "/")), the
// 64 characters EC2 allows.
func clientToken(parts ...string) string {
	sum := sha256.Sum256([]byte(strings.Join(parts, "/")))
	return hex.EncodeToString(sum[:])
}

// attempts lists the launches to try, in order, in each of the template's subnets in turn.
// An on-demand template tries the planned type, then its other types in its order. A spot
// template tries the planned type as spot, then what its fallback lists, in its order:
// "types", the other types as spot; "on-demand", every type on demand (planned first). The
// first attempt's token is hex(sha256(stack + "/" + job_id + "/" + plan_revision)); each
// fallback has its own (type and subnet appended, and "spot" for a spot one), because EC2
// refuses a token reused with other parameters (IdempotentParameterMismatch). The stack is
// part of the token so that two stacks in one account never collide on a job id.
func attempts(stack string, t opsconfig.Template, fp events.FleetPlanned) []attempt {
	var others []string
	for _, it := range t.InstanceTypes {
		if it != fp.InstanceType {
			others = append(others, it)
		}
	}
	all := append([]string{fp.InstanceType}, others...)
	type step struct {
		market string
		types  []string
	}
	steps := []step{{events.MarketOnDemand, all}}
	if t.Spot != nil {
		steps = []step{{events.MarketSpot, []string{fp.InstanceType}}}
		for _, f := range t.Spot.Fallback {
			switch f {
			case opsconfig.FallbackTypes:
				steps = append(steps, step{events.MarketSpot, others})
			case opsconfig.FallbackOnDemand:
				steps = append(steps, step{events.MarketOnDemand, all})
			}
		}
	}
	subnets := t.Subnets
	if len(subnets) == 0 {
		subnets = []string{""} // the account's default subnet
	}
	rev := strconv.Itoa(fp.PlanRevision)
	var out []attempt
	for _, subnet := range subnets {
		for _, st := range steps {
			for _, it := range st.types {
				token := clientToken(stack, fp.JobID, rev)
				switch {
				case len(out) > 0 && st.market == events.MarketSpot:
					token = clientToken(stack, fp.JobID, rev, it, subnet, "spot")
				case len(out) > 0:
					token = clientToken(stack, fp.JobID, rev, it, subnet)
				}
				out = append(out, attempt{InstanceType: it, Subnet: subnet, Market: st.market, Token: token})
			}
		}
	}
	return out
}

func tokens(atts []attempt) []string {
	out := make([]string, len(atts))
	for i, a := range atts {
		out[i] = a.Token
	}
	return out
}

// runInput is the RunInstances request of one attempt. MinCount = MaxCount = Count: a
// fleet smaller than planned is never accepted silently; short of capacity, the launch
// fails and falls back instead.
func runInput(stack string, fp events.FleetPlanned, t opsconfig.Template, a launch, key hostKeys, now time.Time) *ec2.RunInstancesInput {
	fleet := fleetTags(stack, fp, now.Add(t.TTL.Std()))
	tag := func(k, v string) types.Tag { return types.Tag{Key: aws.String(k), Value: aws.String(v)} }
	if !t.InstanceHostKeys() {
		fleet = append(fleet, tag(tags.HostKeyNonce, key.nonce), tag(tags.HostKey, key.public))
	}
	fleet = append(fleet, tag(tags.Market, a.Market), tag(tags.HourlyPrice, cost.Format(a.HourlyPrice)))
	if fp.PlannedCost > 0 {
		fleet = append(fleet, tag(tags.PlannedCost, cost.Format(fp.PlannedCost)))
	}
	in := &ec2.RunInstancesInput{
		ImageId:          aws.String(t.AMI),
		InstanceType:     types.InstanceType(a.InstanceType),
		MinCount:         aws.Int32(int32(a.Count)),
		MaxCount:         aws.Int32(int32(a.Count)),
		KeyName:          aws.String(t.KeyName),
		SecurityGroupIds: t.SecurityGroups,
		ClientToken:      aws.String(a.Token),
		MetadataOptions:  metadataOptions(),
		TagSpecifications: []types.TagSpecification{
			{ResourceType: types.ResourceTypeInstance, Tags: fleet},
			{ResourceType: types.ResourceTypeVolume, Tags: volumeTags(fleet)},
		},
	}
	if a.Market == events.MarketSpot {
		in.InstanceMarketOptions = &types.InstanceMarketOptionsRequest{
			MarketType: types.MarketTypeSpot,
			SpotOptions: &types.SpotMarketOptions{
				SpotInstanceType:             types.SpotInstanceTypeOneTime,
				InstanceInterruptionBehavior: types.InstanceInterruptionBehaviorTerminate,
			},
		}
		if t.Spot != nil && t.Spot.MaxPrice > 0 {
			in.InstanceMarketOptions.SpotOptions.MaxPrice = aws.String(cost.Format(t.Spot.MaxPrice))
		}
	}
	if key.userData != "" { // none for instance host keys: cloud-init generates them
		in.UserData = aws.String(base64.StdEncoding.EncodeToString([]byte(key.userData)))
	}
	if a.Subnet != "" {
		in.SubnetId = aws.String(a.Subnet)
	}
	if p := t.InstanceProfile; strings.HasPrefix(p, "arn:") {
		in.IamInstanceProfile = &types.IamInstanceProfileSpecification{Arn: aws.String(p)}
	} else if p != "" {
		in.IamInstanceProfile = &types.IamInstanceProfileSpecification{Name: aws.String(p)}
	}
	return in
}

// metadataOptions is the instance metadata service every instance gets: IMDSv2 only
// (session tokens required), answering one network hop (the instance itself, not a container
// behind it), so a request forged through a proxy on the instance cannot read the
// instance's role credentials or its user data.
func metadataOptions() *types.InstanceMetadataOptionsRequest {
	return &types.InstanceMetadataOptionsRequest{
		HttpTokens:              types.HttpTokensStateRequired,
		HttpPutResponseHopLimit: aws.Int32(1),
		HttpEndpoint:            types.InstanceMetadataEndpointStateEnabled,
	}
}

// fleetTags are the tags every instance of the fleet is launched with.
func fleetTags(stack string, fp events.FleetPlanned, leaseExpires time.Time) []types.Tag {
	tag := func(k, v string) types.Tag { return types.Tag{Key: aws.String(k), Value: aws.String(v)} }
	return []types.Tag{
		tag(tags.Name, "sortie-"+fp.FleetID),
		tag(tags.Stack, stack),
		tag(tags.JobID, fp.JobID),
		tag(tags.Fleet, fp.FleetID),
		tag(tags.PlanRevision, strconv.Itoa(fp.PlanRevision)),
		tag(tags.LeaseExpires, leaseExpires.UTC().Format(time.RFC3339)),
		tag(tags.Stage, stageLaunched),
		tag(tags.CorrelationID, fp.CorrelationID),
		tag(tags.Template, fp.Template),
	}
}

// volumeTags are the tags of the fleet's volumes: who owns them, not the instance's state.
func volumeTags(fleet []types.Tag) []types.Tag {
	var out []types.Tag
	for _, t := range fleet {
		switch aws.ToString(t.Key) {
		case tags.Name, tags.Stack, tags.JobID, tags.Fleet, tags.PlanRevision, tags.Template:
			out = append(out, t)
		}
	}
	return out
}

func live(s *types.InstanceState) bool {
	return s != nil && (s.Name == types.InstanceStateNamePending || s.Name == types.InstanceStateNameRunning)
}

// fleet is what find saw of a fleet launched before: its live instances and the host key
// nonce they were launched with (hasNonce: they carry the tag). raced: another delivery
// launched them while this one tried.
type fleet struct {
	ids      []string
	nonce    string
	hasNonce bool
	raced    bool
	launched *launch // set by run when this delivery launched the fleet
}

// find returns the live (pending or running) instances of the fleet launched with one of
// tokens, the tokens of this plan revision. errFleetEnded: there were some, none is live.
// The tokens are the revision's own (the revision is part of each), so a replacement
// revision never finds the instances of the revisions before it.
func (l *launcher) find(ctx context.Context, fleetID string, tokens []string) (fleet, error) {
	pages := ec2.NewDescribeInstancesPaginator(l.ec2, &ec2.DescribeInstancesInput{Filters: []types.Filter{
		{Name: aws.String("tag:" + tags.Stack), Values: []string{l.stack}},
		{Name: aws.String("tag:" + tags.Fleet), Values: []string{fleetID}},
		{Name: aws.String("client-token"), Values: tokens},
	}})
	var f fleet
	ended := 0
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return fleet{}, classify(fmt.Sprintf("looking for fleet %s", fleetID), err)
		}
		for _, r := range page.Reservations {
			for _, in := range r.Instances {
				if !live(in.State) {
					ended++
					continue
				}
				f.ids = append(f.ids, aws.ToString(in.InstanceId))
				if nonce, ok := tagLookup(in.Tags, tags.HostKeyNonce); ok && !f.hasNonce {
					f.nonce, f.hasNonce = nonce, true
				}
			}
		}
	}
	if len(f.ids) == 0 && ended > 0 {
		return fleet{}, errFleetEnded
	}
	return f, nil
}

// run launches the fleet with the first attempt that has capacity; an attempt of another
// type than planned launches the count re-sized for that type (sizeFor).
func (l *launcher) run(ctx context.Context, ops *opsconfig.Config, fp events.FleetPlanned, t opsconfig.Template, atts []attempt, key hostKeys) (fleet, error) {
	var short []error
	var notes []string // what failed before, for FleetLaunched.Fallback
	for _, at := range atts {
		count, why, ok := l.sizeFor(ctx, ops, fp, t, at.InstanceType)
		if !ok {
			bus.Logger(ctx).Warn("fallback type skipped", "instance_type", at.InstanceType, "reason", why)
			short = append(short, errors.New(why))
			notes = append(notes, why)
			continue
		}
		a := launch{attempt: at, Count: count}
		a.HourlyPrice = price(ops, fp, a.InstanceType, a.Market)
		if len(notes) > 0 {
			a.Fallback = strings.Join(append(slices.Clone(notes), cmp.Or(why, fmt.Sprintf("launched %d × %s", count, at.InstanceType))), "; ")
		}
		log := bus.Logger(ctx).With("instance_type", a.InstanceType, "market", a.Market, "subnet", a.Subnet, "count", a.Count)
		out, err := l.ec2.RunInstances(ctx, runInput(l.stack, fp, t, a, key, l.now()))
		switch {
		case err == nil:
			ids := make([]string, 0, len(out.Instances))
			for _, in := range out.Instances {
				if live(in.State) {
					ids = append(ids, aws.ToString(in.InstanceId))
				}
			}
			if len(ids) == 0 { // the token's earlier launch, long gone
				return fleet{}, errFleetEnded
			}
			log.Info("fleet launched", "instances", ids, "reservation", aws.ToString(out.ReservationId), "fallback", a.Fallback)
			l.metrics.InstancesLaunched(a.InstanceType, len(ids))
			return fleet{ids: ids, nonce: key.nonce, hasNonce: true, launched: &a}, nil
		case awsx.IsQuota(err):
			// An account limit: another type or subnet counts against it too. Wait.
			return fleet{}, fmt.Errorf("launching fleet %s: %w", fp.FleetID, err)
		case awsx.IsCapacity(err):
			log.Warn("no capacity: falling back", "error", err)
			e := fmt.Errorf("%s%s in %s: %s", a.InstanceType, marketNote(a.Market), cmp.Or(a.Subnet, "the default subnet"), awsx.ErrorCode(err))
			short = append(short, e)
			notes = append(notes, e.Error())
		case awsx.ErrorCode(err) == "IdempotentParameterMismatch":
			// Another delivery of this FleetPlanned launched with this token between our
			// look-up and now (with, say, another lease time): its instances are ours.
			// (or by a duplicate plan with another host key nonce).
			f, ferr := l.find(ctx, fp.FleetID, []string{a.Token})
			if ferr != nil {
				return fleet{}, ferr
			}
			if len(f.ids) == 0 {
				return fleet{}, bus.Permanent(fmt.Errorf("launching fleet %s: client token %s is taken, but no instance carries it: %w", fp.FleetID, a.Token, err))
			}
			log.Info("fleet launched by a concurrent delivery: reusing its instances", "instances", f.ids)
			f.raced = true
			return f, nil
		default:
			return fleet{}, classify(fmt.Sprintf("launching fleet %s (%d × %s)", fp.FleetID, a.Count, a.InstanceType), err)
		}
	}
	return fleet{}, bus.Permanent(fmt.Errorf("launching fleet %s: no capacity for %d instances of any type in any subnet of template %q: %w",
		fp.FleetID, fp.Count, fp.Template, errors.Join(short...)))
}

// wait waits for every instance to be running and returns the last DescribeInstances
// output, which lists them all running. An API error (throttling, say) is returned for a
// retry, which finds the instances again; but when the fleet does not reach running in
// time, or an instance fails on the way, the instances are terminated (nothing leaks)
// and the launch fails for good: the retry's RunInstances would return the same,
// terminated, instances.
func (l *launcher) wait(ctx context.Context, ids []string) (*ec2.DescribeInstancesOutput, error) {
	w := ec2.NewInstanceRunningWaiter(l.ec2, func(o *ec2.InstanceRunningWaiterOptions) {
		o.MinDelay, o.MaxDelay = l.waiterMinDelay, l.waiterMaxDelay
	})
	out, err := w.WaitForOutput(ctx, &ec2.DescribeInstancesInput{InstanceIds: ids}, l.timeout)
	if err == nil {
		return out, nil
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("waiting for instances %v: %w", ids, err)
	}
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		return nil, classify(fmt.Sprintf("waiting for instances %v", ids), err)
	}
	cleanup, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if _, terr := l.ec2.TerminateInstances(cleanup, &ec2.TerminateInstancesInput{InstanceIds: ids}); terr != nil {
		return nil, fmt.Errorf("instances %v did not reach running (%v), and terminating them failed: %w", ids, err, terr)
	}
	bus.Logger(ctx).Warn("instances did not reach running: terminated them", "instances", ids, "error", err)
	return nil, bus.Permanent(fmt.Errorf("instances %v did not reach running within %s (%w): terminated them", ids, l.timeout, err))
}

// fleetInstances lists ids, in order, as FleetLaunched describes them. The SSH endpoint
// is the address pkg/sshaddr takes from EC2 (the sortie:ssh-endpoint tag only in local
// mode); consumers take it from EC2 again, so in the event it is informational.
func fleetInstances(out *ec2.DescribeInstancesOutput, ids []string, now time.Time, addr sshaddr.Mode) ([]events.Instance, error) {
	byID := map[string]types.Instance{}
	for _, r := range out.Reservations {
		for _, in := range r.Instances {
			byID[aws.ToString(in.InstanceId)] = in
		}
	}
	res := make([]events.Instance, 0, len(ids))
	for _, id := range ids {
		in, ok := byID[id]
		if !ok {
			return nil, fmt.Errorf("describing instances: %s missing", id)
		}
		endpoint, err := addr.Of(in)
		if err != nil {
			return nil, fmt.Errorf("describing instances: %w", err)
		}
		launched := now
		if in.LaunchTime != nil {
			launched = in.LaunchTime.UTC()
		}
		market := events.MarketOnDemand
		if in.InstanceLifecycle == types.InstanceLifecycleTypeSpot {
			market = events.MarketSpot
		}
		var price float64
		if s, ok := tagLookup(in.Tags, tags.HourlyPrice); ok {
			price, _ = cost.Parse(s) // a tag that does not parse prices nothing
		}
		res = append(res, events.Instance{
			ID:           id,
			InstanceType: string(in.InstanceType),
			PrivateIP:    aws.ToString(in.PrivateIpAddress),
			SSHEndpoint:  endpoint,
			LaunchedAt:   launched,
			Market:       market,
			HourlyPrice:  min(price, events.MaxHourlyPrice),
		})
	}
	return res, nil
}

func tagLookup(ts []types.Tag, key string) (string, bool) {
	v, ok := tags.Map(ts)[key]
	return v, ok
}

// classify wraps an EC2 error: a request that can never succeed (invalid, not allowed, a
// template naming an AMI, subnet or key pair that does not exist) is permanent;
// throttling and server errors are retried.
func classify(what string, err error) error {
	err = fmt.Errorf("%s: %w", what, err)
	if awsx.IsPermanent(err) || awsx.IsNotFound(err) {
		return bus.Permanent(err)
	}
	return err
}

// truncate cuts s to at most n bytes without splitting a UTF-8 sequence.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const ellipsis = "…"
	cut := n - len(ellipsis)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + ellipsis
}

// marketNote is " (spot)" for a spot attempt: on-demand ones read as before.
func marketNote(market string) string {
	if market == events.MarketSpot {
		return " (spot)"
	}
	return ""
}
