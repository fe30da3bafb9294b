package localcloud

import (
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/sortie-fleet/sortie/pkg/awsx"
)

func spotInput(l launch, maxPrice string) *ec2.RunInstancesInput {
	in := runInput(l)
	in.InstanceMarketOptions = &types.InstanceMarketOptionsRequest{
		MarketType: types.MarketTypeSpot,
		SpotOptions: &types.SpotMarketOptions{
			SpotInstanceType:             types.SpotInstanceTypeOneTime,
			InstanceInterruptionBehavior: types.InstanceInterruptionBehaviorTerminate,
		},
	}
	if maxPrice != "" {
		in.InstanceMarketOptions.SpotOptions.MaxPrice = aws.String(maxPrice)
	}
	return in
}

// A spot launch is reported as spot (instanceLifecycle, a spot request id); an on-demand
// one is not.
func TestSpotLaunch(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{})
	client, _ := ec2Client(t, c)
	ctx := ctxT(t)

	out, err := client.RunInstances(ctx, spotInput(launch{count: 2, token: "spot-1"}, "0.05"))
	if err != nil {
		t.Fatalf("spot RunInstances: %v", err)
	}
	spot := instanceIDs(out.Instances)
	onDemand := run(t, client, launch{})
	for _, in := range describe(t, client, &ec2.DescribeInstancesInput{InstanceIds: append(spot, onDemand...)}) {
		id := aws.ToString(in.InstanceId)
		isSpot := id != onDemand[0]
		if got := in.InstanceLifecycle == types.InstanceLifecycleTypeSpot; got != isSpot {
			t.Errorf("%s: lifecycle %q, want spot = %v", id, in.InstanceLifecycle, isSpot)
		}
		if isSpot != (aws.ToString(in.SpotInstanceRequestId) != "") {
			t.Errorf("%s: spot request id %q", id, aws.ToString(in.SpotInstanceRequestId))
		}
	}
	// The same token with the same market options: the same instances; as on-demand: a mismatch.
	again, err := client.RunInstances(ctx, spotInput(launch{count: 2, token: "spot-1"}, "0.05"))
	if err != nil || !equalIDs(instanceIDs(again.Instances), spot) {
		t.Fatalf("spot launch repeated with its token: %v, %v; want %v", instanceIDs(again.Instances), err, spot)
	}
	_, err = client.RunInstances(ctx, runInput(launch{count: 2, token: "spot-1"}))
	wantCode(t, err, "IdempotentParameterMismatch")
}

// Fault injection refuses spot capacity with each of the codes a fallback must handle,
// without touching on-demand launches of the type; a max price under the spot price is
// refused too.
func TestSpotFaults(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{})
	client, _ := ec2Client(t, c)
	ctx := ctxT(t)
	for _, code := range SpotCapacityCodes {
		t.Run(code, func(t *testing.T) {
			c.SetSpotFault("c5.large", code)
			_, err := client.RunInstances(ctx, spotInput(launch{instanceType: types.InstanceTypeC5Large}, ""))
			wantCode(t, err, code)
			if !awsx.IsCapacity(err) || awsx.IsPermanent(err) {
				t.Errorf("%s: capacity = %v, permanent = %v; want a capacity error to fall back on", code, awsx.IsCapacity(err), awsx.IsPermanent(err))
			}
			if _, err := client.RunInstances(ctx, runInput(launch{instanceType: types.InstanceTypeC5Large})); err != nil {
				t.Errorf("on-demand launch during a spot fault: %v", err)
			}
			c.SetSpotFault("c5.large", "")
			if _, err := client.RunInstances(ctx, spotInput(launch{instanceType: types.InstanceTypeC5Large}, "")); err != nil {
				t.Errorf("spot launch after the fault cleared: %v", err)
			}
		})
	}

	c.SetSpotPrice("m5.large", 0.04)
	_, err := client.RunInstances(ctx, spotInput(launch{instanceType: types.InstanceTypeM5Large}, "0.03"))
	wantCode(t, err, "SpotMaxPriceTooLow")
	if _, err := client.RunInstances(ctx, spotInput(launch{instanceType: types.InstanceTypeM5Large}, "0.05")); err != nil {
		t.Errorf("max price over the spot price: %v", err)
	}
	if _, err := client.RunInstances(ctx, spotInput(launch{instanceType: types.InstanceTypeM5Large}, "")); err != nil {
		t.Errorf("no max price: %v", err)
	}

	bad := spotInput(launch{}, "-1")
	_, err = client.RunInstances(ctx, bad)
	wantCode(t, err, "InvalidParameterValue")
	bad = spotInput(launch{}, "")
	bad.InstanceMarketOptions.SpotOptions.SpotInstanceType = types.SpotInstanceTypePersistent
	_, err = client.RunInstances(ctx, bad)
	wantCode(t, err, "Unsupported")
}

func equalIDs(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
