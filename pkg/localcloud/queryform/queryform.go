// Package queryform reads the flattened lists of AWS Query protocol requests (EC2's and
// SQS's): Name.1, Name.2, … and structures as Name.N.Member. Indices need not be
// contiguous; order follows the index.
package queryform

import (
	"net/url"
	"sort"
	"strconv"
	"strings"
)

// Indices returns the sorted distinct N of every key prefix.N or prefix.N.….
func Indices(form url.Values, prefix string) []int {
	seen := map[int]bool{}
	for key := range form {
		rest, ok := strings.CutPrefix(key, prefix+".")
		if !ok {
			continue
		}
		num, _, _ := strings.Cut(rest, ".")
		if n, err := strconv.Atoi(num); err == nil && n > 0 {
			seen[n] = true
		}
	}
	out := make([]int, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	sort.Ints(out)
	return out
}

// List returns the values of prefix.1, prefix.2, … in index order.
func List(form url.Values, prefix string) []string {
	var out []string
	for _, n := range Indices(form, prefix) {
		if v, ok := form[prefix+"."+strconv.Itoa(n)]; ok && len(v) > 0 {
			out = append(out, v[0])
		}
	}
	return out
}
