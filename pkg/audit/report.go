package audit

import (
	"encoding/json"
	"fmt"
	"strings"
)

// Status is a finding's outcome.
type Status string

// Statuses.
const (
	Compliant    Status = "COMPLIANT"
	NonCompliant Status = "NON_COMPLIANT"
	// Missing: the bucket does not exist, so it holds nothing to protect; it is not
	// counted as non-compliant (the secrets bucket exists only once the login key was made).
	Missing Status = "MISSING"
)

// Finding is one rule's outcome on one bucket, with the reason.
type Finding struct {
	Rule   Rule   `json:"rule"`
	Status Status `json:"status"`
	Reason string `json:"reason"`
}

// BucketReport is one bucket's findings, one per rule (one MISSING finding when the bucket
// does not exist).
type BucketReport struct {
	Bucket   string    `json:"bucket"`
	Findings []Finding `json:"findings"`
}

// Report is an audit's findings, bucket by bucket in the order audited.
type Report struct {
	Buckets []BucketReport `json:"buckets"`
}

// count is the number of findings with status s.
func (r Report) count(s Status) int {
	n := 0
	for _, b := range r.Buckets {
		for _, f := range b.Findings {
			if f.Status == s {
				n++
			}
		}
	}
	return n
}

// NonCompliant is the number of NON_COMPLIANT findings.
func (r Report) NonCompliant() int { return r.count(NonCompliant) }

// Missing is the number of buckets that do not exist.
func (r Report) Missing() int { return r.count(Missing) }

// NonCompliantBuckets names the buckets with a NON_COMPLIANT finding, in report order.
func (r Report) NonCompliantBuckets() []string {
	var out []string
	for _, b := range r.Buckets {
		for _, f := range b.Findings {
			if f.Status == NonCompliant {
				out = append(out, b.Bucket)
				break
			}
		}
	}
	return out
}

// String renders the report for humans: a header, one aligned line per finding, then a
// summary line.
func (r Report) String() string {
	rows := [][4]string{{"BUCKET", "RULE", "STATUS", "REASON"}}
	for _, b := range r.Buckets {
		for _, f := range b.Findings {
			rows = append(rows, [4]string{b.Bucket, string(f.Rule), string(f.Status), f.Reason})
		}
	}
	var w [3]int
	for _, row := range rows {
		for i := range w {
			w[i] = max(w[i], len(row[i]))
		}
	}
	var sb strings.Builder
	for _, row := range rows {
		line := fmt.Sprintf("%-*s  %-*s  %-*s  %s", w[0], row[0], w[1], row[1], w[2], row[2], row[3])
		sb.WriteString(strings.TrimRight(line, " "))
		sb.WriteByte('\n')
	}
	fmt.Fprintf(&sb, "%s, %s: %d compliant, %d non-compliant", plural(len(r.Buckets), "bucket"), plural(len(rows)-1, "finding"),
		r.count(Compliant), r.NonCompliant())
	if n := r.Missing(); n > 0 {
		fmt.Fprintf(&sb, ", %d missing", n)
	}
	sb.WriteByte('\n')
	return sb.String()
}

// MarshalJSON is the report for machines: the buckets and their findings, and the counts
// of non-compliant findings and missing buckets.
func (r Report) MarshalJSON() ([]byte, error) {
	type plain Report // without this method
	if r.Buckets == nil {
		r.Buckets = []BucketReport{}
	}
	return json.Marshal(struct {
		plain
		NonCompliant int `json:"non_compliant"`
		Missing      int `json:"missing"`
	}{plain(r), r.NonCompliant(), r.Missing()})
}

func plural(n int, noun string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, noun)
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
