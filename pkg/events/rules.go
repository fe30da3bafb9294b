package events

import (
	"bytes"
	"maps"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/crypto/ssh"
)

// Syntax of identifiers. Each pattern is also the text an error message shows.
const (
	idPattern           = `[A-Za-z0-9._-]{1,64}`
	namePattern         = `[a-z0-9][a-z0-9._-]{0,63}`
	instanceIDPattern   = `i-[0-9a-f]{8,17}`
	queuePattern        = `[A-Za-z0-9_-]{1,80}`
	paramKeyPattern     = `[A-Za-z_][A-Za-z0-9_]{0,63}`
	instanceTypePattern = `[a-z][a-z0-9-]{0,31}\.[a-z0-9-]{1,31}`
	bucketPattern       = `[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]`
	noncePattern        = `[A-Za-z0-9_-]{16,64}`
	hostPattern         = `[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*`
)

var (
	idRE           = anchored(idPattern)
	nameRE         = anchored(namePattern)
	instanceIDRE   = anchored(instanceIDPattern)
	queueRE        = anchored(queuePattern)
	paramKeyRE     = anchored(paramKeyPattern)
	instanceTypeRE = anchored(instanceTypePattern)
	bucketRE       = anchored(bucketPattern)
	hostRE         = anchored(hostPattern)
	nonceRE        = anchored(noncePattern)
	portRE         = anchored(`[0-9]{1,5}`)
)

func anchored(p string) *regexp.Regexp { return regexp.MustCompile(`^(?:` + p + `)$`) }

func (c *checker) match(field, s string, re *regexp.Regexp, pattern string) bool {
	if !re.MatchString(s) {
		c.fail(field, "must match %s, got %s", pattern, quote(s))
		return false
	}
	return true
}

func (c *checker) jobID(field, s string)      { c.match(field, s, idRE, idPattern) }
func (c *checker) fleetID(field, s string)    { c.match(field, s, idRE, idPattern) }
func (c *checker) name(field, s string)       { c.match(field, s, nameRE, namePattern) }
func (c *checker) instanceID(field, s string) { c.match(field, s, instanceIDRE, instanceIDPattern) }
func (c *checker) instanceType(field, s string) {
	c.match(field, s, instanceTypeRE, instanceTypePattern)
}

// optionalName checks a name that may be left empty.
func (c *checker) optionalName(field, s string) {
	if s != "" {
		c.name(field, s)
	}
}

// printable checks a required string of printable ASCII (space to tilde).
func (c *checker) printable(field, s string, max int) {
	switch {
	case s == "":
		c.fail(field, "must be set")
	case len(s) > max:
		c.fail(field, "must be at most %d bytes, got %d", max, len(s))
	default:
		for i := 0; i < len(s); i++ {
			if s[i] < ' ' || s[i] > '~' {
				c.fail(field, "must be printable ASCII, got %s", quote(s))
				return
			}
		}
	}
}

func (c *checker) correlationID(field, s string) { c.printable(field, s, MaxCorrelationIDBytes) }
func (c *checker) keyName(field, s string)       { c.printable(field, s, MaxKeyNameBytes) }

// text checks free text: at most max bytes of valid UTF-8 without NUL bytes.
func (c *checker) text(field, s string, max int, required bool) bool {
	switch {
	case s == "" && required:
		c.fail(field, "must be set")
	case len(s) > max:
		c.fail(field, "must be at most %d bytes, got %d", max, len(s))
	case !utf8.ValidString(s):
		c.fail(field, "must be valid UTF-8, got %s", quote(s))
	case strings.IndexByte(s, 0) >= 0:
		c.fail(field, "must not contain NUL bytes, got %s", quote(s))
	default:
		return true
	}
	return false
}

// printableText checks a required string of printable Unicode (no control characters).
func (c *checker) printableText(field, s string, max int) {
	if !c.text(field, s, max, true) {
		return
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			c.fail(field, "must be printable, got %s", quote(s))
			return
		}
	}
}

// lines checks a tail of output: at most MaxTailLines lines of text.
func (c *checker) lines(field string, lines []string) {
	if len(lines) > MaxTailLines {
		c.fail(field, "must have at most %d lines, got %d", MaxTailLines, len(lines))
		return
	}
	for i, l := range lines {
		c.text(index(field, i), l, MaxTextBytes, false)
	}
}

func (c *checker) intRange(field string, n, min, max int64) {
	if n < min || n > max {
		c.fail(field, "must be between %d and %d, got %d", min, max, n)
	}
}

// seconds checks a float number of seconds: finite, 0..max.
func (c *checker) seconds(field string, x, max float64) {
	if !(x >= 0 && x <= max) { // also catches NaN
		c.fail(field, "must be between 0 and %.0f, got %g", max, x)
	}
}

func (c *checker) durationMS(field string, ms int64) {
	c.intRange(field, ms, 0, MaxDuration.Milliseconds())
}

func (c *checker) time(field string, t time.Time) {
	switch {
	case t.IsZero():
		c.fail(field, "must be set")
	case t.Before(minTime) || !t.Before(maxTime):
		c.fail(field, "must be between %s and %s, got %s",
			minTime.Format(time.DateOnly), maxTime.Format(time.DateOnly), t.UTC().Format(time.RFC3339))
	}
}

