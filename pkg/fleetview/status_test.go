package fleetview

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/sortie-fleet/sortie/pkg/tags"
)

var update = flag.Bool("update", false, "rewrite golden files")

var now = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

// inst builds an instance with the given state, launch time and tags.
func inst(id string, state ec2types.InstanceStateName, launched time.Time, tags ...string) ec2types.Instance {
	in := ec2types.Instance{
		InstanceId: aws.String(id), InstanceType: ec2types.InstanceTypeM3Medium,
		State: &ec2types.InstanceState{Name: state}, LaunchTime: aws.Time(launched),
	}
	for i := 0; i+1 < len(tags); i += 2 {
		in.Tags = append(in.Tags, ec2types.Tag{Key: aws.String(tags[i]), Value: aws.String(tags[i+1])})
	}
	return in
}

func rfc(t time.Time) string { return t.Format(time.RFC3339) }

func TestGroup(t *testing.T) {
	past, future := rfc(now.Add(-5*time.Minute)), rfc(now.Add(10*time.Minute))
	running, terminated, pending := ec2types.InstanceStateNameRunning, ec2types.InstanceStateNameTerminated, ec2types.InstanceStateNamePending
	tests := []struct {
		name        string
		insts       []ec2types.Instance
		wantJobs    []string
		wantExpired []bool
		wantStage   []string
		wantStates  []string
		wantLease   []string // "" for none
		wantAge     []int64
	}{
		{
			name:     "none",
			wantJobs: []string{},
		},
		{
			name: "live lease is not expired",
			insts: []ec2types.Instance{
				inst("i-2", running, now.Add(-90*time.Second), tags.JobID, "job-a", tags.LeaseExpires, future, tags.Stage, "bootstrapped"),
				inst("i-1", running, now.Add(-2*time.Minute), tags.JobID, "job-a", tags.LeaseExpires, future, tags.Stage, "bootstrapped"),
			},
			wantJobs: []string{"job-a"}, wantExpired: []bool{false}, wantStage: []string{"bootstrapped"},
			wantStates: []string{"2 running"}, wantLease: []string{future}, wantAge: []int64{120},
		},
		{
			name: "past lease on a running instance is a leak",
			insts: []ec2types.Instance{
				inst("i-1", running, now.Add(-time.Hour), tags.JobID, "leak-1", tags.LeaseExpires, past),
			},
			wantJobs: []string{"leak-1"}, wantExpired: []bool{true}, wantStage: []string{""},
			wantStates: []string{"1 running"}, wantLease: []string{past}, wantAge: []int64{3600},
		},
		{
			name: "past lease on a terminated instance is no leak",
			insts: []ec2types.Instance{
				inst("i-1", terminated, now.Add(-time.Hour), tags.JobID, "done", tags.LeaseExpires, past, tags.Stage, "finished"),
			},
			wantJobs: []string{"done"}, wantExpired: []bool{false}, wantStage: []string{"finished"},
			wantStates: []string{"1 terminated"}, wantLease: []string{past}, wantAge: []int64{3600},
		},
		{
			name: "job lease is the live instance's, not the terminated one's",
			insts: []ec2types.Instance{
				inst("i-1", terminated, now.Add(-time.Hour), tags.JobID, "mixed", tags.LeaseExpires, past, tags.Stage, "finished"),
				inst("i-2", pending, now.Add(-time.Second), tags.JobID, "mixed", tags.LeaseExpires, future, tags.Stage, "launched"),
			},
			wantJobs: []string{"mixed"}, wantExpired: []bool{false}, wantStage: []string{"launched,finished"},
			wantStates: []string{"1 pending, 1 terminated"}, wantLease: []string{future}, wantAge: []int64{3600},
		},
		{
			name: "unparsable or missing lease is shown as none, never expired",
			insts: []ec2types.Instance{
				inst("i-1", running, now.Add(-time.Hour), tags.JobID, "bad", tags.LeaseExpires, "tomorrow"),
				inst("i-2", running, now.Add(-time.Hour), tags.JobID, "bad"),
			},
			wantJobs: []string{"bad"}, wantExpired: []bool{false}, wantStage: []string{""},
			wantStates: []string{"2 running"}, wantLease: []string{""}, wantAge: []int64{3600},
		},
		{
			name: "grouped and sorted by job; untagged ignored",
			insts: []ec2types.Instance{
				inst("i-9", running, now, tags.JobID, "zeta", tags.LeaseExpires, future),
				inst("i-8", running, now),
				inst("i-7", running, now, tags.JobID, "alpha", tags.LeaseExpires, past),
			},
			wantJobs: []string{"alpha", "zeta"}, wantExpired: []bool{true, false}, wantStage: []string{"", ""},
			wantStates: []string{"1 running", "1 running"}, wantLease: []string{past, future}, wantAge: []int64{0, 0},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			jobs := Group(tt.insts, now)
			ids := []string{}
			for i, j := range jobs {
				ids = append(ids, j.JobID)
				if i >= len(tt.wantExpired) {
					continue
				}
				if j.Expired != tt.wantExpired[i] {
					t.Errorf("%s: expired = %v, want %v", j.JobID, j.Expired, tt.wantExpired[i])
				}
				if j.Stage != tt.wantStage[i] {
					t.Errorf("%s: stage = %q, want %q", j.JobID, j.Stage, tt.wantStage[i])
				}
				if got := j.StatesText(); got != tt.wantStates[i] {
					t.Errorf("%s: states = %q, want %q", j.JobID, got, tt.wantStates[i])
				}
				lease := ""
				if j.LeaseExpires != nil {
					lease = rfc(*j.LeaseExpires)
				}
				if lease != tt.wantLease[i] {
					t.Errorf("%s: lease = %q, want %q", j.JobID, lease, tt.wantLease[i])
				}
				if j.AgeSeconds != tt.wantAge[i] {
					t.Errorf("%s: age = %d, want %d", j.JobID, j.AgeSeconds, tt.wantAge[i])
				}
				if !slices.IsSortedFunc(j.Instances, func(a, b Instance) int { return strings.Compare(a.ID, b.ID) }) {
					t.Errorf("%s: instances not sorted by id", j.JobID)
				}
			}
			if !slices.Equal(ids, tt.wantJobs) {
				t.Errorf("jobs = %v, want %v", ids, tt.wantJobs)
			}
		})
	}
}

