package audit

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Status is a finding's outcome, AWS Config's ComplianceType.
type Status string

// Statuses.
const (
	Compliant    Status = "COMPLIANT"
	NonCompliant Status = "NON_COMPLIANT"
	// NotApplicable: the rule has nothing to check, e.g. a role the stack does not have on
	// this cloud (`infra up` creates no IAM roles) or a template's security group that does
	// not exist. It does not fail the audit.
	NotApplicable Status = "NOT_APPLICABLE"
)

// ResourceType is AWS Config's name of the kind of resource a finding is about.
type ResourceType string

// Resource types the audit checks.
const (
	TypeBucket        ResourceType = "AWS::S3::Bucket"
	TypeTopic         ResourceType = "AWS::SNS::Topic"
	TypeRole          ResourceType = "AWS::IAM::Role"
	TypeSecurityGroup ResourceType = "AWS::EC2::SecurityGroup"
	TypeInstance      ResourceType = "AWS::EC2::Instance"
	TypeRule          ResourceType = "AWS::Events::Rule"
	TypeQueue         ResourceType = "AWS::SQS::Queue"
)

// short names for the text report.
var shortTypes = map[ResourceType]string{
	TypeBucket:        "bucket",
	TypeTopic:         "topic",
	TypeRole:          "role",
	TypeSecurityGroup: "security-group",
	TypeInstance:      "instance",
	TypeRule:          "rule",
	TypeQueue:         "queue",
}

// Finding is one rule's outcome on one resource, with the reason.
type Finding struct {
	Rule   Rule   `json:"rule"`
	Status Status `json:"status"`
	Reason string `json:"reason"`
}

// Evaluation is one finding in the shape of an AWS Config evaluation (PutEvaluations'
// Evaluation, plus the rule's name as an EvaluationResultQualifier carries it).
type Evaluation struct {
	ConfigRuleName         Rule         `json:"ConfigRuleName"`
	ComplianceResourceType ResourceType `json:"ComplianceResourceType"`
	ComplianceResourceId   string       `json:"ComplianceResourceId"` // AWS Config's spelling
	ComplianceType         Status       `json:"ComplianceType"`
	Annotation             string       `json:"Annotation"`
	OrderingTimestamp      time.Time    `json:"OrderingTimestamp"`
}

// Report is an audit's evaluations, resource by resource in the order audited. As JSON it
// is {"Evaluations": [...]}, the body of AWS Config's PutEvaluations.
type Report struct {
	Evaluations []Evaluation `json:"Evaluations"`
}

// add records the findings about one resource.
func (r *Report) add(t ResourceType, id string, at time.Time, fs ...Finding) {
	for _, f := range fs {
		r.Evaluations = append(r.Evaluations, Evaluation{
			ConfigRuleName: f.Rule, ComplianceResourceType: t, ComplianceResourceId: id,
			ComplianceType: f.Status, Annotation: f.Reason, OrderingTimestamp: at.UTC(),
		})
	}
}

// Count is the number of evaluations with status s.
func (r Report) Count(s Status) int {
	n := 0
	for _, e := range r.Evaluations {
		if e.ComplianceType == s {
			n++
		}
	}
	return n
}

// NonCompliant is the number of NON_COMPLIANT evaluations.
func (r Report) NonCompliant() int { return r.Count(NonCompliant) }

// NonCompliantResources names the resources with a NON_COMPLIANT evaluation, in report
// order, as "type id" (e.g. "bucket sortie-logs").
func (r Report) NonCompliantResources() []string {
	var out []string
	seen := map[string]bool{}
	for _, e := range r.Evaluations {
		name := shortType(e.ComplianceResourceType) + " " + e.ComplianceResourceId
		if e.ComplianceType == NonCompliant && !seen[name] {
			seen[name] = true
			out = append(out, name)
		}
	}
	return out
}

// Findings returns the findings about one resource, by rule.
func (r Report) Findings(t ResourceType, id string) map[Rule]Finding {
	out := map[Rule]Finding{}
	for _, e := range r.Evaluations {
		if e.ComplianceResourceType == t && e.ComplianceResourceId == id {
			out[e.ConfigRuleName] = Finding{e.ConfigRuleName, e.ComplianceType, e.Annotation}
		}
	}
	return out
}

func shortType(t ResourceType) string {
	if s, ok := shortTypes[t]; ok {
		return s
	}
	return string(t)
}

// String renders the report for humans: a header, one aligned line per resource and rule,
// then a summary line.
func (r Report) String() string {
	rows := [][5]string{{"TYPE", "RESOURCE", "RULE", "STATUS", "REASON"}}
	resources := map[string]bool{}
	for _, e := range r.Evaluations {
		rows = append(rows, [5]string{shortType(e.ComplianceResourceType), e.ComplianceResourceId, string(e.ConfigRuleName), string(e.ComplianceType), e.Annotation})
		resources[string(e.ComplianceResourceType)+" "+e.ComplianceResourceId] = true
	}
	var w [4]int
	for _, row := range rows {
		for i := range w {
			w[i] = max(w[i], len(row[i]))
		}
	}
	var sb strings.Builder
	for _, row := range rows {
		line := fmt.Sprintf("%-*s  %-*s  %-*s  %-*s  %s", w[0], row[0], w[1], row[1], w[2], row[2], w[3], row[3], row[4])
		sb.WriteString(strings.TrimRight(line, " "))
		sb.WriteByte('\n')
	}
	fmt.Fprintf(&sb, "%s, %s: %d compliant, %d non-compliant", plural(len(resources), "resource"), plural(len(rows)-1, "finding"),
		r.Count(Compliant), r.NonCompliant())
	if n := r.Count(NotApplicable); n > 0 {
		fmt.Fprintf(&sb, ", %d not applicable", n)
	}
	sb.WriteByte('\n')
	return sb.String()
}

// MarshalJSON writes {"Evaluations": [...]}, never null.
func (r Report) MarshalJSON() ([]byte, error) {
	type plain Report // without this method
	if r.Evaluations == nil {
		r.Evaluations = []Evaluation{}
	}
	return json.Marshal(plain(r))
}

func plural(n int, noun string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, noun)
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
