package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Policy is a bucket policy: the parts of an IAM policy document the rules read.
type Policy struct {
	Statement Statements `json:"Statement"`
}

// Statements is a policy's Statement: IAM accepts one statement object or a list of them.
type Statements []Statement

// UnmarshalJSON reads a statement object or a list of them.
func (s *Statements) UnmarshalJSON(b []byte) error {
	if t := bytes.TrimSpace(b); len(t) > 0 && t[0] == '{' {
		var one Statement
		if err := json.Unmarshal(t, &one); err != nil {
			return err
		}
		*s = Statements{one}
		return nil
	}
	var list []Statement
	if err := json.Unmarshal(b, &list); err != nil {
		return err
	}
	*s = list
	return nil
}

// Statement is one policy statement. The Not* elements are kept only to tell that they are
// there: a statement using them is never counted as enforcing a rule (see denies).
type Statement struct {
	Sid          string                       `json:"Sid"`
	Effect       string                       `json:"Effect"`
	Principal    *Principal                   `json:"Principal"`
	NotPrincipal json.RawMessage              `json:"NotPrincipal"`
	Action       Values                       `json:"Action"`
	NotAction    Values                       `json:"NotAction"`
	Resource     Values                       `json:"Resource"`
	NotResource  Values                       `json:"NotResource"`
	Condition    map[string]map[string]Values `json:"Condition"` // operator → key → values
}

// Values is an IAM element that may be one string or a list; condition values may also be
// JSON booleans or numbers (`"aws:SecureTransport": false`), kept as their text.
type Values []string

// UnmarshalJSON reads a string, a boolean, a number, or a list of them.
func (v *Values) UnmarshalJSON(b []byte) error {
	var raw any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&raw); err != nil {
		return err
	}
	if raw == nil { // null: as if absent
		*v = nil
		return nil
	}
	list, ok := raw.([]any)
	if !ok {
		list = []any{raw}
	}
	out := make(Values, 0, len(list))
	for _, e := range list {
		switch t := e.(type) {
		case string:
			out = append(out, t)
		case bool, json.Number:
			out = append(out, fmt.Sprint(t))
		default:
			return fmt.Errorf("want a string, boolean or number, got %s", strings.TrimSpace(string(b)))
		}
	}
	*v = out
	return nil
}

// Principal is a statement's Principal: "*" (Wildcard), or kinds ("AWS", "Service",
// "Federated", "CanonicalUser") and their values.
type Principal struct {
	Wildcard bool
	Kinds    map[string]Values
}

// UnmarshalJSON reads "*" or an object of kinds.
func (p *Principal) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		if s != "*" {
			return fmt.Errorf("principal %q: want \"*\" or an object", s)
		}
		*p = Principal{Wildcard: true}
		return nil
	}
	var kinds map[string]Values
	if err := json.Unmarshal(b, &kinds); err != nil {
		return fmt.Errorf("principal: %w", err)
	}
	*p = Principal{Kinds: kinds}
	return nil
}

// everyone reports whether the principal is every caller: "*" or {"AWS": "*"}.
func (p *Principal) everyone() bool {
	return p != nil && (p.Wildcard || slices.Contains(p.Kinds["AWS"], "*"))
}

func (p *Principal) String() string {
	if p == nil {
		return "(none)"
	}
	if p.Wildcard {
		return "*"
	}
	b, _ := json.Marshal(p.Kinds)
	return string(b)
}

// ParsePolicy parses a policy document (a bucket's, a topic's or an IAM policy).
func ParsePolicy(doc string) (*Policy, error) {
	var p Policy
	if err := json.Unmarshal([]byte(doc), &p); err != nil {
		return nil, fmt.Errorf("parsing policy: %w", err)
	}
	if len(p.Statement) == 0 {
		return nil, errors.New("parsing policy: no statements")
	}
	return &p, nil
}

// BucketARN is the ARN of the bucket itself, one of the resources the rules are about.
func BucketARN(bucket string) string { return "arn:aws:s3:::" + bucket }

