package reaper

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/tags"
)

var t0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

func TestCheckLease(t *testing.T) {
	const ttl = 30 * time.Minute
	lease := func(at time.Time) map[string]string {
		return map[string]string{tags.LeaseExpires: at.Format(time.RFC3339)}
	}
	tests := []struct {
		name      string
		tg        map[string]string
		launch    time.Time
		expired   bool
		reason    string
		expiredAt time.Time
	}{
		{name: "live lease", tg: lease(t0.Add(time.Minute)), launch: t0.Add(-2 * time.Hour), expired: false, reason: "lease live until 2025-06-01T12:01:00Z"},
		{name: "expired lease", tg: lease(t0.Add(-time.Second)), launch: t0.Add(-time.Minute), expired: true, reason: "lease expired at 2025-06-01T11:59:59Z", expiredAt: t0.Add(-time.Second)},
		{name: "lease ending now is still live", tg: lease(t0), launch: t0.Add(-2 * time.Hour), expired: false},
		{name: "live lease in another zone", tg: map[string]string{tags.LeaseExpires: "2025-06-01T14:30:00+02:00"}, expired: false},
		{name: "expired lease in another zone", tg: map[string]string{tags.LeaseExpires: "2025-06-01T13:30:00+02:00"}, expired: true},
		{name: "a live lease wins over an old launch", tg: lease(t0.Add(time.Hour)), launch: t0.Add(-48 * time.Hour), expired: false},
		{name: "missing lease, within TTL", tg: map[string]string{}, launch: t0.Add(-29 * time.Minute), expired: false, reason: "no lease tag; within TTL 30m0s"},
		{name: "missing lease, past TTL", tg: map[string]string{}, launch: t0.Add(-31 * time.Minute), expired: true, reason: "no lease tag; launched 2025-06-01T11:29:00Z, TTL 30m0s ended at 2025-06-01T11:59:00Z", expiredAt: t0.Add(-time.Minute)},
		{name: "garbage lease, within TTL", tg: map[string]string{tags.LeaseExpires: "tomorrow"}, launch: t0.Add(-time.Minute), expired: false, reason: `lease tag "tomorrow" does not parse`},
		{name: "garbage lease, past TTL", tg: map[string]string{tags.LeaseExpires: "tomorrow"}, launch: t0.Add(-time.Hour), expired: true, reason: `lease tag "tomorrow" does not parse; launched`},
		{name: "empty lease, past TTL", tg: map[string]string{tags.LeaseExpires: ""}, launch: t0.Add(-time.Hour), expired: true},
		{name: "unix time is not RFC 3339", tg: map[string]string{tags.LeaseExpires: "1748779200"}, launch: t0.Add(-time.Minute), expired: false},
		{name: "no lease and no launch time: kept", tg: map[string]string{}, expired: false, reason: "no lease tag and no launch time: kept"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := CheckLease(tt.tg, tt.launch, t0, ttl)
			if got.Expired != tt.expired {
				t.Fatalf("Expired = %v (%s), want %v", got.Expired, got.Reason, tt.expired)
			}
			if !strings.HasPrefix(got.Reason, tt.reason) {
				t.Fatalf("Reason = %q, want prefix %q", got.Reason, tt.reason)
			}
			if !tt.expiredAt.IsZero() && !got.ExpiredAt.Equal(tt.expiredAt) {
				t.Fatalf("ExpiredAt = %s, want %s", got.ExpiredAt, tt.expiredAt)
			}
		})
	}
}

