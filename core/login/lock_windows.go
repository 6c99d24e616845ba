//go:build windows

package login

import (
	"io/fs"
	"os"

	"golang.org/x/sys/windows"
)

// lockFile takes an exclusive lock on f's first byte, waiting for its
// holder.
func lockFile(f *os.File) error {
	return windows.LockFileEx(windows.Handle(f.Fd()), windows.LOCKFILE_EXCLUSIVE_LOCK, 0, 1, 0, new(windows.Overlapped))
}

func unlockFile(f *os.File) error {
	return windows.UnlockFileEx(windows.Handle(f.Fd()), 0, 1, 0, new(windows.Overlapped))
}

// checkPrivate does nothing on Windows: file modes do not say who may read
// a file there, and a file under the user's profile is private to them by
// its inherited ACL.
func checkPrivate(string, fs.FileInfo) error { return nil }