func (c *checker) outcome(field, s string, allowed ...string) {
	for _, a := range allowed {
		if s == a {
			return
		}
	}
	c.fail(field, "must be one of %s, got %s", strings.Join(allowed, ", "), quote(s))
}

// endpoint checks an SSH endpoint: host:port, the host an IP address or a DNS name, the
// port 1..65535.
func (c *checker) endpoint(field, s string) {
	const want = "must be host:port with a port 1..65535"
	if len(s) > 300 {
		c.fail(field, "%s, got %d bytes", want, len(s))
		return
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		c.fail(field, "%s, got %s", want, quote(s))
		return
	}
	if addr, err := netip.ParseAddr(host); err == nil {
		if addr.Zone() != "" {
			c.fail(field, "%s and no IPv6 zone, got %s", want, quote(s))
			return
		}
	} else if len(host) > 253 || !hostRE.MatchString(host) {
		c.fail(field, "%s and the host an IP address or DNS name, got %s", want, quote(s))
		return
	}
	if !portRE.MatchString(port) {
		c.fail(field, "%s, got %s", want, quote(s))
		return
	}
	if n, _ := strconv.Atoi(port); n < 1 || n > 65535 {
		c.fail(field, "%s, got %s", want, quote(s))
	}
}

// ip checks an optional IP address (no zone).
func (c *checker) ip(field, s string) {
	if s == "" {
		return
	}
	if addr, err := netip.ParseAddr(s); err != nil || addr.Zone() != "" {
		c.fail(field, "must be an IP address, got %s", quote(s))
	}
}

// nonce checks an optional per-plan nonce.
func (c *checker) nonce(field, s string) {
	if s != "" {
		c.match(field, s, nonceRE, noncePattern)
	}
}

// optionalHostKey checks a host key that may be left empty (instance host keys).
func (c *checker) optionalHostKey(field, s string) {
	if s != "" {
		c.hostKey(field, s)
	}
}

// hostKey checks an SSH public key in authorized_keys format: exactly one key, no options.
func (c *checker) hostKey(field, s string) {
	if !c.text(field, s, MaxHostKeyBytes, true) {
		return
	}
	_, _, options, rest, err := ssh.ParseAuthorizedKey([]byte(s))
	switch {
	case err != nil:
		c.fail(field, "must be an SSH public key in authorized_keys format (%v), got %s", err, quote(s))
	case len(options) > 0:
		c.fail(field, "must be a bare public key without options, got options %s", quote(strings.Join(options, ",")))
	case len(bytes.TrimSpace(rest)) > 0:
		c.fail(field, "must hold exactly one public key, got more after the first")
	}
}

// bucket checks an S3 bucket name against S3's naming rules.
func (c *checker) bucket(field, s string) {
	const want = "must be an S3 bucket name (3-63 characters of a-z 0-9 . -, starting and ending with a letter or digit)"
	switch {
	case !bucketRE.MatchString(s):
		c.fail(field, "%s, got %s", want, quote(s))
	case strings.Contains(s, ".."), strings.Contains(s, ".-"), strings.Contains(s, "-."):
		c.fail(field, "%s without adjacent dots or dot-hyphen pairs, got %s", want, quote(s))
	case net.ParseIP(s) != nil:
		c.fail(field, "%s, not an IP address, got %s", want, quote(s))
	case strings.HasPrefix(s, "xn--"), strings.HasPrefix(s, "sthree-"),
		strings.HasSuffix(s, "-s3alias"), strings.HasSuffix(s, "--ol-s3"):
		c.fail(field, "%s without a reserved prefix or suffix, got %s", want, quote(s))
	}
}

// params checks recipe parameters. Values may hold shell metacharacters: the recipe
// quotes them, this only bounds them.
func (c *checker) params(field string, p map[string]string) {
	if len(p) > MaxParams {
		c.fail(field, "must have at most %d entries, got %d", MaxParams, len(p))
		return
	}
	for _, k := range slices.Sorted(maps.Keys(p)) {
		if !paramKeyRE.MatchString(k) {
			c.fail(field, "key must match %s, got %s", paramKeyPattern, quote(k))
			continue
		}
		c.text(field+"."+k, p[k], MaxParamValueBytes, false)
	}
}

// relativePath checks a required path relative to the login directory: not absolute, no
// ".." element, at most max bytes of text without NUL bytes.
func (c *checker) relativePath(field, p string, max int) {
	if !c.text(field, p, max, true) {
		return
	}
	switch {
	case strings.HasPrefix(p, "/"):
		c.fail(field, "must be a relative path, got %s", quote(p))
	case slices.Contains(strings.Split(p, "/"), ".."):
		c.fail(field, "must not have a .. element, got %s", quote(p))
	}
}

// uniqueIDs reports a repeated instance id at its second position.
func (c *checker) uniqueIDs(field string, n int, id func(int) string) {
	seen := make(map[string]bool, n)
	for i := range n {
		if s := id(i); seen[s] {
			c.fail(index(field, i), "duplicate instance id %s", quote(s))
		} else {
			seen[s] = true
		}
	}
}

func (c *checker) count(field string, n, max int) bool {
	if n > max {
		c.fail(field, "must have at most %d entries, got %d", max, n)
		return false
	}
	return true
}

func index(field string, i int) string { return field + "[" + strconv.Itoa(i) + "]" }