func TestArchiveBeforeSweep(t *testing.T) {
	const window = 10 * time.Minute
	for _, tt := range []struct {
		name      string
		expiredAt time.Time
		want      bool
	}{
		{"just expired: archive first", t0.Add(-time.Second), true},
		{"at the end of the window: archive first", t0.Add(-window), true},
		{"past the window: terminate at once", t0.Add(-window - time.Second), false},
		{"long past (a reaper that kept dying while archiving): terminate at once", t0.Add(-48 * time.Hour), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := ArchiveBeforeSweep(tt.expiredAt, t0, window); got != tt.want {
				t.Fatalf("ArchiveBeforeSweep = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestRefusal(t *testing.T) {
	const stack, fleet = "prod", "job-1-r1"
	for _, tt := range []struct {
		name   string
		tg     map[string]string
		known  bool
		reason string
	}{
		{"the fleet's in the stack", map[string]string{tags.Stack: stack, tags.Fleet: fleet}, true, ""},
		{"unknown to EC2", nil, false, events.RefusedUnknown},
		{"another stack's, same fleet id", map[string]string{tags.Stack: "staging", tags.Fleet: fleet}, true, events.RefusedOtherStack},
		{"another stack's, empty value", map[string]string{tags.Stack: "", tags.Fleet: fleet}, true, events.RefusedOtherStack},
		{"Sortie's tags but no stack", map[string]string{tags.JobID: "job-1", tags.Fleet: fleet}, true, events.RefusedUntagged},
		{"a stranger's instance", map[string]string{tags.Name: "prod-db"}, true, events.RefusedUntagged},
		{"the stack's, no fleet tag", map[string]string{tags.Stack: stack}, true, events.RefusedUntagged},
		{"the stack's, another fleet", map[string]string{tags.Stack: stack, tags.Fleet: "job-2-r1"}, true, events.RefusedOtherFleet},
		{"the stack's, an earlier revision of the fleet", map[string]string{tags.Stack: stack, tags.Fleet: "job-1-r0"}, true, events.RefusedOtherFleet},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := Refusal(instance("i-00000001", t0, tt.tg), tt.known, stack, fleet)
			if got.Reason != tt.reason || (tt.reason != "" && got.Detail == "") {
				t.Fatalf("Refusal = %+v, want reason %q with a detail", got, tt.reason)
			}
		})
	}
}

func instance(id string, launch time.Time, tg map[string]string) ec2types.Instance {
	in := ec2types.Instance{InstanceId: aws.String(id)}
	if !launch.IsZero() {
		in.LaunchTime = aws.Time(launch)
	}
	for k, v := range tg {
		in.Tags = append(in.Tags, ec2types.Tag{Key: aws.String(k), Value: aws.String(v)})
	}
	return in
}

func TestSelectExpired(t *testing.T) {
	insts := []ec2types.Instance{
		instance("i-00000001", t0.Add(-time.Hour), map[string]string{tags.LeaseExpires: t0.Add(time.Minute).Format(time.RFC3339)}),  // live
		instance("i-00000002", t0.Add(-time.Hour), map[string]string{tags.LeaseExpires: t0.Add(-time.Minute).Format(time.RFC3339)}), // expired
		instance("i-00000003", t0.Add(-20*time.Minute), map[string]string{tags.Template: "short"}),                                  // missing, short TTL: expired
		instance("i-00000004", t0.Add(-20*time.Minute), map[string]string{}),                                                        // missing, default TTL: live
		instance("i-00000005", t0.Add(-2*time.Hour), map[string]string{tags.LeaseExpires: "garbage"}),                               // garbage, old: expired
	}
	ttl := func(tg map[string]string) time.Duration {
		if tg[tags.Template] == "short" {
			return 10 * time.Minute
		}
		return time.Hour
	}
	var got []string
	for _, x := range SelectExpired(insts, t0, ttl) {
		got = append(got, aws.ToString(x.Instance.InstanceId))
		if x.Reason == "" {
			t.Errorf("%s selected without a reason", aws.ToString(x.Instance.InstanceId))
		}
	}
	if want := "[i-00000002 i-00000003 i-00000005]"; fmt.Sprint(got) != want {
		t.Fatalf("selected %v, want %s", got, want)
	}
}

func TestHostKeyFromConsole(t *testing.T) {
	const ed = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
	const ecdsa = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBEmKSENjQEezOmxkZMy7opKgwFB9nkt5YRrYMjNuG5N87uRgg6CLrbo5wAdT/y6v0mKV0U2w0WZ2YB/++Tpockg="
	block := func(lines ...string) string {
		return "boot...\n-----BEGIN SSH HOST KEY KEYS-----\n" + strings.Join(lines, "\n") + "\n-----END SSH HOST KEY KEYS-----\nCloud-init finished\n"
	}
	tests := []struct {
		name    string
		console string
		want    string
		wantErr string
	}{
		{name: "one key", console: block(ed + " root@ip-10-0-0-1"), want: ed},
		{name: "ed25519 preferred", console: block(ecdsa+" root@h", ed+" root@h"), want: ed},
		{name: "ecdsa alone", console: block(ecdsa + " root@h"), want: ecdsa},
		{name: "garbage lines skipped", console: block("not a key", ed+" root@h"), want: ed},
		{name: "no block", console: "boot...\n", wantErr: "no -----BEGIN SSH HOST KEY KEYS----- block"},
		{name: "no end", console: "-----BEGIN SSH HOST KEY KEYS-----\n" + ed, wantErr: "no end"},
		{name: "no key", console: block("nothing here"), wantErr: "no usable key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := HostKeyFromConsole(tt.console)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))); got != tt.want {
				t.Fatalf("key %s, want %s", got, tt.want)
			}
		})
	}
}