func TestQueryFilters(t *testing.T) {
	tests := []struct {
		q    Query
		want []string
	}{
		{Query{Stack: "s"}, []string{"tag:sortie:stack=s", "tag-key=sortie:job-id", "instance-state-name=pending,running,shutting-down,stopping,stopped"}},
		{Query{Stack: "s", All: true}, []string{"tag:sortie:stack=s", "tag-key=sortie:job-id"}},
		{Query{Stack: "s", JobID: "j1"}, []string{"tag:sortie:stack=s", "tag-key=sortie:job-id", "tag:sortie:job-id=j1", "instance-state-name=pending,running,shutting-down,stopping,stopped"}},
		{Query{Stack: "prod", JobID: "j1", All: true}, []string{"tag:sortie:stack=prod", "tag-key=sortie:job-id", "tag:sortie:job-id=j1"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.want, " "), func(t *testing.T) {
			var got []string
			for _, f := range tt.q.Filters() {
				got = append(got, aws.ToString(f.Name)+"="+strings.Join(f.Values, ","))
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("filters = %v, want %v", got, tt.want)
			}
		})
	}
}

// pagedEC2 serves DescribeInstances one instance per page.
type pagedEC2 struct {
	insts []ec2types.Instance
	calls int
	seen  []*ec2.DescribeInstancesInput
}

func (p *pagedEC2) DescribeInstances(_ context.Context, in *ec2.DescribeInstancesInput, _ ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error) {
	p.calls++
	p.seen = append(p.seen, in)
	i := 0
	if in.NextToken != nil {
		i = int((*in.NextToken)[0] - '0')
	}
	out := &ec2.DescribeInstancesOutput{Reservations: []ec2types.Reservation{{Instances: p.insts[i : i+1]}}}
	if i+1 < len(p.insts) {
		out.NextToken = aws.String(string(rune('0' + i + 1)))
	}
	return out, nil
}

