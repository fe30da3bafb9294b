package iampolicy

import (
	"slices"
	"strings"
	"testing"
)

const policy = `{
  "Version": "2012-10-17",
  "Statement": [
    {"Sid": "Queues", "Effect": "Allow", "Action": ["sqs:ReceiveMessage", "sqs:Get*"], "Resource": "arn:aws:sqs:us-east-1:1:s-planner-*"},
    {"Sid": "Terminate", "Effect": "Allow", "Action": "ec2:TerminateInstances", "Resource": "arn:aws:ec2:us-east-1:1:instance/*",
     "Condition": {"StringEquals": {"aws:ResourceTag/sortie:stack": "s"}}},
    {"Sid": "Tag", "Effect": "Allow", "Action": "ec2:CreateTags", "Resource": "arn:aws:ec2:us-east-1:1:instance/*",
     "Condition": {"StringEquals": {"aws:ResourceTag/sortie:stack": "s"}, "ForAllValues:StringEquals": {"aws:TagKeys": ["sortie:stage"]}}},
    {"Sid": "Metrics", "Effect": "Allow", "Action": "cloudwatch:PutMetricData", "Resource": "*",
     "Condition": {"StringEquals": {"cloudwatch:namespace": "Sortie"}}},
    {"Sid": "Logs", "Effect": "Allow", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::s-logs/logs/*"},
    {"Sid": "NoSecrets", "Effect": "Deny", "Action": "s3:*", "Resource": "arn:aws:s3:::s-logs/logs/secret/*"}
  ]
}`

func TestDecide(t *testing.T) {
	p, err := Parse([]byte(policy))
	if err != nil {
		t.Fatal(err)
	}
	inst := "arn:aws:ec2:us-east-1:1:instance/i-1"
	for _, c := range []struct {
		name    string
		req     Request
		allowed bool
		sid     string
	}{
		{"listed action on own queue", Request{"sqs:ReceiveMessage", "arn:aws:sqs:us-east-1:1:s-planner-job-submitted", nil}, true, "Queues"},
		{"wildcard action, case folded", Request{"SQS:getqueueurl", "arn:aws:sqs:us-east-1:1:s-planner-job-submitted", nil}, true, "Queues"},
		{"another service's queue", Request{"sqs:ReceiveMessage", "arn:aws:sqs:us-east-1:1:s-reaper-job-finished", nil}, false, ""},
		{"action not granted", Request{"sqs:DeleteQueue", "arn:aws:sqs:us-east-1:1:s-planner-job-submitted", nil}, false, ""},
		{"terminate own stack", Request{"ec2:TerminateInstances", inst, map[string][]string{"aws:ResourceTag/sortie:stack": {"s"}}}, true, "Terminate"},
		{"terminate another stack", Request{"ec2:TerminateInstances", inst, map[string][]string{"aws:ResourceTag/sortie:stack": {"other"}}}, false, ""},
		{"terminate untagged", Request{"ec2:TerminateInstances", inst, nil}, false, ""},
		{"tag own key", Request{"ec2:CreateTags", inst, map[string][]string{"aws:ResourceTag/sortie:stack": {"s"}, "aws:TagKeys": {"sortie:stage"}}}, true, "Tag"},
		{"rewrite the stack tag", Request{"ec2:CreateTags", inst, map[string][]string{"aws:ResourceTag/sortie:stack": {"s"}, "aws:TagKeys": {"sortie:stage", "sortie:stack"}}}, false, ""},
		{"metrics in namespace", Request{"cloudwatch:PutMetricData", "*", map[string][]string{"cloudwatch:namespace": {"Sortie"}}}, true, "Metrics"},
		{"metrics elsewhere", Request{"cloudwatch:PutMetricData", "*", map[string][]string{"cloudwatch:namespace": {"AWS/EC2"}}}, false, ""},
		{"metrics without namespace", Request{"cloudwatch:PutMetricData", "*", nil}, false, ""},
		{"star crosses slashes", Request{"s3:PutObject", "arn:aws:s3:::s-logs/logs/job/i-1.tar.gz", nil}, true, "Logs"},
		{"explicit deny wins", Request{"s3:PutObject", "arn:aws:s3:::s-logs/logs/secret/x", nil}, false, "NoSecrets"},
		{"bracket is literal", Request{"s3:PutObject", "arn:aws:s3:::s-logs/logs/[x]", nil}, true, "Logs"},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := p.Decide(c.req)
			if d.Allowed != c.allowed || d.Sid != c.sid {
				t.Errorf("Decide(%+v) = %+v, want allowed %v by %q", c.req, d, c.allowed, c.sid)
			}
		})
	}
}

