package infra

import (
	"bytes"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/ext/tryfunc"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/hashicorp/hcl/v2/hclwrite"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
	"github.com/zclconf/go-cty/cty/function/stdlib"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/ledger"
)

// Terraform is not run here (nor in CI). Instead these tests parse deployments/terraform with
// HCL's own parser and evaluate its expressions — names, queue settings, jsonencode'd
// policies — with the functions Terraform would use, standing in made-up ARNs for resources,
// and compare the results with what Up creates.

const (
	tfDir     = "../../deployments/terraform"
	tfAccount = "000000000000"
)

// tfModule is a parsed Terraform module and the context its expressions evaluate in.
type tfModule struct {
	blocks []*hclsyntax.Block
	ctx    *hcl.EvalContext
	region string
}

// tfInstance is one instance of a resource (one for_each key).
type tfInstance struct {
	key  string
	body *hclsyntax.Body
	ctx  *hcl.EvalContext
}

func loadTerraform(t *testing.T, prefix string) *tfModule {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(tfDir, "*.tf"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no .tf files in %s: %v", tfDir, err)
	}
	m := &tfModule{}
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		file, diags := hclsyntax.ParseConfig(src, f, hcl.InitialPos)
		if diags.HasErrors() {
			t.Fatalf("parsing %s: %s", f, diags)
		}
		m.blocks = append(m.blocks, file.Body.(*hclsyntax.Body).Blocks...)
	}

	vars := make(map[string]cty.Value)
	for _, b := range m.blocksOf("variable") {
		if d, ok := b.Body.Attributes["default"]; ok {
			v, diags := d.Expr.Value(nil)
			if diags.HasErrors() {
				t.Fatalf("variable %s default: %s", b.Labels[0], diags)
			}
			vars[b.Labels[0]] = v
		}
	}
	vars["prefix"] = cty.StringVal(prefix)
	m.region = vars["region"].AsString()
	m.ctx = &hcl.EvalContext{
		Variables: map[string]cty.Value{"var": cty.ObjectVal(vars)},
		Functions: map[string]function.Function{
			"jsonencode": stdlib.JSONEncodeFunc,
			"merge":      stdlib.MergeFunc,
			"regex":      stdlib.RegexFunc,
			"can":        tryfunc.CanFunc,
		},
	}

	// Locals may refer to each other: evaluate until nothing more resolves.
	pending := make(map[string]hcl.Expression)
	for _, b := range m.blocksOf("locals") {
		for name, a := range b.Body.Attributes {
			pending[name] = a.Expr
		}
	}
	locals := make(map[string]cty.Value)
	for len(pending) > 0 {
		progress := false
		for name, expr := range pending {
			m.ctx.Variables["local"] = cty.ObjectVal(locals)
			if v, diags := expr.Value(m.ctx); !diags.HasErrors() {
				locals[name] = v
				delete(pending, name)
				progress = true
			}
		}
		if !progress {
			// The rest refer to resources and data sources: pkg/tfmodule evaluates those
			// (terraform_stack_test.go).
			break
		}
	}
	m.ctx.Variables["local"] = cty.ObjectVal(locals)

	// Resources, as later expressions see them: ARNs and ids made up from their names.
	m.addRefs(t, "aws_sns_topic", "event", func(i tfInstance) map[string]cty.Value {
		name := i.str(t, "name")
		return map[string]cty.Value{"name": cty.StringVal(name), "arn": cty.StringVal(m.topicARN(name))}
	})
	for _, q := range []string{"dlq", "queue"} {
		m.addRefs(t, "aws_sqs_queue", q, func(i tfInstance) map[string]cty.Value {
			name := i.str(t, "name")
			return map[string]cty.Value{
				"name": cty.StringVal(name), "arn": cty.StringVal(m.queueARN(name)),
				"id": cty.StringVal("https://sqs." + m.region + ".amazonaws.com/" + tfAccount + "/" + name),
			}
		})
	}
	m.addRefs(t, "aws_s3_bucket", "logs", func(i tfInstance) map[string]cty.Value {
		name := i.str(t, "bucket")
		return map[string]cty.Value{"bucket": cty.StringVal(name), "id": cty.StringVal(name), "arn": cty.StringVal("arn:aws:s3:::" + name)}
	})
	m.addRefs(t, "aws_kms_key", "logs", func(tfInstance) map[string]cty.Value {
		return map[string]cty.Value{"key_id": cty.StringVal("test-key"), "arn": cty.StringVal("arn:aws:kms:" + m.region + ":" + tfAccount + ":key/test-key")}
	})
	return m
}

