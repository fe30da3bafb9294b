// Package iampolicy parses IAM policy documents and decides requests against them the way
// IAM evaluates one identity policy: an explicit Deny wins, otherwise an Allow whose action,
// resource and conditions match, otherwise an implicit deny. It also lints a policy for
// what Sortie never grants: Action "*" and unconditioned writes on Resource "*".
//
// It covers what Sortie's policies use: action and resource wildcards, NotAction and
// NotResource, the String, Arn, Bool and Null condition operators with IfExists and the
// ForAllValues/ForAnyValue set qualifiers. An operator it does not know makes the condition
// fail (a deny, never a silent allow).
package iampolicy

import (
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
)

// Policy is an IAM policy document.
type Policy struct {
	Version   string      `json:"Version"`
	Statement []Statement `json:"Statement"`
}

// Statement is one statement of a policy.
type Statement struct {
	Sid         string                        `json:"Sid,omitempty"`
	Effect      string                        `json:"Effect"`
	Principal   json.RawMessage               `json:"Principal,omitempty"`
	Action      Strings                       `json:"Action,omitempty"`
	NotAction   Strings                       `json:"NotAction,omitempty"`
	Resource    Strings                       `json:"Resource,omitempty"`
	NotResource Strings                       `json:"NotResource,omitempty"`
	Condition   map[string]map[string]Strings `json:"Condition,omitempty"`
}

// Strings is a policy value that is a string or a list of strings.
type Strings []string

// UnmarshalJSON accepts "x" and ["x", "y"].
func (s *Strings) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*s = Strings{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return fmt.Errorf("want a string or a list of strings: %w", err)
	}
	*s = many
	return nil
}

// Parse reads a policy document and checks its shape.
func Parse(doc []byte) (Policy, error) {
	var p Policy
	if err := json.Unmarshal(doc, &p); err != nil {
		return Policy{}, fmt.Errorf("parsing policy: %w", err)
	}
	// Statement may be a single object.
	if len(p.Statement) == 0 {
		var one struct{ Statement Statement }
		if err := json.Unmarshal(doc, &one); err == nil && one.Statement.Effect != "" {
			p.Statement = []Statement{one.Statement}
		}
	}
	var errs []error
	if p.Version != "2012-10-17" {
		errs = append(errs, fmt.Errorf("version %q, want 2012-10-17", p.Version))
	}
	if len(p.Statement) == 0 {
		errs = append(errs, errors.New("no statement"))
	}
	for i, s := range p.Statement {
		name := fmt.Sprintf("statement %d (%s)", i, s.Sid)
		if s.Effect != "Allow" && s.Effect != "Deny" {
			errs = append(errs, fmt.Errorf("%s: effect %q", name, s.Effect))
		}
		if (len(s.Action) == 0) == (len(s.NotAction) == 0) {
			errs = append(errs, fmt.Errorf("%s: want exactly one of Action and NotAction, non-empty", name))
		}
		if len(s.Principal) == 0 && (len(s.Resource) == 0) == (len(s.NotResource) == 0) {
			errs = append(errs, fmt.Errorf("%s: want exactly one of Resource and NotResource, non-empty", name))
		}
	}
	return p, errors.Join(errs...)
}

// Request is one authorisation request: an action on a resource ARN ("*" for actions
// without a resource), with the request's condition keys.
type Request struct {
	Action   string
	Resource string
	Context  map[string][]string
}

// Decision is the outcome of evaluating a request.
type Decision struct {
	Allowed bool
	// Sid is the statement that decided: the matching Allow, or the explicit Deny.
	Sid string
	// ExplicitDeny is set when a Deny statement matched.
	ExplicitDeny bool
}

// Decide evaluates r against the policy's statements.
func (p Policy) Decide(r Request) Decision {
	var d Decision
	for _, s := range p.Statement {
		if !s.matches(r) {
			continue
		}
		if s.Effect == "Deny" {
			return Decision{Sid: s.Sid, ExplicitDeny: true}
		}
		if !d.Allowed {
			d = Decision{Allowed: true, Sid: s.Sid}
		}
	}
	return d
}

func (s Statement) matches(r Request) bool {
	if len(s.Action) > 0 && !anyMatch(s.Action, r.Action, true) {
		return false
	}
	if len(s.NotAction) > 0 && anyMatch(s.NotAction, r.Action, true) {
		return false
	}
	if len(s.Resource) > 0 && !anyMatch(s.Resource, r.Resource, false) {
		return false
	}
	if len(s.NotResource) > 0 && anyMatch(s.NotResource, r.Resource, false) {
		return false
	}
	for op, keys := range s.Condition {
		for key, want := range keys {
			if !condition(op, r.Context[key], want) {
				return false
			}
		}
	}
	return true
}

