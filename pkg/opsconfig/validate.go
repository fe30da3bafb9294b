package opsconfig

import (
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	"github.com/sortie-fleet/sortie/pkg/sizing"
)

// ErrInvalid is wrapped by every problem Validate reports.
var ErrInvalid = errors.New("invalid ops config")

// FieldError is one problem at one place in the config, e.g.
// "templates.batch.max_instances: must be ≥ min_instances (2), got 1".
type FieldError struct {
	Path   string
	Reason string
}

func (e *FieldError) Error() string { return e.Path + ": " + e.Reason }

// Unwrap makes errors.Is(err, ErrInvalid) hold.
func (e *FieldError) Unwrap() error { return ErrInvalid }

// MaxInstances is the largest max_instances a template may set.
const MaxInstances = 1000

var (
	nameRe         = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
	amiRe          = regexp.MustCompile(`^ami-[0-9a-f]{8,17}$`)
	subnetRe       = regexp.MustCompile(`^subnet-[0-9a-f]{8,17}$`)
	securityRe     = regexp.MustCompile(`^sg-[0-9a-f]{8,17}$`)
	instanceTypeRe = regexp.MustCompile(`^[a-z][a-z0-9-]*\.[a-z0-9-]+$`)
	userRe         = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
	iamNameRe      = regexp.MustCompile(`^[\w+=,.@-]{1,128}$`)
	keyNameRe      = regexp.MustCompile(`^[\w+=,.@ :/-]{1,255}$`)
	bucketRe       = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)
)

type problems []error

func (p *problems) add(path, format string, args ...any) {
	*p = append(*p, &FieldError{Path: path, Reason: fmt.Sprintf(format, args...)})
}

// Validate reports every problem in c at once (errors.Join of *FieldError), or nil.
func (c *Config) Validate() error {
	var p problems
	for _, name := range slices.Sorted(maps.Keys(c.Templates)) {
		c.Templates[name].validate(&p, "templates."+name, name)
	}
	for _, name := range slices.Sorted(maps.Keys(c.Profiles)) {
		c.Profiles[name].validate(&p, "profiles."+name, name)
	}
	for _, name := range slices.Sorted(maps.Keys(c.Recipes)) {
		c.Recipes[name].validate(&p, "recipes."+name, name)
	}
	c.Caps.validate(&p, c.Templates)
	c.Learning.validate(&p)
	return errors.Join(p...)
}

func checkName(p *problems, path, name string) {
	if !nameRe.MatchString(name) {
		p.add(path, "name %q must match %s", name, nameRe)
	}
}

func (t Template) validate(p *problems, path, name string) {
	checkName(p, path, name)
	if !amiRe.MatchString(t.AMI) {
		p.add(path+".ami", "must match %s, got %q", amiRe, t.AMI)
	}
	if len(t.InstanceTypes) == 0 {
		p.add(path+".instance_types", "must list at least one instance type")
	}
	for i, it := range t.InstanceTypes {
		if !instanceTypeRe.MatchString(it) {
			p.add(fmt.Sprintf("%s.instance_types[%d]", path, i), "must be an instance type such as m3.medium, got %q", it)
		}
		if slices.Index(t.InstanceTypes, it) < i {
			p.add(fmt.Sprintf("%s.instance_types[%d]", path, i), "duplicate %q", it)
		}
	}
	checkList(p, path+".subnets", t.Subnets, subnetRe)
	checkList(p, path+".security_groups", t.SecurityGroups, securityRe)
	if !iamNameRe.MatchString(t.InstanceProfile) {
		p.add(path+".instance_profile", "must be an instance profile name matching %s, got %q", iamNameRe, t.InstanceProfile)
	}
	if !keyNameRe.MatchString(t.KeyName) {
		p.add(path+".key_name", "must be a key pair name matching %s, got %q", keyNameRe, t.KeyName)
	}
	if !userRe.MatchString(t.User) {
		p.add(path+".user", "must be a login name matching %s, got %q", userRe, t.User)
	}
	if t.HostKeys != HostKeysDerived && t.HostKeys != HostKeysInstance {
		p.add(path+".host_keys", "must be %s or %s, got %q", HostKeysDerived, HostKeysInstance, t.HostKeys)
	}
	if t.SSHAddress != AddressPrivate && t.SSHAddress != AddressPublic {
		p.add(path+".ssh_address", "must be %s or %s, got %q", AddressPrivate, AddressPublic, t.SSHAddress)
	}
	if t.MinInstances < 1 {
		p.add(path+".min_instances", "must be ≥ 1, got %d", t.MinInstances)
	}
	switch {
	case t.MaxInstances < t.MinInstances:
		p.add(path+".max_instances", "must be ≥ min_instances (%d), got %d", t.MinInstances, t.MaxInstances)
	case t.MaxInstances < 1:
		p.add(path+".max_instances", "must be ≥ 1, got %d", t.MaxInstances)
	case t.MaxInstances > MaxInstances:
		p.add(path+".max_instances", "must be ≤ %d, got %d", MaxInstances, t.MaxInstances)
	}
	if t.TTL <= 0 {
		p.add(path+".ttl", "must be a positive duration such as \"2h\", got %s", t.TTL.Std())
	}
	if s := t.Spot; s != nil {
		if !(s.MaxPrice >= 0 && s.MaxPrice <= sizing.MaxHourlyPrice) {
			p.add(path+".spot.max_price", "must be within [0, %g], got %v", sizing.MaxHourlyPrice, s.MaxPrice)
		}
		for i, f := range s.Fallback {
			fp := fmt.Sprintf("%s.spot.fallback[%d]", path, i)
			if f != FallbackTypes && f != FallbackOnDemand {
				p.add(fp, "must be %s or %s, got %q", FallbackTypes, FallbackOnDemand, f)
			} else if slices.Index(s.Fallback, f) < i {
				p.add(fp, "duplicate %q", f)
			}
		}
	}
}

