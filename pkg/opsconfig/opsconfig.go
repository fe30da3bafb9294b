// Package opsconfig loads the ops-owned YAML configuration: fleet templates, capacity profiles and recipes.
package opsconfig

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/sizing"
)

// DefaultUser is the SSH login user of a template that names none.
const DefaultUser = "sortie"

//go:embed default.yaml
var defaultYAML []byte

// Config is the whole ops configuration. Jobs refer to its entries by name only.
type Config struct {
	Templates map[string]Template `yaml:"templates"`
	Profiles  map[string]Profile  `yaml:"profiles"`
	Recipes   map[string]Recipe   `yaml:"recipes"`
	Caps      Caps                `yaml:"caps"`
	Learning  Learning            `yaml:"learning"`
}

// Template is a fleet template: everything about the instances a job may not choose itself.
type Template struct {
	AMI             string   `yaml:"ami"`
	InstanceTypes   []string `yaml:"instance_types"`
	Subnets         []string `yaml:"subnets"`
	SecurityGroups  []string `yaml:"security_groups"`
	InstanceProfile string   `yaml:"instance_profile"`
	KeyName         string   `yaml:"key_name"`
	User            string   `yaml:"user"` // SSH login user, DefaultUser when empty in the file
	MinInstances    int      `yaml:"min_instances"`
	MaxInstances    int      `yaml:"max_instances"`
	TTL             Duration `yaml:"ttl"`
	// HostKeys says where the instances' SSH host keys come from: HostKeysDerived (the
	// default) or HostKeysInstance.
	HostKeys string `yaml:"host_keys"`
	// SSHAddress says which of EC2's addresses Sortie connects to: AddressPrivate (the
	// default) or AddressPublic.
	SSHAddress string `yaml:"ssh_address"`
	// Spot, when set, launches the template's fleets as spot instances, falling back as
	// it says when spot capacity is short. Unset: on demand.
	Spot *Spot `yaml:"spot"`
}

// Spot is a template's use of the spot market.
type Spot struct {
	// MaxPrice is the most to pay per instance-hour, in dollars; 0 (unset) gives none, which
	// EC2 caps at the on-demand price.
	MaxPrice float64 `yaml:"max_price"`
	// Fallback lists, in order, what to try when a spot launch of the planned type finds no
	// capacity (InsufficientInstanceCapacity, SpotMaxPriceTooLow,
	// MaxSpotInstanceCountExceeded): FallbackTypes, the template's other types as spot;
	// FallbackOnDemand, every type on demand. Empty: the planned type as spot only.
	Fallback []string `yaml:"fallback"`
}

// Spot fallbacks (Spot.Fallback).
const (
	FallbackTypes    = "types"
	FallbackOnDemand = "on-demand"
)

// Falls reports whether the spot fallback lists f.
func (s *Spot) Falls(f string) bool { return s != nil && slices.Contains(s.Fallback, f) }

// Host key sources of a template (Template.HostKeys).
const (
	// HostKeysDerived: the provisioner derives one ed25519 host key per fleet (from
	// SORTIE_HOSTKEY_SECRET and the plan's nonce) and hands it to the instances in user data
	// (cloud-init ssh_keys), so the private key is readable wherever the user data is.
	HostKeysDerived = "derived"
	// HostKeysInstance: every instance generates its own host keys at first boot; Sortie
	// pins the public keys cloud-init prints to the console (GetConsoleOutput). No private
	// key leaves the instance; user data carries none.
	HostKeysInstance = "instance"
)

// SSH addresses of a template (Template.SSHAddress).
const (
	AddressPrivate = "private" // the instance's private IP, port 22
	AddressPublic  = "public"  // the instance's public IP, port 22
)

// InstanceHostKeys reports whether the template's instances generate their own host keys.
func (t Template) InstanceHostKeys() bool { return t.HostKeys == HostKeysInstance }

// PublicAddress reports whether Sortie connects to the template's instances' public IPs.
func (t Template) PublicAddress() bool { return t.SSHAddress == AddressPublic }

// Profile maps an instance type to its capacity for one workload profile.
type Profile map[string]Capacity

// Capacity is what one instance of a type does for a workload profile, and what it costs.
type Capacity struct {
	ItemsPerMinute float64 `yaml:"items_per_minute"`
	BootSeconds    float64 `yaml:"boot_seconds"`
	// HourlyPrice is the on-demand price in dollars an hour.
	HourlyPrice float64 `yaml:"hourly_price"`
	// SpotPrice is the price expected in the spot market, in dollars an hour; 0 (unset)
	// prices spot instances at HourlyPrice, which can only overstate their cost.
	SpotPrice float64 `yaml:"spot_price"`
}

// Price is the hourly price of an instance in market (events.MarketSpot or
// events.MarketOnDemand).
func (c Capacity) Price(market string) float64 {
	if market == events.MarketSpot && c.SpotPrice > 0 {
		return c.SpotPrice
	}
	return c.HourlyPrice
}

