package service_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/service"
	"github.com/sortie-fleet/sortie/services/planner"
)

// withTemplate is the default ops config plus a template "extra" with the given AMI.
func withTemplate(ami string) []byte {
	extra := "templates:\n  extra:\n    ami: " + ami + `
    instance_types: [m3.medium]
    subnets: [subnet-0123456789abcdef0]
    security_groups: [sg-0123456789abcdef0]
    instance_profile: sortie-worker
    key_name: sortie-dev
    min_instances: 1
    max_instances: 4
    ttl: 10m
`
	return bytes.Replace(opsconfig.DefaultYAML(), []byte("templates:\n"), []byte(extra), 1)
}

// TestOpsConfigDelivery runs the planner under service.Run with its ops config in S3 and
// in SSM Parameter Store on the local cloud, reloaded every 100 ms: a job naming a
// template the config lacks is dead-lettered; a bad config pushed while it runs is
// logged with why and the old one kept (the job is still dead-lettered); a good one
// replaces it without a restart (the same job is then planned). /readyz and /metrics
// tell the same story.
func TestOpsConfigDelivery(t *testing.T) {
	cloud := cloudtest.NewCloud(t, localcloud.Options{})
	for _, source := range []string{"s3", "ssm"} {
		t.Run(source, func(t *testing.T) {
			s := cloudtest.NewStack(t, cloud)
			var location string
			var push func(data []byte)
			switch source {
			case "s3":
				bucket := s.Topology.Prefix + "-config"
				if _, err := s.S3.CreateBucket(t.Context(), &s3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
					t.Fatal(err)
				}
				location = "s3://" + bucket + "/ops/ops.yaml"
				push = func(data []byte) {
					t.Helper()
					if _, err := s.S3.PutObject(t.Context(), &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String("ops/ops.yaml"), Body: bytes.NewReader(data)}); err != nil {
						t.Fatal(err)
					}
				}
			case "ssm":
				client := ssm.NewFromConfig(s.AWS)
				name := "/" + s.Topology.Prefix + "/ops"
				location = "ssm:" + name
				push = func(data []byte) {
					t.Helper()
					if _, err := client.PutParameter(t.Context(), &ssm.PutParameterInput{Name: aws.String(name), Value: aws.String(string(data)),
						Type: ssmtypes.ParameterTypeSecureString, Overwrite: aws.Bool(true)}); err != nil {
						t.Fatal(err)
					}
				}
			}
			push(opsconfig.DefaultYAML())

			addr := cloudtest.FreeAddr(t)
			base := service.Base{Prefix: s.Topology.Prefix, OpsConfig: location, ConfigReload: 100 * time.Millisecond, HTTPAddr: addr}
			if err := base.Validate(); err != nil {
				t.Fatalf("Validate(%s) = %v, want nil: S3 and SSM locations are not files", location, err)
			}
			plans := s.Subscribe(t, bus.FleetPlanned)
			s.Serve(t, func(ctx context.Context) error {
				return service.Run(ctx, bus.Planner, base, s.AWS, s.Logger, func(ctx context.Context, d service.Deps) error {
					return planner.Run(ctx, planner.Config{Base: base}, d)
				})
			})
			url := "http://" + addr
			cloudtest.Eventually(t, 30*time.Second, func() error { return ready(t, url) })

			dlq := bus.DLQName(s.Topology.QueueName(bus.Planner, bus.JobSubmitted))
			job := func(id string) events.JobSubmitted {
				return events.JobSubmitted{
					Header: events.NewHeader(id, "corr-"+id, time.Now()), Template: "extra", Profile: "demo-fast",
					Recipe: "demo-worker", Work: events.WorkSource{Count: 20}, DeadlineSeconds: 60,
					Params: map[string]string{"bucket": "sortie-demo", "queue": "sortie-demo-work"},
				}
			}
			expectDLQ := func(id string) {
				t.Helper()
				s.Publish(t, job(id))
				got := cloudtest.DeadLetters(t, s.SQS, dlq, 30*time.Second, id)
				if r := got[id][0].Reason; !strings.Contains(r, `unknown template "extra"`) {
					t.Errorf("%s dead-lettered with %q, want unknown template", id, r)
				}
			}
			expectDLQ("extra-1")

			// A bad config: the extra template with an AMI id that is not one.
			push(withTemplate("not-an-ami"))
			cloudtest.Eventually(t, 30*time.Second, func() error {
				if !strings.Contains(s.Logs.String(), "ops config invalid: keeping the one in force") {
					return errNotYet("no log line saying the bad config was rejected")
				}
				return nil
			})
			logs := s.Logs.String()
			if !strings.Contains(logs, "templates.extra.ami") || !strings.Contains(logs, location) {
				t.Errorf("the rejection does not say why (templates.extra.ami) and where (%s):\n%s", location, logs)
			}
			expectDLQ("extra-2") // the old config is still in force
			if err := ready(t, url); err != nil {
				t.Errorf("a rejected reload made the service unready: %v", err)
			}
			m, err := cloudtest.Scrape(t, url)
			if err != nil {
				t.Fatal(err)
			}
			if n := m.Value("sortie_config_reloads_total", "result", "rejected", "service", bus.Planner); n < 1 {
				t.Errorf("sortie_config_reloads_total{result=rejected} = %v, want >= 1", n)
			}

			// A good one replaces it without a restart.
			push(withTemplate("ami-0fedcba9876543210"))
			cloudtest.Eventually(t, 30*time.Second, func() error {
				if !strings.Contains(s.Logs.String(), "ops config reloaded") {
					return errNotYet("no log line saying the good config was applied")
				}
				return nil
			})
			s.Publish(t, job("extra-3"))
			plan := cloudtest.NextEvent(t, s.SQS, plans, "extra-3", 30*time.Second, events.DecodeFleetPlanned)
			if plan.Template != "extra" || plan.Count < 1 {
				t.Errorf("extra-3 planned %+v", plan)
			}
			// The handler counts once it has published: poll.
			cloudtest.Eventually(t, 30*time.Second, func() error {
				m, err := cloudtest.Scrape(t, url)
				if err != nil {
					return err
				}
				var errs []error
				for _, c := range []struct {
					name   string
					labels []string
					want   float64
				}{
					{"sortie_config_reloads_total", []string{"result", "applied"}, 2}, // start-up and the reload
					{"sortie_messages_total", []string{"event_type", bus.JobSubmitted, "outcome", "dead_lettered"}, 2},
					{"sortie_messages_total", []string{"event_type", bus.JobSubmitted, "outcome", "handled"}, 1},
					{"sortie_fleets_planned_total", nil, 1},
				} {
					if n := m.Value(c.name, c.labels...); n != c.want {
						errs = append(errs, fmt.Errorf("%s%v = %v, want %v", c.name, c.labels, n, c.want))
					}
				}
				return errors.Join(errs...)
			})
		})
	}
}

