package events

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"
)

// checkShape walks a syntactically valid body against the Go type it will decode into and
// reports what encoding/json would accept silently or describe without a path: unknown
// keys, keys that match a field only case-insensitively, duplicated keys, and values of
// the wrong JSON type (null included, except for lists, maps and pointers).
func checkShape(data []byte, t reflect.Type) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	w := shapeWalker{dec: dec}
	w.value(t, "")
	if w.syntax != nil {
		return fmt.Errorf("%w: malformed JSON: %v", ErrInvalid, w.syntax)
	}
	return w.c.err()
}

type shapeWalker struct {
	dec    *json.Decoder
	c      checker
	syntax error // the walk stops at the first one
}

func (w *shapeWalker) token() (json.Token, bool) {
	if w.syntax != nil {
		return nil, false
	}
	tok, err := w.dec.Token()
	if err != nil {
		w.syntax = err
		return nil, false
	}
	return tok, true
}

// value consumes one JSON value that should decode into t; a nil t accepts anything.
func (w *shapeWalker) value(t reflect.Type, path string) {
	tok, ok := w.token()
	if !ok {
		return
	}
	if t != nil && t.Kind() == reflect.Pointer {
		if tok == nil {
			return
		}
		t = t.Elem()
	}
	if d, isDelim := tok.(json.Delim); isDelim {
		switch {
		case t == nil:
		case d == '{' && t.Kind() == reflect.Struct && t != timeType:
			w.object(t, path)
			return
		case d == '{' && t.Kind() == reflect.Map:
			w.mapObject(t.Elem(), path)
			return
		case d == '[' && t.Kind() == reflect.Slice:
			w.array(t.Elem(), path)
			return
		default:
			w.c.fail(display(path), "must be %s, got %s", jsonKind(t), describe(tok))
		}
		w.skip(d)
		return
	}
	if t == nil {
		return
	}
	if !scalarFits(t, tok) {
		w.c.fail(display(path), "must be %s, got %s", jsonKind(t), describe(tok))
	}
}

func (w *shapeWalker) object(t reflect.Type, path string) {
	fields := fieldsOf(t)
	seen := map[string]bool{}
	for w.syntax == nil && w.dec.More() {
		tok, ok := w.token()
		if !ok {
			return
		}
		key, _ := tok.(string)
		field := join(path, key)
		ft, known := fields[key]
		switch {
		case seen[key]:
			w.c.fail(field, "duplicate key")
			ft = nil
		case !known:
			w.c.fail(field, "unknown field%s", suggest(fields, key))
		}
		seen[key] = true
		w.value(ft, field)
	}
	w.token() // '}'
}

func (w *shapeWalker) mapObject(elem reflect.Type, path string) {
	seen := map[string]bool{}
	for w.syntax == nil && w.dec.More() {
		tok, ok := w.token()
		if !ok {
			return
		}
		key, _ := tok.(string)
		field := join(path, key)
		if seen[key] {
			w.c.fail(field, "duplicate key")
		}
		seen[key] = true
		w.value(elem, field)
	}
	w.token() // '}'
}

func (w *shapeWalker) array(elem reflect.Type, path string) {
	for i := 0; w.syntax == nil && w.dec.More(); i++ {
		w.value(elem, index(path, i))
	}
	w.token() // ']'
}

// skip consumes the rest of an object or array whose opening delimiter was read.
func (w *shapeWalker) skip(open json.Delim) {
	switch open {
	case '{':
		for w.syntax == nil && w.dec.More() {
			w.token() // key
			w.value(nil, "")
		}
		w.token()
	case '[':
		for w.syntax == nil && w.dec.More() {
			w.value(nil, "")
		}
		w.token()
	}
}

// scalarFits reports whether a scalar token decodes into t without loss.
func scalarFits(t reflect.Type, tok json.Token) bool {
	if t == timeType {
		s, ok := tok.(string)
		if !ok {
			return false
		}
		var parsed time.Time // the decoder's own parser: strict RFC 3339
		return parsed.UnmarshalText([]byte(s)) == nil
	}
	switch t.Kind() {
	case reflect.String:
		_, ok := tok.(string)
		return ok
	case reflect.Bool:
		_, ok := tok.(bool)
		return ok
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, ok := tok.(json.Number)
		if !ok {
			return false
		}
		_, err := strconv.ParseInt(string(n), 10, t.Bits())
		return err == nil
	case reflect.Float32, reflect.Float64:
		n, ok := tok.(json.Number)
		if !ok {
			return false
		}
		_, err := strconv.ParseFloat(string(n), t.Bits())
		return err == nil
	case reflect.Slice, reflect.Map:
		return tok == nil // null: an empty list or map
	}
	return false
}

func jsonKind(t reflect.Type) string {
	if t == timeType {
		return "an RFC 3339 time string"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return fmt.Sprintf("an integer within %d bits", t.Bits())
	case reflect.Float32, reflect.Float64:
		return "a finite number"
	case reflect.Struct, reflect.Map:
		return "an object"
	case reflect.Slice:
		return "an array"
	}
	return t.String()
}

func describe(tok json.Token) string {
	switch v := tok.(type) {
	case nil:
		return "null"
	case json.Delim:
		if v == '{' {
			return "an object"
		}
		return "an array"
	case string:
		return "string " + quote(v)
	case json.Number:
		s := string(v)
		if len(s) > 32 {
			s = s[:32] + "..."
		}
		return "number " + s
	case bool:
		return strconv.FormatBool(v)
	}
	return fmt.Sprint(tok)
}

// join extends a JSON path with an object key, quoting keys that are not identifiers.
func join(path, key string) string {
	if !isIdent(key) {
		return path + "[" + quote(key) + "]"
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

func display(path string) string {
	if path == "" {
		return "body"
	}
	return path
}

func suggest(fields map[string]reflect.Type, key string) string {
	for name := range fields {
		if strings.EqualFold(name, key) {
			return fmt.Sprintf(" (names are case-sensitive: did you mean %q?)", name)
		}
	}
	return ""
}

var fieldCache sync.Map // reflect.Type -> map[string]reflect.Type

// fieldsOf maps the JSON names of a struct's fields, embedded untagged structs flattened
// as encoding/json does, to their types.
func fieldsOf(t reflect.Type) map[string]reflect.Type {
	if m, ok := fieldCache.Load(t); ok {
		return m.(map[string]reflect.Type)
	}
	m := map[string]reflect.Type{}
	for f := range t.Fields() {
		tag := f.Tag.Get("json")
		if !f.IsExported() || tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
			for k, v := range fieldsOf(f.Type) {
				m[k] = v
			}
			continue
		}
		if name == "" {
			name = f.Name
		}
		m[name] = f.Type
	}
	fieldCache.Store(t, m)
	return m
}

// isIdent reports whether s is [A-Za-z_][A-Za-z0-9_]*, a key that needs no quoting.
func isIdent(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '_' && (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (i == 0 || c < '0' || c > '9') {
			return false
		}
	}
	return s != ""
}
