package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestInstanceEnvPrependsDirectoriesToPATH(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	file := filepath.Join(a, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Chdir(a)
	if err := os.Mkdir("rel", 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		dirs    []string
		want    []string
		wantErr string
	}{
		{"none", nil, nil, ""},
		{"repeated", []string{a, b}, []string{"PATH=" + a + ":" + b + ":" + instanceBasePath}, ""},
		{"colon list", []string{a + ":" + b}, []string{"PATH=" + a + ":" + b + ":" + instanceBasePath}, ""},
		{"relative made absolute", []string{"rel"}, []string{"PATH=" + filepath.Join(a, "rel") + ":" + instanceBasePath}, ""},
		{"missing", []string{filepath.Join(b, "missing")}, nil, "missing"},
		{"not a directory", []string{file}, nil, "not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := instanceEnv(tt.dirs)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("want an error naming %q, got %v (env %q)", tt.wantErr, err, got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("instanceEnv(%q) = %q, want %q", tt.dirs, got, tt.want)
			}
		})
	}
}
