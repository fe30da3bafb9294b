//go:build race

package sshhost_test

// raceEnabled: the race detector multiplies memory use, so RSS bounds do not apply.
const raceEnabled = true
