// Package tfmodule evaluates a Terraform module's HCL without Terraform: variables (defaults
// and overrides), locals, and the attributes of every resource and data source, with made-up
// stand-ins for what only AWS knows (ARNs, ids, account, region). Sortie's tests use it to
// hold deployments/terraform to the Go code: names from bus.Topology, policies against the
// calls the services make, task definitions against the roles and secrets declared.
package tfmodule

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/ext/tryfunc"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
	"github.com/zclconf/go-cty/cty/function"
	"github.com/zclconf/go-cty/cty/function/stdlib"
)

// Module is a parsed and evaluated Terraform module.
type Module struct {
	Files   map[string][]byte
	Account string
	Region  string

	blocks    []*hclsyntax.Block
	vars      map[string]cty.Value
	locals    map[string]cty.Value
	resources map[string]map[string]cty.Value // "resource.<type>" or "data.<type>" => name => value
	instances map[string][]Instance           // "<type>.<name>" => instances
}

// Instance is one instance of a resource: one for_each key, one count index, or the only one.
type Instance struct {
	Type, Name string
	// Key is the for_each key ("" without for_each; the index with count).
	Key  string
	Body *hclsyntax.Body
	ctx  *hcl.EvalContext
	iter map[string]cty.Value // each or count
	// computed holds what the provider would compute (arn, id, ...), made up from the name.
	computed map[string]cty.Value
}

// Load parses every .tf file of dir and evaluates it: vars override the variables' defaults
// (a variable without default must be given), account and the region variable stand in for
// data.aws_caller_identity and data.aws_region.
func Load(dir, account string, vars map[string]cty.Value) (*Module, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.tf"))
	if err != nil || len(files) == 0 {
		return nil, fmt.Errorf("no .tf files in %s: %v", dir, err)
	}
	m := &Module{Files: map[string][]byte{}, Account: account, vars: map[string]cty.Value{}, locals: map[string]cty.Value{},
		resources: map[string]map[string]cty.Value{}, instances: map[string][]Instance{}}
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		m.Files[f] = src
		file, diags := hclsyntax.ParseConfig(src, f, hcl.InitialPos)
		if diags.HasErrors() {
			return nil, fmt.Errorf("parsing %s: %s", f, diags)
		}
		m.blocks = append(m.blocks, file.Body.(*hclsyntax.Body).Blocks...)
	}
	var errs []error
	for _, b := range m.BlocksOf("variable") {
		name := b.Labels[0]
		if v, ok := vars[name]; ok {
			m.vars[name] = v
			continue
		}
		d, ok := b.Body.Attributes["default"]
		if !ok {
			errs = append(errs, fmt.Errorf("variable %s has no default: give it", name))
			continue
		}
		v, diags := d.Expr.Value(nil)
		if diags.HasErrors() {
			errs = append(errs, fmt.Errorf("variable %s default: %s", name, diags))
		}
		m.vars[name] = v
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	m.Region = "us-east-1"
	if r, ok := m.vars["region"]; ok && r.Type() == cty.String {
		m.Region = r.AsString()
	}
	if err := m.resolve(); err != nil {
		return nil, err
	}
	m.finish()
	return m, nil
}

// BlocksOf returns the top-level blocks of typ whose labels start with labels.
func (m *Module) BlocksOf(typ string, labels ...string) []*hclsyntax.Block {
	var out []*hclsyntax.Block
	for _, b := range m.blocks {
		if b.Type == typ && len(b.Labels) >= len(labels) && slices.Equal(b.Labels[:len(labels)], labels) {
			out = append(out, b)
		}
	}
	return out
}

// Var returns a variable's value.
func (m *Module) Var(name string) cty.Value { return m.vars[name] }

// Local returns a local's value.
func (m *Module) Local(name string) (cty.Value, bool) {
	v, ok := m.locals[name]
	return v, ok
}

// Instances returns the instances of resource typ.name (nil when it is not declared).
func (m *Module) Instances(typ, name string) []Instance { return m.instances[typ+"."+name] }

// ResourcesOf returns every instance of every resource of typ.
func (m *Module) ResourcesOf(typ string) []Instance {
	var out []Instance
	for _, k := range slices.Sorted(maps.Keys(m.instances)) {
		if strings.HasPrefix(k, typ+".") {
			out = append(out, m.instances[k]...)
		}
	}
	return out
}

// Declared reports whether some resource of typ has attr equal to value: "is a role named
// X declared".
func (m *Module) Declared(typ, attr, value string) bool {
	for _, i := range m.ResourcesOf(typ) {
		if s, err := i.String(attr); err == nil && s == value {
			return true
		}
	}
	return false
}

