//go:build !linux

package sshhost

import "syscall"

// groupRunning reports whether process group pgid still has members.
// Without /proc, zombies awaiting their reaper count as members.
func groupRunning(pgid int) bool {
	return syscall.Kill(-pgid, 0) == nil
}
