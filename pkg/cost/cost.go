// Package cost prices fleets: the hourly price each instance was launched at (recorded in
// its tags) and what its seconds cost.
package cost

import (
	"fmt"
	"strconv"

	"github.com/sortie-fleet/sortie/pkg/events"
)

// Of is the cost in dollars of seconds of one instance at hourlyPrice dollars an hour.
func Of(seconds, hourlyPrice float64) float64 { return seconds * hourlyPrice / 3600 }

// Format renders dollars for a tag: the shortest decimal that parses back to the same value.
func Format(dollars float64) string { return strconv.FormatFloat(dollars, 'f', -1, 64) }

// Parse reads dollars from a tag: a finite number within [0, events.MaxCost].
func Parse(s string) (float64, error) {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || !(f >= 0 && f <= events.MaxCost) {
		return 0, fmt.Errorf("price %q: not a number of dollars within [0, %g]", s, events.MaxCost)
	}
	return f, nil
}