func (m *tfModule) topicARN(name string) string {
	return "arn:aws:sns:" + m.region + ":" + tfAccount + ":" + name
}

func (m *tfModule) queueARN(name string) string {
	return "arn:aws:sqs:" + m.region + ":" + tfAccount + ":" + name
}

func (m *tfModule) blocksOf(typ string, labels ...string) []*hclsyntax.Block {
	var out []*hclsyntax.Block
	for _, b := range m.blocks {
		if b.Type == typ && slices.Equal(b.Labels[:min(len(labels), len(b.Labels))], labels) {
			out = append(out, b)
		}
	}
	return out
}

// instances expands a resource's for_each; a resource without one has a single instance "".
func (m *tfModule) instances(t *testing.T, typ, name string) []tfInstance {
	t.Helper()
	bs := m.blocksOf("resource", typ, name)
	if len(bs) != 1 {
		t.Fatalf("resource %s.%s declared %d times, want once", typ, name, len(bs))
	}
	b := bs[0]
	fe, ok := b.Body.Attributes["for_each"]
	if !ok {
		return []tfInstance{{body: b.Body, ctx: m.ctx}}
	}
	v, diags := fe.Expr.Value(m.ctx)
	if diags.HasErrors() {
		t.Fatalf("%s.%s for_each: %s", typ, name, diags)
	}
	var out []tfInstance
	for it := v.ElementIterator(); it.Next(); {
		k, ev := it.Element()
		ctx := m.ctx.NewChild()
		ctx.Variables = map[string]cty.Value{"each": cty.ObjectVal(map[string]cty.Value{"key": k, "value": ev})}
		out = append(out, tfInstance{key: k.AsString(), body: b.Body, ctx: ctx})
	}
	return out
}

// addRefs makes typ.name (indexed by for_each key when it has one) a variable.
func (m *tfModule) addRefs(t *testing.T, typ, name string, attrs func(tfInstance) map[string]cty.Value) {
	t.Helper()
	insts := m.instances(t, typ, name)
	var v cty.Value
	if len(insts) == 1 && insts[0].key == "" {
		v = cty.ObjectVal(attrs(insts[0]))
	} else {
		byKey := make(map[string]cty.Value)
		for _, i := range insts {
			byKey[i.key] = cty.ObjectVal(attrs(i))
		}
		v = cty.ObjectVal(byKey)
	}
	names := map[string]cty.Value{name: v}
	if old, ok := m.ctx.Variables[typ]; ok {
		for k, ov := range old.AsValueMap() {
			names[k] = ov
		}
	}
	m.ctx.Variables[typ] = cty.ObjectVal(names)
}

func (i tfInstance) value(t *testing.T, attr string) cty.Value {
	t.Helper()
	a, ok := i.body.Attributes[attr]
	if !ok {
		t.Fatalf("instance %q has no attribute %s", i.key, attr)
	}
	v, diags := a.Expr.Value(i.ctx)
	if diags.HasErrors() {
		t.Fatalf("instance %q attribute %s: %s", i.key, attr, diags)
	}
	return v
}

func (i tfInstance) str(t *testing.T, attr string) string {
	t.Helper()
	v := i.value(t, attr)
	if v.Type() != cty.String {
		t.Fatalf("instance %q attribute %s is %s, want a string", i.key, attr, v.Type().FriendlyName())
	}
	return v.AsString()
}

func (i tfInstance) num(t *testing.T, attr string) int64 {
	t.Helper()
	v := i.value(t, attr)
	if v.Type() != cty.Number {
		t.Fatalf("instance %q attribute %s is %s, want a number", i.key, attr, v.Type().FriendlyName())
	}
	n, _ := v.AsBigFloat().Int64()
	return n
}