func checkList(p *problems, path string, list []string, re *regexp.Regexp) {
	if len(list) == 0 {
		p.add(path, "must list at least one")
	}
	for i, v := range list {
		if !re.MatchString(v) {
			p.add(fmt.Sprintf("%s[%d]", path, i), "must match %s, got %q", re, v)
		}
	}
}

func (pr Profile) validate(p *problems, path, name string) {
	checkName(p, path, name)
	if len(pr) == 0 {
		p.add(path, "must give the capacity of at least one instance type")
	}
	for _, it := range slices.Sorted(maps.Keys(pr)) {
		c, ip := pr[it], path+"."+it
		if !instanceTypeRe.MatchString(it) {
			p.add(ip, "must be an instance type such as m3.medium, got %q", it)
		}
		if !(c.ItemsPerMinute >= sizing.MinItemsPerMinute && c.ItemsPerMinute <= sizing.MaxItemsPerMinute) {
			p.add(ip+".items_per_minute", "must be within [%g, %g], got %v", sizing.MinItemsPerMinute, sizing.MaxItemsPerMinute, c.ItemsPerMinute)
		}
		if !(c.BootSeconds >= 0 && c.BootSeconds <= sizing.MaxBootSeconds) {
			p.add(ip+".boot_seconds", "must be within [0, %g], got %v", sizing.MaxBootSeconds, c.BootSeconds)
		}
		if !(c.HourlyPrice >= 0 && c.HourlyPrice <= sizing.MaxHourlyPrice) {
			p.add(ip+".hourly_price", "must be within [0, %g], got %v", sizing.MaxHourlyPrice, c.HourlyPrice)
		}
		if !(c.SpotPrice >= 0 && c.SpotPrice <= sizing.MaxHourlyPrice) {
			p.add(ip+".spot_price", "must be within [0, %g], got %v", sizing.MaxHourlyPrice, c.SpotPrice)
		}
	}
}

