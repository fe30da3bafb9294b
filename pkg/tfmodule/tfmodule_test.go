package tfmodule

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/zclconf/go-cty/cty"
)

const module = `
variable "prefix" {
  type = string
}

variable "names" {
  type    = list(string)
  default = ["a", "b"]
}

data "aws_caller_identity" "current" {}

locals {
  account = data.aws_caller_identity.current.account_id
  # Refers to a resource declared below: evaluated once that resource is.
  topic_arns = { for k, t in aws_sns_topic.event : k => t.arn }
}

resource "aws_sns_topic" "event" {
  for_each = { One = "one", Two = "two" }

  name = "${var.prefix}-${each.value}"
}

resource "aws_iam_role" "svc" {
  for_each = toset(var.names)

  name = "${var.prefix}-${each.key}"
}

resource "aws_s3_object" "maybe" {
  count = length(var.names) > 5 ? 1 : 0

  key = "k"
}

resource "aws_iam_role_policy" "svc" {
  for_each = toset(var.names)

  role   = aws_iam_role.svc[each.key].name
  policy = jsonencode({ Resource = [local.topic_arns["One"], aws_iam_role.svc[each.key].arn], Account = local.account })
}
`

func write(t *testing.T, src string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "main.tf"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestLoad(t *testing.T) {
	m, err := Load(write(t, module), "111122223333", map[string]cty.Value{"prefix": cty.StringVal("p")})
	if err != nil {
		t.Fatal(err)
	}
	if got := len(m.Instances("aws_s3_object", "maybe")); got != 0 {
		t.Errorf("count 0 made %d instances", got)
	}
	if !m.Declared("aws_iam_role", "name", "p-b") || m.Declared("aws_iam_role", "name", "p-c") {
		t.Error("Declared does not see exactly the roles p-a and p-b")
	}
	pol := m.Instances("aws_iam_role_policy", "svc")
	if len(pol) != 2 {
		t.Fatalf("%d policies, want 2 (one per name)", len(pol))
	}
	doc, err := pol[0].String("policy")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"arn:aws:sns:us-east-1:111122223333:p-one"`, `"arn:aws:iam::111122223333:role/p-a"`, `"Account":"111122223333"`} {
		if !strings.Contains(doc, want) {
			t.Errorf("policy %s lacks %s", doc, want)
		}
	}
	if arn, err := m.Instances("aws_sns_topic", "event")[1].String("arn"); err != nil || arn != "arn:aws:sns:us-east-1:111122223333:p-two" {
		t.Errorf("stand-in arn %q, %v", arn, err)
	}
}

func TestLoadErrors(t *testing.T) {
	for _, c := range []struct{ name, src, want string }{
		{"variable without default or value", `variable "x" { type = string }`, "variable x has no default"},
		{"reference to nothing", `locals { a = aws_sns_topic.none.arn }`, "do not evaluate"},
		{"syntax", `resource "x" {`, "parsing"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Load(write(t, c.src), "1", nil)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Load = %v, want %q", err, c.want)
			}
		})
	}
}