// ObjectsARN stands for every object in the bucket, the other resource the rules are about.
func ObjectsARN(bucket string) string { return BucketARN(bucket) + "/*" }

// denial is a class of requests a rule wants denied to everyone: on which action and
// resources, and which conditions hold for every request of the class.
type denial struct {
	what      string   // for humans: "requests without TLS"
	action    string   // lower case; may end in *, meaning every action so named
	resources []string // ARNs; a trailing * means every object
	key       string   // the condition key the class is about, to find near misses
	// holds reports whether a condition (operator, key, values) is true for every request
	// of the class; a statement with any other condition denies less than the class.
	holds func(op, key string, values Values) bool
}

const sseKey = "s3:x-amz-server-side-encryption"

// insecureTransport is what s3-bucket-ssl-requests-only wants denied.
func insecureTransport(bucket string) denial {
	return denial{
		what: "requests without TLS", action: "s3:*", key: "aws:SecureTransport",
		resources: []string{BucketARN(bucket), ObjectsARN(bucket)},
		holds: func(op, key string, values Values) bool {
			return anyFold(op, "Bool", "BoolIfExists") && strings.EqualFold(key, "aws:SecureTransport") &&
				slices.ContainsFunc(values, func(v string) bool { return strings.EqualFold(v, "false") })
		},
	}
}

// wrongEncryptionHeader is an upload asking for an SSE other than aws:kms.
func wrongEncryptionHeader(bucket string) denial {
	return denial{
		what: "uploads with an SSE header other than aws:kms", action: "s3:putobject", key: sseKey,
		resources: []string{ObjectsARN(bucket)},
		holds: func(op, key string, values Values) bool {
			// StringNotEquals [aws:kms] holds for every other value; a list naming more
			// values than aws:kms would let those through.
			return anyFold(op, "StringNotEquals", "StringNotEqualsIfExists") && strings.EqualFold(key, sseKey) && onlyKMS(values)
		},
	}
}

// noEncryptionHeader is an upload without an SSE header.
func noEncryptionHeader(bucket string) denial {
	return denial{
		what: "uploads without an SSE header", action: "s3:putobject", key: sseKey,
		resources: []string{ObjectsARN(bucket)},
		holds: func(op, key string, values Values) bool {
			// Null true, or StringNotEqualsIfExists [aws:kms], which holds when the key is
			// absent. (So does a plain StringNotEquals on AWS today, but Sortie's policy, like
			// AWS's own examples, states the absent header with Null and requires that.)
			if !strings.EqualFold(key, sseKey) {
				return false
			}
			if strings.EqualFold(op, "StringNotEqualsIfExists") {
				return onlyKMS(values)
			}
			return strings.EqualFold(op, "Null") &&
				slices.ContainsFunc(values, func(v string) bool { return strings.EqualFold(v, "true") })
		},
	}
}

// denies tells which of d's resources st denies d's requests on for everyone, or, when it
// denies none of them, why (problem).
func denies(st Statement, d denial) (covered []string, problem string) {
	switch {
	case st.Effect != "Deny":
		return nil, fmt.Sprintf("effect %s, not Deny", orNone(st.Effect))
	case st.NotPrincipal != nil && string(st.NotPrincipal) != "null":
		return nil, "NotPrincipal exempts some principals"
	case !st.Principal.everyone():
		return nil, fmt.Sprintf("principal %s, not everyone (*)", st.Principal)
	case st.NotAction != nil:
		return nil, "NotAction instead of Action"
	case !slices.ContainsFunc(st.Action, func(a string) bool { return covers(strings.ToLower(a), d.action) }):
		return nil, fmt.Sprintf("actions %s do not include %s", list(st.Action), d.action)
	case st.NotResource != nil:
		return nil, "NotResource instead of Resource"
	}
	for _, op := range slices.Sorted(maps.Keys(st.Condition)) {
		keys := st.Condition[op]
		for _, key := range slices.Sorted(maps.Keys(keys)) {
			if values := keys[key]; !d.holds(op, key, values) {
				return nil, fmt.Sprintf("condition %s %s %s does not hold for all %s", op, key, list(values), d.what)
			}
		}
	}
	for _, r := range d.resources {
		if slices.ContainsFunc(st.Resource, func(p string) bool { return covers(normalizePartition(p), r) }) {
			covered = append(covered, r)
		}
	}
	if len(covered) == 0 {
		return nil, fmt.Sprintf("resources %s cover none of %s", list(st.Resource), strings.Join(d.resources, ", "))
	}
	return covered, ""
}