type errNotYet string

func (e errNotYet) Error() string { return string(e) }

func ready(t *testing.T, url string) error {
	code, body := cloudtest.Get(t, url+"/readyz")
	if code != http.StatusOK {
		return errNotYet("readyz: " + http.StatusText(code) + ": " + body)
	}
	return nil
}

// TestRunRefusesBadOpsConfig: a service whose ops config is missing or invalid at
// start-up does not start: Run returns an error naming the location and why, runs
// nothing, and leaves its health port closed.
func TestRunRefusesBadOpsConfig(t *testing.T) {
	cloud := cloudtest.NewCloud(t, localcloud.Options{})
	s := cloudtest.NewStack(t, cloud)
	bucket := s.Topology.Prefix + "-config"
	if _, err := s.S3.CreateBucket(t.Context(), &s3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.S3.PutObject(t.Context(), &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String("bad.yaml"),
		Body: bytes.NewReader(withTemplate("not-an-ami"))}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		location string
		want     []string
	}{
		{"missing SSM parameter", "ssm:/" + s.Topology.Prefix + "/none", []string{"ssm:/" + s.Topology.Prefix + "/none", "ParameterNotFound"}},
		{"missing S3 object", "s3://" + bucket + "/none.yaml", []string{"s3://" + bucket + "/none.yaml"}},
		{"invalid config", "s3://" + bucket + "/bad.yaml", []string{"s3://" + bucket + "/bad.yaml", "templates.extra.ami"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := cloudtest.FreeAddr(t)
			base := service.Base{Prefix: s.Topology.Prefix, OpsConfig: tt.location, HTTPAddr: addr}
			ran := false
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			err := service.Run(ctx, bus.Planner, base, s.AWS, s.Logger, func(context.Context, service.Deps) error {
				ran = true
				return nil
			})
			if err == nil || ran {
				t.Fatalf("Run = %v (stage ran: %t), want an error and nothing run", err, ran)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if code, _ := cloudtest.Get(t, "http://"+addr+"/healthz"); code != 0 {
				t.Errorf("health port still answers (%d) after Run returned", code)
			}
		})
	}
}
