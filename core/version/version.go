package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Version is set at build time by release builds:
// -ldflags "-X github.com/tether-k8s/tether/core/version.Version=v1.2.3".
// Empty means String reads the build information instead.
var Version string

// String returns this binary's version: Version when set, else the module
// version of a `go install ...@version` build, else the VCS revision of a
// build from a checkout (with "-dirty" for uncommitted changes), else "dev".
func String() string {
	if Version != "" {
		return Version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "dev"
	}
	return fromBuildInfo(bi)
}

func fromBuildInfo(bi *debug.BuildInfo) string {
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if rev == "" {
		return "dev"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	return "dev-" + rev + dirty
}

// Full returns the version with the Go release and the platform, as
// `NAME version` prints it.
func Full(name string) string {
	return fmt.Sprintf("%s %s (%s, %s/%s)", name, String(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
