package planner

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/service"
)

// TestPlannerRefusesJobsReachingOut runs the planner on the local cloud with jobs whose
// parameters try to point a fetch at the stack's secrets bucket or a path or key outside
// the login directory: each is dead-lettered with the reason and no FleetPlanned is
// published, so no stage downstream presigns or runs anything for it.
func TestPlannerRefusesJobsReachingOut(t *testing.T) {
	s := cloudtest.NewStack(t, cloudtest.NewCloud(t, localcloud.Options{}))
	secrets := s.Topology.SecretsBucketName()
	tools := s.Topology.Prefix + "-tools"

	ops := opsconfig.Default()
	anything := opsconfig.Param{Pattern: `.*`, MaxLen: 200}
	// "tools" is a valid recipe whose patterns are too loose: only the checks after
	// expansion stand between a parameter and the rest of the instance.
	ops.Recipes["tools"] = opsconfig.Recipe{
		Params:       map[string]opsconfig.Param{"dir": anything, "tool": anything},
		FetchBuckets: []string{tools},
		Steps: []opsconfig.Step{
			{Name: "tool", Fetch: &opsconfig.Fetch{Bucket: tools, Key: "tools/{{tool}}", Path: "{{dir}}/tool"}},
			{Name: "conf", Upload: &opsconfig.Upload{Path: "{{dir}}/tool.conf", Content: "x"}},
		},
	}
	if err := ops.Validate(); err != nil {
		t.Fatalf("recipe tools must be a valid config: %v", err)
	}
	// "legacy" lets a parameter name the fetch bucket: the config's validation refuses it,
	// so it can only come from code; the planner refuses its jobs all the same.
	legacy := ops.Recipes["tools"]
	legacy.Params = map[string]opsconfig.Param{"bucket": anything, "dir": anything, "tool": anything}
	legacy.Steps = slices.Clone(legacy.Steps)
	legacy.Steps[0].Fetch = &opsconfig.Fetch{Bucket: "{{bucket}}", Key: "keys/{{tool}}", Path: "{{dir}}/tool"}
	ops.Recipes["legacy"] = legacy
	if err := ops.Validate(); err == nil || !strings.Contains(err.Error(), "must name a bucket, not a parameter") {
		t.Fatalf("the config's validation must refuse recipe legacy, got %v", err)
	}

	plans := s.Subscribe(t, bus.FleetPlanned)
	s.Serve(t, func(ctx context.Context) error {
		return Run(ctx, Config{Base: service.Base{Prefix: s.Topology.Prefix}}, s.Deps(ops))
	})

	job := func(id, recipe string, params map[string]string) events.JobSubmitted {
		j := demoJob()
		j.Header = events.NewHeader(id, "corr-"+id, time.Now())
		j.Recipe, j.Params = recipe, params
		return j
	}
	bad := map[string]struct {
		job    events.JobSubmitted
		reason string
	}{
		"reach-secrets": {job("reach-secrets", "legacy", map[string]string{"bucket": secrets, "dir": "bin", "tool": "sortie-dev.pem"}),
			`fetch from s3://` + secrets + `: the stack's secrets bucket`},
		"reach-unlisted": {job("reach-unlisted", "legacy", map[string]string{"bucket": s.Topology.BucketName(), "dir": "bin", "tool": "x"}),
			`fetch from s3://` + s.Topology.BucketName() + `: not one of the recipe's fetch_buckets`},
		"reach-key": {job("reach-key", "tools", map[string]string{"dir": "bin", "tool": "../../" + secrets + "/keys/sortie-dev.pem"}),
			`fetch key "tools/../../` + secrets + `/keys/sortie-dev.pem": must not have a .. element`},
		"reach-dotdot": {job("reach-dotdot", "tools", map[string]string{"dir": "../../root/.ssh", "tool": "t.sh"}),
			`path "../../root/.ssh/tool": must not have a .. element`},
		"reach-absolute": {job("reach-absolute", "tools", map[string]string{"dir": "/etc/cron.d", "tool": "t.sh"}),
			`path "/etc/cron.d/tool": must be relative`},
		"reach-home": {job("reach-home", "tools", map[string]string{"dir": "~root", "tool": "t.sh"}),
			`path "~root/tool": must not start with ~`},
	}
	for _, id := range slices.Sorted(maps.Keys(bad)) {
		s.Publish(t, bad[id].job)
	}
	s.Publish(t, job("reach-none", "tools", map[string]string{"dir": "bin", "tool": "t.sh"}))

	dlq := bus.DLQName(s.Topology.QueueName(bus.Planner, bus.JobSubmitted))
	got := cloudtest.DeadLetters(t, s.SQS, dlq, 30*time.Second, slices.Collect(maps.Keys(bad))...)
	for id, b := range bad {
		ms := got[id]
		if len(ms) != 1 {
			t.Errorf("%s: in the DLQ %d times, want once", id, len(ms))
			continue
		}
		if !strings.Contains(ms[0].Reason, b.reason) {
			t.Errorf("%s: %s = %q, want it to contain %q", id, bus.AttrError, ms[0].Reason, b.reason)
		}
	}
	// The good job, published last, is planned; by then every bad one had its turn.
	planned := cloudtest.Collect(t, s.SQS, plans, 30*time.Second, cloudtest.HasAll(1, "reach-none"))
	if len(planned["reach-none"]) != 1 {
		t.Errorf("the job within bounds: %d FleetPlanned, want 1", len(planned["reach-none"]))
	}
	for id := range planned {
		if _, isBad := bad[id]; isBad {
			t.Errorf("FleetPlanned published for %s", id)
		}
	}
}