// Value evaluates one attribute of the instance.
func (i Instance) Value(attr string) (cty.Value, error) {
	a, ok := i.Body.Attributes[attr]
	if !ok {
		if v, ok := i.computed[attr]; ok {
			return v, nil
		}
		return cty.NilVal, fmt.Errorf("%s has no attribute %s", i, attr)
	}
	v, diags := a.Expr.Value(i.ctx)
	if diags.HasErrors() {
		return cty.NilVal, fmt.Errorf("%s.%s: %s", i, attr, diags)
	}
	return v, nil
}

// String evaluates a string attribute.
func (i Instance) String(attr string) (string, error) {
	v, err := i.Value(attr)
	if err != nil {
		return "", err
	}
	if v, err = convert.Convert(v, cty.String); err != nil || v.IsNull() {
		return "", fmt.Errorf("%s.%s is not a string", i, attr)
	}
	return v.AsString(), nil
}

// Blocks returns the nested blocks of typ, as instances evaluating in the same context.
func (i Instance) Blocks(typ string) []Instance {
	var out []Instance
	for _, b := range i.Body.Blocks {
		if b.Type == typ {
			out = append(out, Instance{Type: i.Type, Name: i.Name + "." + typ, Key: i.Key, Body: b.Body, ctx: i.ctx, iter: i.iter})
		}
	}
	return out
}

func (i Instance) addr() string {
	if i.Key == "" {
		return i.Type + "." + i.Name
	}
	return fmt.Sprintf("%s.%s[%q]", i.Type, i.Name, i.Key)
}

// Format makes Instance print as its Terraform address.
func (i Instance) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(i.addr())) }

// resolve evaluates locals and resources until nothing more resolves: Terraform orders
// them by reference; here whatever evaluates is taken, pass after pass.
func (m *Module) resolve() error {
	type item struct {
		local string
		expr  hcl.Expression
		block *hclsyntax.Block
	}
	var pending []item
	for _, b := range m.BlocksOf("locals") {
		for name, a := range b.Body.Attributes {
			pending = append(pending, item{local: name, expr: a.Expr})
		}
	}
	for _, b := range m.blocks {
		if (b.Type == "resource" || b.Type == "data") && len(b.Labels) == 2 {
			pending = append(pending, item{block: b})
		}
	}
	lenient := false
	for len(pending) > 0 {
		var next []item
		var lastErr error
		for _, it := range pending {
			ctx := m.context()
			if it.block == nil {
				v, diags := it.expr.Value(ctx)
				if diags.HasErrors() {
					next, lastErr = append(next, it), fmt.Errorf("local.%s: %s", it.local, diags)
					continue
				}
				m.locals[it.local] = v
				continue
			}
			if err := m.addBlock(it.block, ctx, lenient); err != nil {
				next, lastErr = append(next, it), err
			}
		}
		if len(next) == len(pending) {
			if lenient {
				return fmt.Errorf("%d locals or resources do not evaluate, e.g. %v", len(next), lastErr)
			}
			lenient = true
		} else {
			lenient = false
		}
		pending = next
	}
	return nil
}

// addBlock expands a resource or data block and records its instances and stand-in values.
// Strict: every attribute must evaluate; lenient: those that do.
func (m *Module) addBlock(b *hclsyntax.Block, ctx *hcl.EvalContext, lenient bool) error {
	typ, name := b.Labels[0], b.Labels[1]
	var insts []Instance
	switch {
	case b.Body.Attributes["for_each"] != nil:
		v, diags := b.Body.Attributes["for_each"].Expr.Value(ctx)
		if diags.HasErrors() {
			return fmt.Errorf("%s.%s for_each: %s", typ, name, diags)
		}
		for it := v.ElementIterator(); it.Next(); {
			k, ev := it.Element()
			if v.Type().IsSetType() || v.Type().IsListType() || v.Type().IsTupleType() {
				k = ev
			}
			c := ctx.NewChild()
			c.Variables = map[string]cty.Value{"each": cty.ObjectVal(map[string]cty.Value{"key": k, "value": ev})}
			insts = append(insts, Instance{Type: typ, Name: name, Key: k.AsString(), Body: b.Body, ctx: c, iter: c.Variables})
		}
	case b.Body.Attributes["count"] != nil:
		v, diags := b.Body.Attributes["count"].Expr.Value(ctx)
		if diags.HasErrors() {
			return fmt.Errorf("%s.%s count: %s", typ, name, diags)
		}
		n, _ := v.AsBigFloat().Int64()
		for idx := range n {
			c := ctx.NewChild()
			c.Variables = map[string]cty.Value{"count": cty.ObjectVal(map[string]cty.Value{"index": cty.NumberIntVal(idx)})}
			insts = append(insts, Instance{Type: typ, Name: name, Key: fmt.Sprint(idx), Body: b.Body, ctx: c, iter: c.Variables})
		}
	default:
		insts = []Instance{{Type: typ, Name: name, Body: b.Body, ctx: ctx}}
	}
	values := map[string]cty.Value{}
	var list []cty.Value
	for j, i := range insts {
		attrs := map[string]cty.Value{}
		for an, a := range i.Body.Attributes {
			if an == "for_each" || an == "count" || an == "depends_on" || an == "lifecycle" {
				continue
			}
			v, diags := a.Expr.Value(i.ctx)
			if diags.HasErrors() {
				if !lenient {
					return fmt.Errorf("%s.%s: %s", i, an, diags)
				}
				continue
			}
			attrs[an] = v
		}
		insts[j].computed = m.standIn(b.Type, typ, name, i.Key, attrs)
		maps.Copy(attrs, insts[j].computed)
		values[i.Key] = cty.ObjectVal(attrs)
		list = append(list, cty.ObjectVal(attrs))
	}
	kind := b.Type + "." + typ
	if m.resources[kind] == nil {
		m.resources[kind] = map[string]cty.Value{}
	}
	switch {
	case b.Body.Attributes["for_each"] != nil:
		m.resources[kind][name] = cty.ObjectVal(values)
	case b.Body.Attributes["count"] != nil:
		m.resources[kind][name] = cty.TupleVal(list)
	default:
		m.resources[kind][name] = values[""]
	}
	if b.Type == "resource" {
		m.instances[typ+"."+name] = insts // bound to the final context by finish
	}
	return nil
}