func (r Recipe) validate(p *problems, path, name string) {
	checkName(p, path, name)
	for _, pn := range slices.Sorted(maps.Keys(r.Params)) {
		r.Params[pn].validate(p, path+".params."+pn, pn)
	}
	for i, b := range r.FetchBuckets {
		bp := fmt.Sprintf("%s.fetch_buckets[%d]", path, i)
		if !bucketRe.MatchString(b) {
			p.add(bp, "must be a bucket name matching %s, got %q", bucketRe, b)
		} else if slices.Index(r.FetchBuckets, b) < i {
			p.add(bp, "duplicate %q", b)
		}
	}
	if len(r.Steps) == 0 {
		p.add(path+".steps", "must list at least one step")
	}
	seen := map[string]int{}
	for i, s := range r.Steps {
		sp := fmt.Sprintf("%s.steps[%d]", path, i)
		if !nameRe.MatchString(s.Name) {
			p.add(sp+".name", "must match %s, got %q", nameRe, s.Name)
		} else if j, dup := seen[s.Name]; dup {
			p.add(sp+".name", "duplicate step name %q (also steps[%d])", s.Name, j)
		} else {
			seen[s.Name] = i
		}
		refs := func(field, v string) {
			names, err := Refs(v)
			if err != nil {
				p.add(sp+"."+field, "%v", err)
				return
			}
			for _, n := range names {
				if _, ok := r.Params[n]; !ok {
					p.add(sp+"."+field, "unknown parameter %q in %q", n, v)
				}
			}
		}
		// filePath checks the literal parts of a path (or key): each parameter reference
		// stands for a harmless name here; the expanded value is checked again at render.
		filePath := func(field, v string) {
			refs(field, v)
			switch err := CheckRelPath(literal(v)); {
			case v == "":
				p.add(sp+"."+field, "must not be empty")
			case err != nil:
				p.add(sp+"."+field, "%v, got %q", err, v)
			}
		}
		argv := func(field string, argv []string) {
			if len(argv) == 0 || argv[0] == "" {
				p.add(sp+"."+field, "must name a program")
			}
			for j, a := range argv {
				if strings.ContainsRune(a, 0) {
					p.add(fmt.Sprintf("%s.%s[%d]", sp, field, j), "must not contain NUL")
				}
				refs(fmt.Sprintf("%s[%d]", field, j), a)
			}
		}
		switch s.Kind() {
		case KindFetch:
			f := s.Fetch
			switch names, _ := Refs(f.Bucket); {
			case f.Bucket == "":
				p.add(sp+".fetch.bucket", "must not be empty")
			case len(names) > 0 || strings.Contains(f.Bucket, "{{"):
				p.add(sp+".fetch.bucket", "must name a bucket, not a parameter: list the buckets the recipe may fetch from in fetch_buckets, got %q", f.Bucket)
			case !r.MayFetchFrom(f.Bucket):
				p.add(sp+".fetch.bucket", "%q is not in the recipe's fetch_buckets %v", f.Bucket, r.FetchBuckets)
			}
			filePath("fetch.key", f.Key)
			filePath("fetch.path", f.Path)
		case KindUpload:
			filePath("upload.path", s.Upload.Path)
			refs("upload.content", s.Upload.Content)
		case KindRun:
			argv("run.argv", s.Run.Argv)
			switch s.Run.Rerun {
			case "", RerunSafe, RerunUnsafe:
			default:
				p.add(sp+".run.rerun", "must be %s or %s (default %s), got %q", RerunSafe, RerunUnsafe, RerunUnsafe, s.Run.Rerun)
			}
		case KindStart:
			argv("start.argv", s.Start.Argv)
			if s.Start.Log != "" {
				filePath("start.log", s.Start.Log)
			}
			if pr := s.Start.Progress; pr != nil {
				if pr.Signal != ProgressLog && pr.Signal != ProgressTasks {
					p.add(sp+".start.progress.signal", "must be %s (the log must grow) or %s (the reported tasks must rise), got %q", ProgressLog, ProgressTasks, pr.Signal)
				}
				if pr.StallWindow <= 0 {
					p.add(sp+".start.progress.stall_window", "must be a positive duration such as \"5m\", got %s", pr.StallWindow.Std())
				}
			}
		default:
			p.add(sp, "must have exactly one of fetch, upload, run, start")
		}
	}
}

// literal is s with every parameter reference replaced by a plain name, for checking the
// parts of a path an ops author wrote (an unreadable reference is reported by refs).
func literal(s string) string {
	out, err := scan(s, func(string) (string, error) { return "p", nil })
	if err != nil {
		return s
	}
	return out
}

// CheckStack reports every recipe that lists the stack's secrets bucket in fetch_buckets
// (errors.Join of *FieldError), or nil: no recipe may ever fetch from it. Services call it
// with bus.Topology.SecretsBucketName once they know their prefix.
func (c *Config) CheckStack(secretsBucket string) error {
	var p problems
	for _, name := range slices.Sorted(maps.Keys(c.Recipes)) {
		for i, b := range c.Recipes[name].FetchBuckets {
			if b == secretsBucket {
				p.add(fmt.Sprintf("recipes.%s.fetch_buckets[%d]", name, i), "%q is the stack's secrets bucket: no recipe may fetch from it", b)
			}
		}
	}
	return errors.Join(p...)
}

func (pa Param) validate(p *problems, path, name string) {
	if !paramNameRe.MatchString(name) {
		p.add(path, "parameter name %q must match %s", name, paramNameRe)
	}
	if pa.MaxLen < 0 {
		p.add(path+".max_len", "must be ≥ 0, got %d", pa.MaxLen)
	}
	if pa.Pattern == "" {
		p.add(path+".pattern", "must not be empty: every parameter states what values it accepts")
		return
	}
	re, err := pa.Regexp()
	if err != nil {
		p.add(path+".pattern", "%v", err)
		return
	}
	if pa.Required && pa.Default != "" {
		p.add(path+".default", "a required parameter takes no default")
	}
	if pa.Default != "" {
		if !re.MatchString(pa.Default) {
			p.add(path+".default", "%q does not match pattern %s", pa.Default, pa.Pattern)
		}
		if len(pa.Default) > pa.Limit() {
			p.add(path+".default", "longer than max_len %d", pa.Limit())
		}
		if strings.ContainsAny(pa.Default, "\x00\n\r") {
			p.add(path+".default", "must not contain NUL or line breaks")
		}
	}
}
