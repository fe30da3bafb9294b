package queryform

import (
	"net/url"
	"slices"
	"testing"
)

func TestList(t *testing.T) {
	form := url.Values{
		"InstanceId.10": {"i-c"}, "InstanceId.2": {"i-b"}, "InstanceId.1": {"i-a"},
		"InstanceId.0": {"zero is not an index"}, "InstanceId.x": {"nor is x"}, "InstanceIdX.3": {"another prefix"},
		"Filter.1.Name": {"tag:a"}, "Filter.3.Value.1": {"v"},
	}
	for _, tt := range []struct {
		prefix string
		want   []string
		idx    []int
	}{
		{"InstanceId", []string{"i-a", "i-b", "i-c"}, []int{1, 2, 10}},
		{"Filter", nil, []int{1, 3}},
		{"Missing", nil, []int{}},
	} {
		if got := List(form, tt.prefix); !slices.Equal(got, tt.want) {
			t.Errorf("List(%s) = %q, want %q", tt.prefix, got, tt.want)
		}
		if got := Indices(form, tt.prefix); !slices.Equal(got, tt.idx) {
			t.Errorf("Indices(%s) = %v, want %v", tt.prefix, got, tt.idx)
		}
	}
}