// context is the evaluation context of the current state.
func (m *Module) context() *hcl.EvalContext {
	vars := map[string]cty.Value{
		"var":   cty.ObjectVal(m.vars),
		"local": cty.ObjectVal(m.locals),
	}
	data := map[string]cty.Value{}
	for kind, byName := range m.resources {
		v := cty.ObjectVal(byName)
		if t, ok := strings.CutPrefix(kind, "data."); ok {
			data[t] = v
		} else {
			vars[strings.TrimPrefix(kind, "resource.")] = v
		}
	}
	vars["data"] = cty.ObjectVal(data)
	return &hcl.EvalContext{Variables: vars, Functions: functions}
}

// finish binds every instance to the final context, so its attributes see every resource.
func (m *Module) finish() {
	ctx := m.context()
	for _, insts := range m.instances {
		for j, i := range insts {
			c := ctx
			if i.iter != nil {
				c = ctx.NewChild()
				c.Variables = i.iter
			}
			insts[j].ctx = c
		}
	}
}

// standIn makes up what only the provider would know: ids and ARNs, from the name.
func (m *Module) standIn(kind, typ, name, key string, attrs map[string]cty.Value) map[string]cty.Value {
	s := func(a string) string {
		if v, ok := attrs[a]; ok && v.Type() == cty.String && !v.IsNull() {
			return v.AsString()
		}
		return ""
	}
	A, R := m.Account, m.Region
	out := map[string]cty.Value{}
	set := func(kv ...string) {
		for i := 0; i+1 < len(kv); i += 2 {
			out[kv[i]] = cty.StringVal(kv[i+1])
		}
	}
	label := name
	if key != "" {
		label = name + "-" + key
	}
	if kind == "data" {
		switch typ {
		case "aws_caller_identity":
			set("account_id", A, "id", A, "arn", "arn:aws:iam::"+A+":root")
		case "aws_region":
			set("name", R, "region", R, "id", R)
		case "aws_partition":
			set("partition", "aws", "id", "aws")
		}
		return out
	}
	switch typ {
	case "aws_sns_topic":
		arn := "arn:aws:sns:" + R + ":" + A + ":" + s("name")
		set("arn", arn, "id", arn)
	case "aws_sqs_queue":
		url := "https://sqs." + R + ".amazonaws.com/" + A + "/" + s("name")
		set("arn", "arn:aws:sqs:"+R+":"+A+":"+s("name"), "id", url, "url", url)
	case "aws_s3_bucket":
		set("arn", "arn:aws:s3:::"+s("bucket"), "id", s("bucket"))
	case "aws_kms_key":
		set("key_id", label, "id", label, "arn", "arn:aws:kms:"+R+":"+A+":key/"+label)
	case "aws_iam_role":
		set("arn", "arn:aws:iam::"+A+":role/"+s("name"), "id", s("name"), "unique_id", "AROA"+strings.ToUpper(label))
	case "aws_iam_instance_profile":
		set("arn", "arn:aws:iam::"+A+":instance-profile/"+s("name"), "id", s("name"))
	case "aws_secretsmanager_secret":
		arn := "arn:aws:secretsmanager:" + R + ":" + A + ":secret:" + s("name") + "-AbCdEf"
		set("arn", arn, "id", arn)
	case "aws_ecs_cluster":
		arn := "arn:aws:ecs:" + R + ":" + A + ":cluster/" + s("name")
		set("arn", arn, "id", arn)
	case "aws_ecs_task_definition":
		set("arn", "arn:aws:ecs:"+R+":"+A+":task-definition/"+s("family")+":1", "id", s("family"), "revision", "1")
	case "aws_ecs_service":
		set("id", "arn:aws:ecs:"+R+":"+A+":service/"+s("name"))
	case "aws_cloudwatch_log_group":
		set("arn", "arn:aws:logs:"+R+":"+A+":log-group:"+s("name"), "id", s("name"))
	case "aws_cloudwatch_event_rule": // on the default bus, whose rules' ARNs do not name it
		set("arn", "arn:aws:events:"+R+":"+A+":rule/"+s("name"), "id", s("name"))
	case "aws_dynamodb_table":
		set("arn", "arn:aws:dynamodb:"+R+":"+A+":table/"+s("name"), "id", s("name"))
	case "random_bytes":
		set("base64", "c3RhbmQtaW4tc2VjcmV0LXN0YW5kLWluLXNlY3JldA==", "hex", "7374616e642d696e", "id", label)
	default:
		if _, ok := attrs["id"]; !ok {
			set("id", typ+"."+label)
		}
		if _, ok := attrs["arn"]; !ok {
			set("arn", "arn:aws:"+typ+":"+R+":"+A+":"+label)
		}
	}
	return out
}