func TestCondition(t *testing.T) {
	for _, c := range []struct {
		op         string
		have, want []string
		ok         bool
	}{
		{"StringEquals", nil, []string{"x"}, false},
		{"StringEqualsIfExists", nil, []string{"x"}, true},
		{"StringNotEquals", nil, []string{"x"}, true},
		{"StringNotEquals", []string{"x"}, []string{"x"}, false},
		{"StringLike", []string{"abc"}, []string{"a*"}, true},
		{"ArnNotEquals", []string{"arn:aws:iam::1:role/a"}, []string{"arn:aws:iam::1:role/a", "arn:aws:iam::1:role/b"}, false},
		{"ArnNotEquals", []string{"arn:aws:iam::1:role/c"}, []string{"arn:aws:iam::1:role/a"}, true},
		{"Null", nil, []string{"true"}, true},
		{"Null", []string{"v"}, []string{"true"}, false},
		{"Bool", []string{"false"}, []string{"false"}, true},
		{"ForAllValues:StringEquals", nil, []string{"a"}, true},
		{"ForAllValues:StringEquals", []string{"a", "b"}, []string{"a"}, false},
		{"ForAnyValue:StringEquals", []string{"a", "b"}, []string{"b"}, true},
		{"NumericLessThan", []string{"1"}, []string{"2"}, false}, // unknown: never allows
	} {
		if got := condition(c.op, c.have, c.want); got != c.ok {
			t.Errorf("%s %v %v = %v, want %v", c.op, c.have, c.want, got, c.ok)
		}
	}
}

func TestLint(t *testing.T) {
	for _, c := range []struct {
		name, stmt string
		want       string // "" for clean
	}{
		{"scoped", `{"Effect":"Allow","Action":"sqs:SendMessage","Resource":"arn:aws:sqs:r:1:q"}`, ""},
		{"star action", `{"Effect":"Allow","Action":"*","Resource":"arn:aws:sqs:r:1:q"}`, `action "*"`},
		{"service star", `{"Effect":"Allow","Action":"ec2:*","Resource":"arn:aws:sqs:r:1:q"}`, `action "ec2:*"`},
		{"write on star", `{"Effect":"Allow","Action":["ec2:DescribeInstances","ec2:TerminateInstances"],"Resource":"*"}`, "ec2:TerminateInstances on Resource"},
		{"conditioned write on star", `{"Effect":"Allow","Action":"cloudwatch:PutMetricData","Resource":"*","Condition":{"StringEquals":{"cloudwatch:namespace":"Sortie"}}}`, ""},
		{"read on star", `{"Effect":"Allow","Action":["ec2:DescribeInstances","sns:ListTopics"],"Resource":"*"}`, ""},
		{"not action", `{"Effect":"Allow","NotAction":"iam:*","Resource":"arn:aws:s3:::b"}`, "NotAction"},
		{"deny is fine", `{"Effect":"Deny","Action":"*","Resource":"*"}`, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := Parse([]byte(`{"Version":"2012-10-17","Statement":[` + c.stmt + `]}`))
			if err != nil {
				t.Fatal(err)
			}
			got := p.Lint()
			if c.want == "" && len(got) > 0 || c.want != "" && !slices.ContainsFunc(got, func(s string) bool { return strings.Contains(s, c.want) }) {
				t.Errorf("Lint() = %q, want %q", got, c.want)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	for _, doc := range []string{
		`{"Version":"2008-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}`,
		`{"Version":"2012-10-17","Statement":[]}`,
		`{"Version":"2012-10-17","Statement":[{"Effect":"Permit","Action":"s3:GetObject","Resource":"*"}]}`,
		`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Resource":"*"}]}`,
		`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject"}]}`,
		`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":[]}]}`,
		`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":7,"Resource":"*"}]}`,
	} {
		if _, err := Parse([]byte(doc)); err == nil {
			t.Errorf("Parse(%s) accepted", doc)
		}
	}
}