// Recipe is the ordered steps that bootstrap an instance, and the parameters a job may pass.
type Recipe struct {
	Params map[string]Param `yaml:"params"`
	// FetchBuckets lists the only buckets the recipe's fetch steps may download from. A
	// fetch step names one of them literally (no parameter); the stack's secrets bucket may
	// never be listed (Config.CheckStack).
	FetchBuckets []string `yaml:"fetch_buckets"`
	Steps        []Step   `yaml:"steps"`
}

// MayFetchFrom reports whether bucket is one of the recipe's FetchBuckets.
func (r Recipe) MayFetchFrom(bucket string) bool {
	return bucket != "" && slices.Contains(r.FetchBuckets, bucket)
}

// Param declares one recipe parameter. A value must match Pattern as a whole
// (the pattern is anchored automatically) and be at most Limit() bytes.
type Param struct {
	Pattern  string `yaml:"pattern"`
	Required bool   `yaml:"required"`
	Default  string `yaml:"default"`
	MaxLen   int    `yaml:"max_len"` // 0 means DefaultParamMaxLen
}

// Step is one recipe step; exactly one of Fetch, Upload, Run and Start is set.
// Strings noted below may reference parameters as {{name}}.
type Step struct {
	Name   string  `yaml:"name"`
	Fetch  *Fetch  `yaml:"fetch,omitempty"`
	Upload *Upload `yaml:"upload,omitempty"`
	Run    *Run    `yaml:"run,omitempty"`
	Start  *Start  `yaml:"start,omitempty"`
}

// Step kinds, as Step.Kind returns them.
const (
	KindFetch  = "fetch"
	KindUpload = "upload"
	KindRun    = "run"
	KindStart  = "start"
)

// Kind returns the step's kind, or "" unless exactly one kind is set.
func (s Step) Kind() string {
	var kinds []string
	if s.Fetch != nil {
		kinds = append(kinds, KindFetch)
	}
	if s.Upload != nil {
		kinds = append(kinds, KindUpload)
	}
	if s.Run != nil {
		kinds = append(kinds, KindRun)
	}
	if s.Start != nil {
		kinds = append(kinds, KindStart)
	}
	if len(kinds) != 1 {
		return ""
	}
	return kinds[0]
}

// Fetch downloads s3://Bucket/Key to Path on the instance (through a presigned URL).
// Bucket is literal and one of the recipe's FetchBuckets; Key and Path may reference
// parameters.
type Fetch struct {
	Bucket string   `yaml:"bucket"`
	Key    string   `yaml:"key"`
	Path   string   `yaml:"path"`
	Mode   FileMode `yaml:"mode"` // 0 means DefaultMode
}

// Upload writes Content to Path on the instance. Path and Content may reference parameters.
type Upload struct {
	Path    string   `yaml:"path"`
	Content string   `yaml:"content"`
	Mode    FileMode `yaml:"mode"` // 0 means DefaultMode
}

// Run runs Argv and waits for it. Every element may reference parameters.
type Run struct {
	Argv []string `yaml:"argv"`
	// Rerun says whether the command may run again on an instance whose connection dropped
	// while it ran: RerunSafe (it is idempotent, e.g. mkdir -p) or RerunUnsafe (the
	// default: the instance is reported failed instead). A command that never started is
	// always run on the new connection.
	Rerun string `yaml:"rerun,omitempty"`
}

// Values of Run.Rerun. Unsafe is the default because only the recipe's author knows
// whether a command is idempotent (an append, a counter, a migration are not), and a host
// reported failed is recoverable where a command silently run twice may not be.
const (
	RerunSafe   = "safe"
	RerunUnsafe = "unsafe"
)

// RerunSafe reports whether the run step declared itself safe to run again.
func (r Run) RerunSafe() bool { return r.Rerun == RerunSafe }

// Start runs Argv detached, its stdout in Log. Argv elements and Log may reference parameters.
type Start struct {
	Argv []string `yaml:"argv"`
	Log  string   `yaml:"log"` // empty: the recipe package's default under the step's state dir
	// Progress, when set, names the signal that the workload is making progress: the
	// monitor fails a job whose live workload shows none for the stall window, before its
	// deadline.
	Progress *Progress `yaml:"progress"`
}

// Progress is a start step's progress signal.
type Progress struct {
	// Signal is ProgressLog, the step's log must grow, or ProgressTasks, the job's count of
	// reported tasks (TaskReported, succeeded or failed) must rise.
	Signal string `yaml:"signal"`
	// StallWindow is how long the signal may stand still before the job fails.
	StallWindow Duration `yaml:"stall_window"`
}

// Progress signals (Progress.Signal).
const (
	ProgressLog   = "log"   // the step's log file grows
	ProgressTasks = "tasks" // the job's reported tasks rise
)

