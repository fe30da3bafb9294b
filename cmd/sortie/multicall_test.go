package main

import (
	"slices"
	"testing"
)

func TestCLIArgsRunsWorkerWhenInvokedAsSortieWorker(t *testing.T) {
	tests := []struct {
		name string
		argv []string
		want []string
	}{
		{"sortie", []string{"/opt/bin/sortie", "infra", "up"}, []string{"infra", "up"}},
		{"sortie-worker by PATH", []string{"sortie-worker", "--bucket", "b", "--queue", "q"}, []string{"worker", "--bucket", "b", "--queue", "q"}},
		{"sortie-worker by path", []string{"/srv/bin/sortie-worker", "--help"}, []string{"worker", "--help"}},
		{"other name", []string{"./sortie-worker2", "dev"}, []string{"dev"}},
		{"no argv", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := cliArgs(tt.argv); !slices.Equal(got, tt.want) {
				t.Errorf("cliArgs(%q) = %q, want %q", tt.argv, got, tt.want)
			}
		})
	}
}