// check reports whether p denies d's requests on every one of d's resources, possibly by
// several statements together. ok's reason names the statements; otherwise the reason
// says which resources are left and why the statements about d's condition key fall
// short, leaving out those that deny one of siblings, the rule's other classes.
func check(p *Policy, d denial, siblings ...denial) (ok bool, reason string) {
	if p == nil {
		return false, "no bucket policy"
	}
	var by, nearMisses []string
	left := slices.Clone(d.resources)
	for i, st := range p.Statement {
		name := st.Sid
		if name == "" {
			name = fmt.Sprintf("statement %d", i+1)
		}
		covered, problem := denies(st, d)
		if problem != "" {
			if mentions(st, d.key) && !slices.ContainsFunc(siblings, func(o denial) bool { _, prob := denies(st, o); return prob == "" }) {
				nearMisses = append(nearMisses, name+": "+problem)
			}
			continue
		}
		by = append(by, name)
		left = slices.DeleteFunc(left, func(r string) bool { return slices.Contains(covered, r) })
	}
	if len(left) == 0 {
		return true, d.what + " denied by " + strings.Join(by, ", ")
	}
	reason = fmt.Sprintf("%s to %s are not denied", d.what, strings.Join(left, ", "))
	if len(nearMisses) > 0 {
		reason += " (" + strings.Join(nearMisses, "; ") + ")"
	}
	return false, reason
}

// mentions reports whether st has a condition on key.
func mentions(st Statement, key string) bool {
	for _, keys := range st.Condition {
		for k := range keys {
			if strings.EqualFold(k, key) {
				return true
			}
		}
	}
	return false
}

// covers reports whether the IAM wildcard pattern (* any run of characters, ? any one)
// matches every string target stands for, where a * in target stands for any run of
// characters: "arn:aws:s3:::b*" covers "arn:aws:s3:::b/*", "arn:aws:s3:::b/a*" does not.
// Only a * of the pattern can match a * of the target, which makes the answer exact for a
// target with at most one trailing *.
func covers(pattern, target string) bool {
	p, t, star, mark := 0, 0, -1, 0
	for t < len(target) {
		switch {
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, t
			p++
		case p < len(pattern) && target[t] != '*' && (pattern[p] == '?' || pattern[p] == target[t]):
			p++
			t++
		case star >= 0:
			mark++
			p, t = star+1, mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// normalizePartition rewrites an ARN of another partition (aws-cn, aws-us-gov, ...) to
// the aws partition the rules' resources are written in.
func normalizePartition(arn string) string {
	if rest, ok := strings.CutPrefix(arn, "arn:aws-"); ok {
		if i := strings.IndexByte(rest, ':'); i >= 0 && !strings.ContainsAny(rest[:i], "*?") {
			return "arn:aws" + rest[i:]
		}
	}
	return arn
}

// onlyKMS reports whether values is exactly aws:kms (perhaps repeated).
func onlyKMS(values Values) bool {
	return len(values) > 0 && !slices.ContainsFunc(values, func(v string) bool { return v != "aws:kms" })
}

func anyFold(s string, options ...string) bool {
	return slices.ContainsFunc(options, func(o string) bool { return strings.EqualFold(s, o) })
}

func list(v Values) string {
	if len(v) == 0 {
		return "[]"
	}
	return "[" + strings.Join(v, " ") + "]"
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