var functions = map[string]function.Function{
	"jsonencode": stdlib.JSONEncodeFunc,
	"jsondecode": stdlib.JSONDecodeFunc,
	"merge":      stdlib.MergeFunc,
	"regex":      stdlib.RegexFunc,
	"can":        tryfunc.CanFunc,
	"try":        tryfunc.TryFunc,
	"concat":     stdlib.ConcatFunc,
	"contains":   stdlib.ContainsFunc,
	"keys":       stdlib.KeysFunc,
	"values":     stdlib.ValuesFunc,
	"length":     stdlib.LengthFunc,
	"lookup":     stdlib.LookupFunc,
	"split":      stdlib.SplitFunc,
	"join":       stdlib.JoinFunc,
	"flatten":    stdlib.FlattenFunc,
	"distinct":   stdlib.DistinctFunc,
	"format":     stdlib.FormatFunc,
	"replace":    stdlib.ReplaceFunc,
	"lower":      stdlib.LowerFunc,
	"upper":      stdlib.UpperFunc,
	"min":        stdlib.MinFunc,
	"max":        stdlib.MaxFunc,
	"coalesce":   stdlib.CoalesceFunc,
	"sort":       stdlib.SortFunc,
	"toset":      convertFunc(cty.Set(cty.DynamicPseudoType)),
	"tolist":     convertFunc(cty.List(cty.DynamicPseudoType)),
	"tomap":      convertFunc(cty.Map(cty.DynamicPseudoType)),
	"tostring":   convertFunc(cty.String),
	"startswith": stringPredicate(strings.HasPrefix),
	"endswith":   stringPredicate(strings.HasSuffix),
	"alltrue":    boolsFunc(true),
	"anytrue":    boolsFunc(false),
}

func convertFunc(want cty.Type) function.Function {
	return function.New(&function.Spec{
		Params: []function.Parameter{{Name: "v", Type: cty.DynamicPseudoType}},
		Type: func(args []cty.Value) (cty.Type, error) {
			v, err := convert.Convert(args[0], want)
			if err != nil {
				return cty.NilType, err
			}
			return v.Type(), nil
		},
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) { return convert.Convert(args[0], want) },
	})
}

func stringPredicate(f func(s, p string) bool) function.Function {
	return function.New(&function.Spec{
		Params: []function.Parameter{{Name: "s", Type: cty.String}, {Name: "p", Type: cty.String}},
		Type:   function.StaticReturnType(cty.Bool),
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			return cty.BoolVal(f(args[0].AsString(), args[1].AsString())), nil
		},
	})
}

// boolsFunc is alltrue (all) or anytrue (!all).
func boolsFunc(all bool) function.Function {
	return function.New(&function.Spec{
		Params: []function.Parameter{{Name: "l", Type: cty.DynamicPseudoType}},
		Type:   function.StaticReturnType(cty.Bool),
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			for it := args[0].ElementIterator(); it.Next(); {
				_, v := it.Element()
				if v.True() != all {
					return cty.BoolVal(!all), nil
				}
			}
			return cty.BoolVal(all), nil
		},
	})
}
