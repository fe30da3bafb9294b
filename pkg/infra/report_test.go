package infra

import "testing"

func TestReportString(t *testing.T) {
	r := Report{Lines: []Line{
		{Action: Created, Kind: KindTopic, Name: "sortie-job-submitted"},
		{Action: Updated, Kind: KindQueue, Name: "sortie-planner-job-submitted", Detail: "VisibilityTimeout 5→60"},
		{Action: Exists, Kind: KindSubscription, Name: "sortie-job-submitted -> sortie-planner-job-submitted"},
		{Action: Updated, Kind: KindRule, Name: "sortie-ec2-events", Detail: "EventPattern changed; State DISABLED→ENABLED"},
		{Action: Kept, Kind: KindBucket, Name: "sortie-logs", Detail: "bucket not empty (3 objects)"},
		{Action: Absent, Kind: KindDLQ, Name: "sortie-reaper-timers-dlq"},
	}}
	golden(t, "report.golden.txt", []byte(r.String()))

	if got := (Report{}).String(); got != "0 resources\n" {
		t.Errorf("empty report = %q", got)
	}
	if got := (Report{Lines: r.Lines[:1]}).String(); got != "created  topic  sortie-job-submitted\n1 resource: 1 created\n" {
		t.Errorf("one-line report = %q", got)
	}
}
