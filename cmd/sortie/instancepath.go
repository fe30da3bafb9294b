package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// instanceBasePath is the PATH an instance's commands get besides --instance-path: the
// local cloud's SSH hosts' own default, a Debian login PATH.
const instanceBasePath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// instanceEnv is the local cloud's extra instance environment for the --instance-path
// directories: a PATH starting with them (made absolute, since instances run in their own
// directories), nil when there are none. Every directory must exist.
func instanceEnv(dirs []string) ([]string, error) {
	var abs []string
	for _, d := range dirs {
		for _, part := range strings.Split(d, ":") {
			if part == "" {
				continue
			}
			a, err := filepath.Abs(part)
			if err != nil {
				return nil, fmt.Errorf("--instance-path %s: %w", part, err)
			}
			fi, err := os.Stat(a)
			if err != nil {
				return nil, fmt.Errorf("--instance-path: %w", err)
			}
			if !fi.IsDir() {
				return nil, fmt.Errorf("--instance-path %s: not a directory", a)
			}
			abs = append(abs, a)
		}
	}
	if len(abs) == 0 {
		return nil, nil
	}
	return []string{"PATH=" + strings.Join(append(abs, instanceBasePath), ":")}, nil
}