var _ EC2API = (*pagedEC2)(nil)

func TestDescribeFollowsPages(t *testing.T) {
	api := &pagedEC2{insts: []ec2types.Instance{
		inst("i-1", "running", now, tags.JobID, "a"), inst("i-2", "running", now, tags.JobID, "a"), inst("i-3", "running", now, tags.JobID, "b"),
	}}
	got, err := Describe(t.Context(), api, Query{Stack: "s", JobID: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || api.calls != 3 {
		t.Fatalf("got %d instances in %d calls, want 3 in 3", len(got), api.calls)
	}
	if len(api.seen[0].Filters) != 4 {
		t.Errorf("first call's filters = %d, want 4", len(api.seen[0].Filters))
	}
	if _, err := Describe(t.Context(), api, Query{JobID: "a"}); err == nil || api.calls != 3 {
		t.Errorf("a query without a stack: err %v after %d calls; want an error before any call", err, api.calls)
	}
}

func TestWriteTableGolden(t *testing.T) {
	future := rfc(now.Add(10 * time.Minute))
	jobs := Group([]ec2types.Instance{
		inst("i-0a", "running", now.Add(-3*time.Minute-12*time.Second), tags.JobID, "job-b", tags.Fleet, "job-b", tags.Template, "demo",
			tags.Stage, "bootstrapped", tags.LeaseExpires, future, tags.SSHEndpoint, "127.0.0.1:40001", tags.Market, "on-demand", tags.HourlyPrice, "0.067", tags.PlannedCost, "0.0259"),
		inst("i-0b", "running", now.Add(-3*time.Minute), tags.JobID, "job-b", tags.Fleet, "job-b", tags.Template, "demo",
			tags.Stage, "bootstrapped", tags.LeaseExpires, future, tags.SSHEndpoint, "127.0.0.1:40002", tags.Market, "on-demand", tags.HourlyPrice, "0.067", tags.PlannedCost, "0.0259"),
		inst("i-0c", "terminated", now.Add(-3*time.Minute), tags.JobID, "job-b", tags.Fleet, "job-b", tags.Template, "demo",
			tags.Stage, "finished", tags.LeaseExpires, future, tags.SSHEndpoint, "127.0.0.1:40003", tags.Market, "on-demand", tags.HourlyPrice, "0.067", tags.PlannedCost, "0.0259"),
		inst("i-1", "running", now.Add(-26*time.Hour), tags.JobID, "leak-1", tags.LeaseExpires, rfc(now.Add(-2*time.Hour-5*time.Minute)),
			tags.SSHEndpoint, "10.0.0.9:22"),
		inst("i-2", "running", now.Add(-time.Minute), tags.JobID, "odd job\tid", tags.Template, "x y"),
	}, now)
	// job-b: 3 instances at $0.067 an hour for 192 s, 180 s and 180 s (the terminated one
	// has no termination time: until now).
	if c := jobs[0].Cost; c == nil || math.Abs(*c-0.067*552/3600) > 1e-12 {
		t.Errorf("job-b cost %v, want %v", c, 0.067*552/3600)
	}
	if jobs[1].Cost != nil || jobs[1].PlannedCost != nil {
		t.Errorf("leak-1 has no price tags, yet cost %v planned %v", jobs[1].Cost, jobs[1].PlannedCost)
	}
	var buf bytes.Buffer
	if err := WriteTable(&buf, jobs, now); err != nil {
		t.Fatal(err)
	}
	golden(t, "status.golden", buf.Bytes())

	b, err := json.MarshalIndent(jobs, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "status.json.golden", append(b, '\n'))
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func TestDuration(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{-time.Second, "0s"}, {45 * time.Second, "45s"}, {3*time.Minute + 12*time.Second, "3m12s"},
		{2*time.Hour + 5*time.Minute, "2h05m"}, {76 * time.Hour, "3d04h"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := Duration(tt.d); got != tt.want {
				t.Errorf("Duration(%v) = %q, want %q", tt.d, got, tt.want)
			}
		})
	}
}
