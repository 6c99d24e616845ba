//go:build unix

package kubeconfig

import (
	"os"
	"syscall"
)

// keepOwner gives f the owner of fi's file, when it differs and this
// process may (root writing another user's kubeconfig), so the user keeps
// access to it.
func keepOwner(f *os.File, fi os.FileInfo) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || (int(st.Uid) == os.Geteuid() && int(st.Gid) == os.Getegid()) {
		return
	}
	_ = f.Chown(int(st.Uid), int(st.Gid))
}
