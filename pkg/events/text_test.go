package events

import (
	"fmt"
	"strings"
	"testing"
)

func TestCleanText(t *testing.T) {
	tests := []struct {
		name, in string
		max      int
		want     string
	}{
		{"clean", "hello", 10, "hello"},
		{"invalid UTF-8", "a\xffb", 10, "a\uFFFDb"},
		{"NUL", "a\x00b", 10, "ab"},
		{"cut", "abcdef", 3, "abc"},
		{"cut on a rune boundary", "aé", 2, "a"}, // é is 2 bytes
		{"cut at zero", "é", 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := CleanText(tt.in, tt.max); got != tt.want {
				t.Fatalf("CleanText(%q, %d) = %q, want %q", tt.in, tt.max, got, tt.want)
			}
		})
	}
}

func TestCleanTail(t *testing.T) {
	if got := CleanTail(""); got != nil {
		t.Fatalf("CleanTail(\"\") = %q, want nil", got)
	}
	if got := CleanTail("a\r\nb\n"); strings.Join(got, "|") != "a|b" {
		t.Fatalf("CleanTail = %q, want [a b]", got)
	}
	var b strings.Builder
	for i := range 120 {
		fmt.Fprintf(&b, "line %d \x00\xfe %s\n", i, strings.Repeat("x", i*50))
	}
	got := CleanTail(b.String())
	if len(got) != MaxTailLines || !strings.HasPrefix(got[0], "line 70 ") || !strings.HasPrefix(got[49], "line 119 ") {
		t.Fatalf("kept %d lines, first %.10q, last %.10q; want lines 70..119", len(got), got[0], got[len(got)-1])
	}
	// Whatever the output, the tail is valid in an event.
	e := validJobFinished()
	e.LogTail = got
	if err := e.Validate(); err != nil {
		t.Fatalf("cleaned tail is invalid: %v", err)
	}
}
