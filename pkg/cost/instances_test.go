package cost

import (
	"math"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/sortie-fleet/sortie/pkg/tags"
)

var t0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

func instance(id string, launch time.Time, tg map[string]string) ec2types.Instance {
	in := ec2types.Instance{InstanceId: aws.String(id)}
	if !launch.IsZero() {
		in.LaunchTime = aws.Time(launch)
	}
	for k, v := range tg {
		in.Tags = append(in.Tags, ec2types.Tag{Key: aws.String(k), Value: aws.String(v)})
	}
	return in
}

func TestCost(t *testing.T) {
	now := t0.Add(time.Hour)
	priced := func(id string, launch time.Time, reason string, tg map[string]string) ec2types.Instance {
		in := instance(id, launch, tg)
		in.StateTransitionReason = aws.String(reason)
		return in
	}
	spot := map[string]string{tags.HourlyPrice: "0.036", tags.Market: "spot", tags.PlannedCost: "0.05"}
	onDemand := map[string]string{tags.HourlyPrice: "0.17", tags.Market: "on-demand"}
	tests := []struct {
		name        string
		insts       []ec2types.Instance
		want        float64
		wantPriced  bool
		wantPlanned float64
	}{
		{
			name: "instance-seconds × each one's price, markets mixed",
			insts: []ec2types.Instance{
				priced("i-1", t0, "User initiated (2025-06-01 12:10:00 GMT)", spot),     // 600 s at $0.036
				priced("i-2", t0, "User initiated (2025-06-01 12:00:30 UTC)", onDemand), // 30 s at $0.17
			},
			want: 600*0.036/3600 + 30*0.17/3600, wantPriced: true, wantPlanned: 0.05,
		},
		{
			name:  "an instance without a price: unknown",
			insts: []ec2types.Instance{priced("i-1", t0, "", spot), priced("i-2", t0, "", nil)},
			want:  0, wantPriced: false, wantPlanned: 0.05,
		},
		{
			name:  "a price that does not parse: unknown",
			insts: []ec2types.Instance{priced("i-1", t0, "", map[string]string{tags.HourlyPrice: "cheap"})},
			want:  0, wantPriced: false,
		},
		{name: "never launched: nothing to price", insts: []ec2types.Instance{priced("i-1", time.Time{}, "", nil)}, want: 0, wantPriced: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := Instances(tt.insts, now)
			if ok != tt.wantPriced || math.Abs(got-tt.want) > 1e-12 {
				t.Fatalf("Instances = %v, %v; want %v, %v", got, ok, tt.want, tt.wantPriced)
			}
			if p := PlannedCost(tt.insts); p != tt.wantPlanned {
				t.Errorf("PlannedCost = %v, want %v", p, tt.wantPlanned)
			}
		})
	}
}
