package localcloud

import (
	"regexp"
	"strconv"
	"strings"
)

// attribute returns the values a filter name compares against.
type attribute[T any] func(T) []string

// compileFilters turns Filter.N into a predicate: filters are ANDed, the values of one
// filter ORed, values may use the * and ? wildcards (backslash escapes them), tag:KEY and
// tag-key work on tagsOf, and any other name must be in attrs.
func compileFilters[T any](fs []formFilter, attrs map[string]attribute[T], tagsOf func(T) map[string]string) (func(T) bool, *apiError) {
	type compiled struct {
		get     attribute[T]
		matches []*regexp.Regexp
	}
	var all []compiled
	for _, f := range fs {
		var get attribute[T]
		switch {
		case strings.HasPrefix(f.Name, "tag:") && len(f.Name) > len("tag:"):
			key := strings.TrimPrefix(f.Name, "tag:")
			get = func(v T) []string {
				if val, ok := tagsOf(v)[key]; ok {
					return []string{val}
				}
				return nil
			}
		case f.Name == "tag-key":
			get = func(v T) []string {
				m := tagsOf(v)
				keys := make([]string, 0, len(m))
				for k := range m {
					keys = append(keys, k)
				}
				return keys
			}
		default:
			var ok bool
			if get, ok = attrs[f.Name]; !ok {
				return nil, invalidParameter("The filter '%s' is invalid", f.Name)
			}
		}
		if len(f.Values) == 0 {
			return nil, invalidParameter("The filter '%s' must have at least one value", f.Name)
		}
		c := compiled{get: get}
		for _, v := range f.Values {
			c.matches = append(c.matches, wildcard(v))
		}
		all = append(all, c)
	}
	return func(v T) bool {
		for _, c := range all {
			if !anyMatch(c.matches, c.get(v)) {
				return false
			}
		}
		return true
	}, nil
}

func anyMatch(patterns []*regexp.Regexp, values []string) bool {
	for _, p := range patterns {
		for _, v := range values {
			if p.MatchString(v) {
				return true
			}
		}
	}
	return false
}

// wildcard compiles an EC2 filter value: * is any run, ? any one character, \ escapes.
func wildcard(pattern string) *regexp.Regexp {
	var b strings.Builder
	b.WriteString(`^`)
	for i := 0; i < len(pattern); i++ {
		switch ch := pattern[i]; ch {
		case '*':
			b.WriteString(`.*`)
		case '?':
			b.WriteString(`.`)
		case '\\':
			if i+1 < len(pattern) {
				i++
				b.WriteString(regexp.QuoteMeta(pattern[i : i+1]))
			} else {
				b.WriteString(`\\`)
			}
		default:
			b.WriteString(regexp.QuoteMeta(string(ch)))
		}
	}
	b.WriteString(`$`)
	return regexp.MustCompile(b.String())
}

func one(s string) []string {
	if s == "" {
		return nil
	}
	return []string{s}
}

// instanceAttributes are the DescribeInstances filters besides tag:KEY and tag-key.
var instanceAttributes = map[string]attribute[*instance]{
	"instance-state-name": func(i *instance) []string { return []string{i.state.Name} },
	"instance-state-code": func(i *instance) []string { return []string{strconv.Itoa(i.state.Code)} },
	"instance-type":       func(i *instance) []string { return []string{i.instanceType} },
	"instance-id":         func(i *instance) []string { return []string{i.id} },
	"image-id":            func(i *instance) []string { return []string{i.imageID} },
	"key-name":            func(i *instance) []string { return one(i.keyName) },
	"reservation-id":      func(i *instance) []string { return []string{i.reservationID} },
	"client-token":        func(i *instance) []string { return one(i.clientToken) },
	"subnet-id":           func(i *instance) []string { return one(i.subnetID) },
	"vpc-id":              func(i *instance) []string { return one(i.vpcID) },
	"availability-zone":   func(i *instance) []string { return []string{i.zone} },
	"private-ip-address":  func(i *instance) []string { return []string{i.privateIP} },
	"instance.group-id":   func(i *instance) []string { return i.groups },
	"group-id":            func(i *instance) []string { return i.groups },
}

func instanceFilter(fs []formFilter) (func(*instance) bool, *apiError) {
	return compileFilters(fs, instanceAttributes, func(i *instance) map[string]string { return i.tags })
}

// keyPairAttributes are the DescribeKeyPairs filters besides tag:KEY and tag-key.
var keyPairAttributes = map[string]attribute[*keyPair]{
	"key-name":    func(k *keyPair) []string { return []string{k.name} },
	"key-pair-id": func(k *keyPair) []string { return []string{k.id} },
	"fingerprint": func(k *keyPair) []string { return []string{k.fingerprint} },
	"key-type":    func(k *keyPair) []string { return []string{k.keyType} },
}

func keyPairFilter(fs []formFilter) (func(*keyPair) bool, *apiError) {
	return compileFilters(fs, keyPairAttributes, func(k *keyPair) map[string]string { return k.tags })
}