func (i tfInstance) boolean(t *testing.T, attr string) bool {
	t.Helper()
	v := i.value(t, attr)
	if v.Type() != cty.Bool {
		t.Fatalf("instance %q attribute %s is %s, want a bool", i.key, attr, v.Type().FriendlyName())
	}
	return v.True()
}

// nested returns the one nested block typ of the instance's body, as an instance.
func (i tfInstance) nested(t *testing.T, typ string) tfInstance {
	t.Helper()
	var found []*hclsyntax.Block
	for _, b := range i.body.Blocks {
		if b.Type == typ {
			found = append(found, b)
		}
	}
	if len(found) != 1 {
		t.Fatalf("instance %q has %d %s blocks, want 1", i.key, len(found), typ)
	}
	return tfInstance{key: i.key, body: found[0].Body, ctx: i.ctx}
}

func TestTerraformIsFormatted(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(tfDir, "*.tf"))
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(hclwrite.Format(src), src) {
			t.Errorf("%s is not formatted as terraform fmt would", f)
		}
	}
}

func TestTerraformMatchesGenerators(t *testing.T) {
	topo := bus.Topology{Prefix: "prodstack"}
	m := loadTerraform(t, topo.Prefix)
	topicARN := func(et string) string { return m.topicARN(topo.TopicName(et)) }

	t.Run("topics", func(t *testing.T) {
		var got []string
		for _, i := range m.instances(t, "aws_sns_topic", "event") {
			name := i.str(t, "name")
			if want := topo.TopicName(i.key); name != want {
				t.Errorf("topic for %s is %s, want %s", i.key, name, want)
			}
			got = append(got, i.key)
		}
		if want := slices.Sorted(slices.Values(bus.EventTypes)); !slices.Equal(slices.Sorted(slices.Values(got)), want) {
			t.Errorf("topics for %v, want %v", got, want)
		}
	})

	t.Run("queues and DLQs", func(t *testing.T) {
		want := map[string]string{} // queue => DLQ
		for _, s := range topo.Subscriptions() {
			want[s.Queue] = s.DLQ
		}
		for _, svc := range bus.TimerServices {
			want[topo.TimerQueueName(svc)] = bus.DLQName(topo.TimerQueueName(svc))
		}
		want[topo.EC2EventsQueueName()] = bus.DLQName(topo.EC2EventsQueueName())
		dlqs := make(map[string]tfInstance)
		for _, i := range m.instances(t, "aws_sqs_queue", "dlq") {
			dlqs[i.key] = i
		}
		got := map[string]string{}
		for _, q := range m.instances(t, "aws_sqs_queue", "queue") {
			name := q.str(t, "name")
			d, ok := dlqs[q.key]
			if !ok {
				t.Errorf("queue %s has no DLQ", name)
				continue
			}
			dlq := d.str(t, "name")
			got[name] = dlq

			for _, c := range []struct {
				inst       tfInstance
				attr       string
				want       int64
				queue, dlq bool
			}{
				{q, "visibility_timeout_seconds", queueVisibilityTimeout, true, false},
				{q, "message_retention_seconds", queueRetention, true, false},
				{q, "receive_wait_time_seconds", receiveWaitTime, true, false},
				{d, "visibility_timeout_seconds", queueVisibilityTimeout, false, true},
				{d, "message_retention_seconds", dlqRetention, false, true},
				{d, "receive_wait_time_seconds", receiveWaitTime, false, true},
			} {
				if n := c.inst.num(t, c.attr); n != c.want {
					t.Errorf("%s %s = %d, want %d", c.inst.key, c.attr, n, c.want)
				}
			}
			redrive, err := RedrivePolicy(m.queueARN(dlq), bus.MaxReceiveCount)
			if err != nil {
				t.Fatal(err)
			}
			if rp := q.str(t, "redrive_policy"); rp != string(redrive) {
				t.Errorf("%s redrive_policy = %s, want %s", name, rp, redrive)
			}
			if _, ok := d.body.Attributes["redrive_policy"]; ok {
				t.Errorf("DLQ %s has a redrive policy", dlq)
			}
		}
		if len(got) != len(want) {
			t.Errorf("terraform declares %d queues, Up %d:\n%v\n%v", len(got), len(want), got, want)
		}
		for q, d := range want {
			if got[q] != d {
				t.Errorf("queue %s: terraform DLQ %q, want %q", q, got[q], d)
			}
		}
	})

	t.Run("queue policies", func(t *testing.T) {
		bySub := make(map[string]bus.Subscription)
		for _, s := range topo.Subscriptions() {
			bySub[s.Queue] = s
		}
		var got []string
		for _, i := range m.instances(t, "aws_sqs_queue_policy", "from_topic") {
			url := i.str(t, "queue_url")
			queue := url[strings.LastIndex(url, "/")+1:]
			got = append(got, queue)
			s, ok := bySub[queue]
			if !ok {
				t.Errorf("policy on %s, which Up gives none", queue)
				continue
			}
			want, err := QueuePolicy(m.queueARN(queue), topicARN(s.EventType))
			if err != nil {
				t.Fatal(err)
			}
			if p := i.str(t, "policy"); !sameJSON(p, string(want)) {
				t.Errorf("%s policy:\n%s\nwant\n%s", queue, p, want)
			}
		}
		if len(got) != len(bySub) {
			t.Errorf("policies on %v, want one on each of %d subscribed queues", got, len(bySub))
		}
	})

	t.Run("subscriptions", func(t *testing.T) {
		want := make(map[string]bool)
		for _, s := range topo.Subscriptions() {
			want[topicARN(s.EventType)+" -> "+m.queueARN(s.Queue)] = true
		}
		got := make(map[string]bool)
		for _, i := range m.instances(t, "aws_sns_topic_subscription", "queue") {
			got[i.str(t, "topic_arn")+" -> "+i.str(t, "endpoint")] = true
			if p := i.str(t, "protocol"); p != "sqs" {
				t.Errorf("%s protocol %s", i.key, p)
			}
			if !i.boolean(t, "raw_message_delivery") {
				t.Errorf("%s without raw_message_delivery", i.key)
			}
		}
		if !maps.Equal(got, want) {
			t.Errorf("subscriptions:\n got %v\nwant %v", got, want)
		}
	})

	t.Run("ledger table", func(t *testing.T) {
		tables := m.instances(t, "aws_dynamodb_table", "ledger")
		if len(tables) != 1 {
			t.Fatalf("%d ledger tables, want 1", len(tables))
		}
		tb := tables[0]
		if got, want := tb.str(t, "name"), topo.LedgerTableName(); got != want {
			t.Errorf("ledger table %s, want %s", got, want)
		}
		if got := tb.str(t, "billing_mode"); got != "PAY_PER_REQUEST" {
			t.Errorf("billing mode %s, want PAY_PER_REQUEST (infra up's)", got)
		}
		if got := tb.str(t, "hash_key"); got != ledger.AttrKey {
			t.Errorf("hash key %s, want %s", got, ledger.AttrKey)
		}
		if a := tb.nested(t, "attribute"); a.str(t, "name") != ledger.AttrKey || a.str(t, "type") != "S" {
			t.Errorf("key attribute %s %s, want %s S", a.str(t, "name"), a.str(t, "type"), ledger.AttrKey)
		}
		if ttl := tb.nested(t, "ttl"); ttl.str(t, "attribute_name") != ledger.AttrExpires || !ttl.boolean(t, "enabled") {
			t.Errorf("TTL on %s enabled=%v, want on %s", ttl.str(t, "attribute_name"), ttl.boolean(t, "enabled"), ledger.AttrExpires)
		}
	})

	t.Run("prefix validation", func(t *testing.T) {
		v := m.blocksOf("variable", "prefix")
		if len(v) != 1 {
			t.Fatal("no variable prefix")
		}
		validation := tfInstance{key: "prefix", body: v[0].Body}.nested(t, "validation")
		for _, p := range []string{"sortie", "a", "prod-eu-1", "abcdefghijklmnopqrst", "abcdefghijklmnopqrstu", "Sortie", "1abc", "", "a_b", "a.b", "a-"} {
			validation.ctx = loadTerraform(t, p).ctx
			ok := validation.boolean(t, "condition")
			if want := (bus.Topology{Prefix: p}).Validate() == nil; ok != want {
				t.Errorf("prefix %q: terraform accepts %v, Topology.Validate %v", p, ok, want)
			}
		}
	})
}