func anyMatch(patterns []string, value string, fold bool) bool {
	for _, p := range patterns {
		if glob(p, value, fold) {
			return true
		}
	}
	return false
}

// glob matches IAM's wildcards: * any run of characters (":" and "/" included), ? one.
func glob(pattern, value string, fold bool) bool {
	if fold {
		pattern, value = strings.ToLower(pattern), strings.ToLower(value)
	}
	// path.Match stops * at "/"; IAM does not. Replace "/" by a character ARNs never hold.
	const sep = "\x00"
	ok, err := path.Match(strings.ReplaceAll(escapeBrackets(pattern), "/", sep), strings.ReplaceAll(value, "/", sep))
	return err == nil && ok
}

// escapeBrackets makes [ ] and \ literal, as they are in IAM.
func escapeBrackets(p string) string {
	r := strings.NewReplacer(`\`, `\\`, `[`, `\[`, `]`, `\]`)
	return r.Replace(p)
}

// condition evaluates one operator on one key: have is the request's values (nil when the
// key is absent), want the policy's.
func condition(op string, have, want []string) bool {
	forAll, forAny := false, false
	if rest, ok := strings.CutPrefix(op, "ForAllValues:"); ok {
		op, forAll = rest, true
	} else if rest, ok := strings.CutPrefix(op, "ForAnyValue:"); ok {
		op, forAny = rest, true
	}
	ifExists := false
	if rest, ok := strings.CutSuffix(op, "IfExists"); ok && op != "Null" {
		op, ifExists = rest, true
	}
	if op == "Null" {
		null := len(have) == 0
		return slices.ContainsFunc(want, func(w string) bool { return strings.EqualFold(w, fmt.Sprint(null)) })
	}
	match, negated, known := operator(op)
	if !known {
		return false
	}
	one := func(v string) bool { // v satisfies the positive operator for some policy value
		return slices.ContainsFunc(want, func(w string) bool { return match(w, v) })
	}
	switch {
	case forAll:
		for _, v := range have {
			if one(v) == negated {
				return false
			}
		}
		return true
	case len(have) == 0:
		return ifExists || negated
	case forAny:
		return slices.ContainsFunc(have, func(v string) bool { return one(v) != negated })
	case negated:
		return !slices.ContainsFunc(have, one)
	default:
		return slices.ContainsFunc(have, one)
	}
}

// operator returns the positive comparison of a condition operator and whether the
// operator negates it.
func operator(op string) (match func(want, have string) bool, negated, known bool) {
	equal := func(w, h string) bool { return w == h }
	fold := func(w, h string) bool { return strings.EqualFold(w, h) }
	like := func(w, h string) bool { return glob(w, h, false) }
	switch op {
	case "StringEquals", "ArnEquals":
		return equal, false, true
	case "StringNotEquals", "ArnNotEquals":
		return equal, true, true
	case "StringEqualsIgnoreCase":
		return fold, false, true
	case "StringNotEqualsIgnoreCase":
		return fold, true, true
	case "StringLike", "ArnLike":
		return like, false, true
	case "StringNotLike", "ArnNotLike":
		return like, true, true
	case "Bool":
		return fold, false, true
	}
	return nil, false, false
}

// readOnlyVerbs start the names of actions that change nothing.
var readOnlyVerbs = []string{"Get", "List", "Describe", "Head", "BatchGet", "BatchCheck", "Query", "Scan"}

// ReadOnly reports whether an action (or an action pattern such as "s3:Get*") only reads.
func ReadOnly(action string) bool {
	_, name, ok := strings.Cut(action, ":")
	if !ok || name == "*" || name == "" {
		return false
	}
	for _, v := range readOnlyVerbs {
		if strings.HasPrefix(name, v) {
			return true
		}
	}
	return false
}

// Lint reports what Sortie's policies must never hold: an Allow with Action "*" (or a
// whole service, "s3:*"), with NotAction or NotResource, or a mutating action on Resource
// "*" without a condition.
func (p Policy) Lint() []string {
	var out []string
	for i, s := range p.Statement {
		if s.Effect != "Allow" {
			continue
		}
		name := s.Sid
		if name == "" {
			name = fmt.Sprintf("statement %d", i)
		}
		if len(s.NotAction) > 0 || len(s.NotResource) > 0 {
			out = append(out, name+": NotAction/NotResource in an Allow grants everything else")
		}
		for _, a := range s.Action {
			if a == "*" || strings.HasSuffix(a, ":*") {
				out = append(out, fmt.Sprintf("%s: action %q", name, a))
			}
		}
		if !slices.Contains(s.Resource, "*") || len(s.Condition) > 0 {
			continue
		}
		for _, a := range s.Action {
			if !ReadOnly(a) {
				out = append(out, fmt.Sprintf("%s: mutating action %s on Resource \"*\" without a condition", name, a))
			}
		}
	}
	return out
}
