package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/learn"
	"github.com/sortie-fleet/sortie/pkg/ledger"
)

const profilesOps = `
templates:
  t:
    ami: ami-0123456789abcdef0
    instance_types: [m3.medium, c5.large]
    subnets: [subnet-0123456789abcdef0]
    security_groups: [sg-0123456789abcdef0]
    instance_profile: p
    key_name: k
    min_instances: 1
    max_instances: 10
    ttl: 1h
profiles:
  batch:
    m3.medium: {items_per_minute: 10, boot_seconds: 60, hourly_price: 0.067}
    c5.large: {items_per_minute: 20, boot_seconds: 45, hourly_price: 0.17}
  files:
    m3.medium: {items_per_minute: 10, boot_seconds: 60, hourly_price: 0.067}
recipes:
  r:
    steps:
      - name: x
        run: {argv: ["true"]}
learning: {min_samples: 3, alpha: 0.5, spread_factor: 1}
`

// TestProfiles: `sortie profiles` against a stack whose ledger holds learned rates: the
// table and --json give, for every (profile, type) of the ops config, the configured rate,
// the learned one with its spread and samples, and which the planner uses (learned once
// min_samples is reached, at mean − k·spread); a learned pair the config lacks is listed
// as such.
func TestProfiles(t *testing.T) {
	cloud := useCloud(t)
	prefix := "pr" + strings.ToLower(randomHex(3))
	if out, err := runCLI(t, "--prefix", prefix, "profiles"); err == nil || !strings.Contains(err.Error(), `no Sortie stack "`+prefix+`"`) {
		t.Fatalf("profiles without a stack = %q, %v; want no Sortie stack", out, err)
	}
	if out, err := runCLI(t, "--prefix", prefix, "infra", "up"); err != nil {
		t.Fatalf("infra up: %v\n%s", err, out)
	}
	opsFile := filepath.Join(t.TempDir(), "ops.yaml")
	if err := os.WriteFile(opsFile, []byte(profilesOps), 0o600); err != nil {
		t.Fatal(err)
	}
	l := ledger.ForStack(awsx.ForEndpoint(cloud.URL()), bus.Topology{Prefix: prefix})
	record := func(profile, typ string, rates ...float64) {
		t.Helper()
		for i, r := range rates {
			if _, err := l.Learn(t.Context(), fmt.Sprintf("%s-%s-%d", profile, typ, i), learn.Sample{Profile: profile, InstanceType: typ, Rate: r}, 0.5); err != nil {
				t.Fatal(err)
			}
		}
	}
	record("batch", "m3.medium", 6, 8, 8)
	record("batch", "c5.large", 25)
	record("gone", "m3.medium", 5)
	// 6 → mean 6; 8: d 2, mean 7, var 0.5·(0 + 0.5·4) = 1; 8: d 1, mean 7.5, var 0.5·(1 + 0.5·1) = 0.75
	mean, spread := 7.5, math.Sqrt(0.75)

	out, err := runCLI(t, "--prefix", prefix, "profiles", "--config", opsFile)
	if err != nil {
		t.Fatalf("profiles: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 6 || lines[0] != "learning: the learned rate after 3 samples, at mean − 1 × spread (alpha 0.5)" {
		t.Fatalf("profiles printed:\n%s\nwant the policy, a header and 4 rows", out)
	}
	wantRows := []string{
		`^PROFILE +TYPE +CONFIGURED/MIN +LEARNED/MIN +SAMPLES +UPDATED +PLANNER USES$`,
		`^batch +c5.large +20 +25 ± 0 +1 +\d{4}-\d\d-\d\dT\S+ +configured 20$`,
		fmt.Sprintf(`^batch +m3.medium +10 +7.5 ± 0.87 +3 +\d{4}-\d\d-\d\dT\S+ +learned %s$`, regexp.QuoteMeta(rate(mean-spread))),
		`^files +m3.medium +10 +- +0 +- +configured 10$`,
		`^gone +m3.medium +- +5 ± 0 +1 +\S+ +- \(not in the ops config\)$`,
	}
	for i, re := range wantRows {
		if !regexp.MustCompile(re).MatchString(lines[i+1]) {
			t.Errorf("line %d = %q, want it to match %s", i+1, lines[i+1], re)
		}
	}

	out, err = runCLI(t, "--prefix", prefix, "profiles", "--config", opsFile, "--json")
	if err != nil {
		t.Fatalf("profiles --json: %v\n%s", err, out)
	}
	var rows []ProfileRate
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("profiles --json does not parse: %v\n%s", err, out)
	}
	if len(rows) != 4 {
		t.Fatalf("%d rows, want 4: %s", len(rows), out)
	}
	m3 := rows[1]
	if m3.Profile != "batch" || m3.InstanceType != "m3.medium" || m3.Configured == nil || *m3.Configured != 10 ||
		m3.Learned == nil || m3.Learned.Samples != 3 || math.Abs(m3.Learned.Mean-mean) > 1e-9 || math.Abs(m3.Learned.Spread-spread) > 1e-9 ||
		m3.Learned.UpdatedAt.IsZero() || m3.Uses != "learned" || math.Abs(m3.Rate-(mean-spread)) > 1e-9 ||
		!strings.Contains(m3.Source, "learned: 7.5 ± 0.87/min over 3 samples, planned at mean − 1σ") {
		t.Errorf("batch on m3.medium: %+v (learned %+v)", m3, m3.Learned)
	}
	if c5 := rows[0]; c5.Uses != "configured" || c5.Rate != 20 || c5.Learned == nil || c5.Learned.Samples != 1 || !strings.Contains(c5.Source, "configured; 1 of 3 samples learned") {
		t.Errorf("batch on c5.large: %+v", c5)
	}
	if files := rows[2]; files.Uses != "configured" || files.Learned != nil || files.Rate != 10 {
		t.Errorf("files on m3.medium: %+v", files)
	}
	if gone := rows[3]; gone.Profile != "gone" || gone.Configured != nil || gone.Uses != "" || gone.Learned == nil {
		t.Errorf("gone on m3.medium: %+v", gone)
	}
	if !strings.Contains(out, `"configured_items_per_minute": null`) {
		t.Errorf("--json should give a null configured rate for the pair the config lacks:\n%s", out)
	}

	// An ops config that does not load is said, not ignored.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte(strings.Replace(profilesOps, "alpha: 0.5", "alpha: 2", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := runCLI(t, "--prefix", prefix, "profiles", "--config", bad); err == nil || !strings.Contains(err.Error(), "learning.alpha: must be within (0, 1]") {
		t.Fatalf("profiles with a bad config = %q, %v; want the config's problem", out, err)
	}
}