// DefaultMode is the mode of uploaded and fetched files whose step names none.
const DefaultMode FileMode = 0o600

// FileMode is a file's permission bits, written in YAML as octal digits as for chmod
// (0644, "0644", 0o644 or 644 all mean rw-r--r--).
type FileMode uint32

// UnmarshalYAML reads octal digits.
func (m *FileMode) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: mode must be octal digits such as 0644", n.Line)
	}
	s := strings.TrimPrefix(strings.TrimPrefix(n.Value, "0o"), "0O")
	v, err := strconv.ParseUint(s, 8, 32)
	if err != nil || v > 0o7777 {
		return fmt.Errorf("line %d: mode %q must be octal digits ≤ 7777 such as 0644", n.Line, n.Value)
	}
	*m = FileMode(v)
	return nil
}

// MarshalYAML writes octal digits.
func (m FileMode) MarshalYAML() (any, error) { return m.String(), nil }

// String returns the mode as chmod takes it, e.g. "0644".
func (m FileMode) String() string { return fmt.Sprintf("%04o", uint32(m)) }

// OrDefault returns m, or DefaultMode when m is 0.
func (m FileMode) OrDefault() FileMode {
	if m == 0 {
		return DefaultMode
	}
	return m
}

// Duration is a time.Duration written in YAML as a Go duration string ("30m", "2h").
type Duration time.Duration

// UnmarshalYAML reads a duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: duration must be a string such as \"2h\"", n.Line)
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: duration %q must be a string such as \"2h\" or \"30m\"", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes a duration string.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// Std returns d as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// UnknownNameError says a job named a template, profile or recipe the config lacks.
// Its message is the reason a service puts on the dead-lettered job.
type UnknownNameError struct {
	Kind string // "template", "profile" or "recipe"
	Name string
}

func (e *UnknownNameError) Error() string { return fmt.Sprintf("unknown %s %q", e.Kind, e.Name) }

// Load reads and validates the config file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("loading ops config: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("loading ops config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes one YAML document strictly (unknown fields are errors), applies defaults
// and validates the result.
func Parse(data []byte) (*Config, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var c Config
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("parsing ops config: empty document")
		}
		return nil, fmt.Errorf("parsing ops config: %w", err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("parsing ops config: more than one YAML document")
	}
	c.applyDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Default returns the embedded configuration `sortie dev` runs with; each call returns a new copy.
func Default() *Config {
	c, err := Parse(defaultYAML)
	if err != nil {
		panic("opsconfig: embedded default.yaml is invalid: " + err.Error())
	}
	return c
}

// DefaultYAML returns the embedded default configuration's source.
func DefaultYAML() []byte { return bytes.Clone(defaultYAML) }

func (c *Config) applyDefaults() {
	for name, t := range c.Templates {
		if t.User == "" {
			t.User = DefaultUser
		}
		if t.HostKeys == "" {
			t.HostKeys = HostKeysDerived
		}
		if t.SSHAddress == "" {
			t.SSHAddress = AddressPrivate
		}
		c.Templates[name] = t
	}
}

// Template returns the named template, or an *UnknownNameError.
func (c *Config) Template(name string) (Template, error) {
	t, ok := c.Templates[name]
	if !ok {
		return Template{}, &UnknownNameError{Kind: "template", Name: name}
	}
	return t, nil
}

// Profile returns the named capacity profile, or an *UnknownNameError.
func (c *Config) Profile(name string) (Profile, error) {
	p, ok := c.Profiles[name]
	if !ok {
		return nil, &UnknownNameError{Kind: "profile", Name: name}
	}
	return p, nil
}

// Recipe returns the named recipe, or an *UnknownNameError.
func (c *Config) Recipe(name string) (Recipe, error) {
	r, ok := c.Recipes[name]
	if !ok {
		return Recipe{}, &UnknownNameError{Kind: "recipe", Name: name}
	}
	return r, nil
}

// Candidates returns the sizing candidates for a job: the template's instance types, in the
// template's order, that the profile has a capacity for, priced in the market the template
// launches in (spot for a spot template).
func (c *Config) Candidates(template, profile string) ([]sizing.Candidate, error) {
	t, err := c.Template(template)
	if err != nil {
		return nil, err
	}
	p, err := c.Profile(profile)
	if err != nil {
		return nil, err
	}
	market := events.MarketOnDemand
	if t.Spot != nil {
		market = events.MarketSpot
	}
	var out []sizing.Candidate
	for _, it := range t.InstanceTypes {
		cp, ok := p[it]
		if !ok {
			continue
		}
		out = append(out, sizing.Candidate{
			InstanceType:   it,
			ItemsPerMinute: cp.ItemsPerMinute,
			BootSeconds:    cp.BootSeconds,
			HourlyPrice:    cp.Price(market),
		})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("template %q and profile %q share no instance type (template: %s)",
			template, profile, strings.Join(t.InstanceTypes, ", "))
	}
	return out, nil
}
