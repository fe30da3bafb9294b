package cost

import (
	"regexp"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/sortie-fleet/sortie/pkg/tags"
)

// transitionTime finds the time EC2 writes into a terminated instance's
// StateTransitionReason: "User initiated (2025-01-02 03:04:05 GMT)".
var transitionTime = regexp.MustCompile(`\((\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) (GMT|UTC)\)`)

// Ended is when an instance stopped running: for a terminated one, the time in its state
// transition reason (so a repeated reap computes the same figure), else now; never before
// its launch.
func Ended(in ec2types.Instance, now time.Time) time.Time {
	at := now
	if m := transitionTime.FindStringSubmatch(aws.ToString(in.StateTransitionReason)); m != nil {
		if t, err := time.Parse(time.DateTime, m[1]); err == nil {
			at = t
		}
	}
	if launch := aws.ToTime(in.LaunchTime); !launch.IsZero() && at.Before(launch) {
		at = launch
	}
	return at
}

// Instances is what instances cost: each one's lifetime (Ended − launch) times the hourly price it was launched at (its sortie:hourly-price tag).
// priced is false when an instance with a lifetime has no price tag that parses: the cost
// is then unknown, not zero.
func Instances(insts []ec2types.Instance, now time.Time) (dollars float64, priced bool) {
	for _, in := range insts {
		launch := aws.ToTime(in.LaunchTime)
		if launch.IsZero() {
			continue
		}
		p, ok := tagOf(in.Tags, tags.HourlyPrice)
		price, err := Parse(p)
		if !ok || err != nil {
			return 0, false
		}
		dollars += Of(Ended(in, now).Sub(launch).Seconds(), price)
	}
	return dollars, true
}

// PlannedCost is the plan's cost estimate from the instances' sortie:planned-cost tag; 0
// when none carries one.
func PlannedCost(insts []ec2types.Instance) float64 {
	for _, in := range insts {
		if p, ok := tagOf(in.Tags, tags.PlannedCost); ok {
			if c, err := Parse(p); err == nil {
				return c
			}
		}
	}
	return 0
}

func tagOf(tg []ec2types.Tag, key string) (string, bool) {
	v, ok := tags.Map(tg)[key]
	return v, ok
}