func TestInstanceSeconds(t *testing.T) {
	now := t0.Add(time.Hour)
	terminated := func(id string, launch time.Time, reason string) ec2types.Instance {
		in := instance(id, launch, nil)
		in.StateTransitionReason = aws.String(reason)
		return in
	}
	tests := []struct {
		name  string
		insts []ec2types.Instance
		want  float64
	}{
		{name: "AWS reason", insts: []ec2types.Instance{terminated("i-1", t0, "User initiated (2025-06-01 12:10:00 GMT)")}, want: 600},
		{name: "local cloud reason", insts: []ec2types.Instance{terminated("i-1", t0, "User initiated (2025-06-01 12:00:30 UTC)")}, want: 30},
		{name: "no reason: now", insts: []ec2types.Instance{terminated("i-1", t0, "")}, want: 3600},
		{name: "reason before launch: zero", insts: []ec2types.Instance{terminated("i-1", t0, "User initiated (2025-06-01 11:00:00 GMT)")}, want: 0},
		{name: "no launch time: nothing", insts: []ec2types.Instance{terminated("i-1", time.Time{}, "")}, want: 0},
		{
			name: "summed",
			insts: []ec2types.Instance{
				terminated("i-1", t0, "User initiated (2025-06-01 12:10:00 GMT)"),
				terminated("i-2", t0.Add(5*time.Minute), "User initiated (2025-06-01 12:10:00 GMT)"),
			},
			want: 900,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := InstanceSeconds(tt.insts, now); got != tt.want {
				t.Fatalf("InstanceSeconds = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestArchiveKey(t *testing.T) {
	tests := []struct{ job, want string }{
		{"job-42", "logs/job-42/i-0123456789abcdef0.tar.gz"},
		{"a.b_c-D", "logs/a.b_c-D/i-0123456789abcdef0.tar.gz"},
		{"../etc", "logs/_invalid/i-0123456789abcdef0.tar.gz"},
		{"..", "logs/_invalid/i-0123456789abcdef0.tar.gz"},
		{"", "logs/_invalid/i-0123456789abcdef0.tar.gz"},
		{"job 42", "logs/_invalid/i-0123456789abcdef0.tar.gz"},
	}
	for _, tt := range tests {
		if got := ArchiveKey(tt.job, "i-0123456789abcdef0"); got != tt.want {
			t.Errorf("ArchiveKey(%q) = %q, want %q", tt.job, got, tt.want)
		}
	}
}

func TestSweepChain(t *testing.T) {
	var c sweepChain
	if !c.shouldRearm(time.Time{}) {
		t.Fatal("a replica that armed nothing must re-arm")
	}
	c.armed(t0) // Run's first timer
	steps := []struct {
		name  string
		due   time.Time
		rearm bool
	}{
		{"this replica's timer", t0, true},
		{"its duplicate", t0, false},
		{"a previous incarnation's chain", t0.Add(-30 * time.Second), false},
		{"a timer without a due time", time.Time{}, false},
		{"the next timer", t0.Add(time.Minute), true},
		{"another replica's timer, due before ours: its chain ends here", t0.Add(time.Minute + 10*time.Second), false},
		{"another replica's timer, due after ours", t0.Add(2*time.Minute + 10*time.Second), true},
		{"our own timer, now superseded", t0.Add(2 * time.Minute), false},
	}
	for _, s := range steps {
		got := c.shouldRearm(s.due)
		if got != s.rearm {
			t.Fatalf("%s (due %s): re-arm = %v, want %v", s.name, s.due.Format(time.TimeOnly), got, s.rearm)
		}
		if got {
			c.armed(s.due.Add(time.Minute))
		}
	}
}

func TestArchiveWindow(t *testing.T) {
	tests := []struct {
		name     string
		notice   time.Time
		want     time.Duration
		wantWhy  string
		timeout  time.Duration
		disallow bool // the notice has run out
	}{
		{name: "no notice: the archive timeout", timeout: 2 * time.Minute, want: 2 * time.Minute, wantWhy: "the archive timeout"},
		{name: "notice later than the timeout", notice: t0.Add(2 * time.Minute), timeout: time.Minute, want: time.Minute, wantWhy: "the archive timeout"},
		{name: "notice sooner than the timeout", notice: t0.Add(90 * time.Second), timeout: 2 * time.Minute, want: 90 * time.Second, wantWhy: "the notice deadline"},
		{name: "notice passed", notice: t0.Add(-time.Second), timeout: 2 * time.Minute, want: -time.Second, wantWhy: "the notice deadline", disallow: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, why := archiveWindow(tt.timeout, tt.notice, t0)
			if got != tt.want || why != tt.wantWhy || (got <= 0) != tt.disallow {
				t.Errorf("archiveWindow = %s, %q; want %s, %q", got, why, tt.want, tt.wantWhy)
			}
		})
	}
}
