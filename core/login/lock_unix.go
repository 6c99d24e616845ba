//go:build unix

package login

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// lockFile takes an exclusive flock on f, waiting for its holder.
func lockFile(f *os.File) error {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

func unlockFile(f *os.File) error { return unix.Flock(int(f.Fd()), unix.LOCK_UN) }

// checkPrivate refuses a cache file that group or others may read or
// write.
func checkPrivate(path string, st fs.FileInfo) error {
	if st.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("login: refusing the token cache file %s: its mode is %04o, so other users may read your tokens; fix it with `chmod 600 %s` (and log in again if someone else may have read it)",
			path, st.Mode().Perm(), path)
	}
	return nil
}
