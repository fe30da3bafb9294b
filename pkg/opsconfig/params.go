package opsconfig

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// DefaultParamMaxLen bounds a parameter value whose Param sets no max_len.
const DefaultParamMaxLen = 1024

var paramNameRe = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,63}$`)

// Regexp compiles the parameter's pattern anchored at both ends.
func (p Param) Regexp() (*regexp.Regexp, error) {
	re, err := regexp.Compile(`^(?:` + p.Pattern + `)$`)
	if err != nil {
		return nil, fmt.Errorf("pattern %q: %w", p.Pattern, err)
	}
	return re, nil
}

// Limit returns the maximum length of a value in bytes.
func (p Param) Limit() int {
	if p.MaxLen > 0 {
		return p.MaxLen
	}
	return DefaultParamMaxLen
}

// Refs returns the parameter names s references as {{name}} (spaces inside the braces are
// allowed), in order, with repeats. "{{" starts a reference everywhere; anything but a
// parameter name between "{{" and "}}", or a "{{" never closed, is an error.
func Refs(s string) ([]string, error) {
	var names []string
	_, err := scan(s, func(name string) (string, error) {
		names = append(names, name)
		return "", nil
	})
	return names, err
}

// Expand replaces every {{name}} in s with values[name]. A substituted value is not itself
// expanded again. A name missing from values is an error. Expand does no quoting: callers
// that build shell commands quote the result.
func Expand(s string, values map[string]string) (string, error) {
	return scan(s, func(name string) (string, error) {
		v, ok := values[name]
		if !ok {
			return "", fmt.Errorf("unknown parameter %q", name)
		}
		return v, nil
	})
}

func scan(s string, sub func(name string) (string, error)) (string, error) {
	var b strings.Builder
	for {
		i := strings.Index(s, "{{")
		if i < 0 {
			b.WriteString(s)
			return b.String(), nil
		}
		b.WriteString(s[:i])
		rest := s[i+2:]
		j := strings.Index(rest, "}}")
		if j < 0 {
			return "", fmt.Errorf("unclosed {{ in %q", s)
		}
		name := strings.TrimSpace(rest[:j])
		if !paramNameRe.MatchString(name) {
			return "", fmt.Errorf("{{%s}} is not a parameter reference: only {{name}} is supported", rest[:j])
		}
		v, err := sub(name)
		if err != nil {
			return "", err
		}
		b.WriteString(v)
		s = rest[j+2:]
	}
}

// CheckRelPath reports why p may not be used as a path below the login directory (or as an
// S3 key below a bucket), or nil: it must not be empty, contain NUL or a line break, start
// with "/" or "~", or have a ".." element. Recipes check every path and key after
// parameter expansion, so a parameter can never lead outside.
func CheckRelPath(p string) error {
	switch {
	case p == "":
		return errors.New("must not be empty")
	case strings.ContainsAny(p, "\x00\n\r"):
		return errors.New("must not contain NUL or line breaks")
	case strings.HasPrefix(p, "/"):
		return errors.New("must be relative, not start with /")
	case strings.HasPrefix(p, "~"):
		return errors.New("must not start with ~: paths are relative to the login directory")
	case slices.Contains(strings.Split(p, "/"), ".."):
		return errors.New("must not have a .. element")
	}
	return nil
}
