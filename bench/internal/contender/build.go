package contender

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"time"
)

// build says how a peer's binaries are built: from its nested module under
// bench/peers, so that its dependencies never meet tether's.
type build struct {
	// Module is the nested module's directory under the peers directory.
	Module string
	// Packages are the main packages to build; each binary is named after
	// the last element of its package path, prefixed by Prefix.
	Packages []string
	Prefix   string
	// Toolchain, when set, is the GOTOOLCHAIN to build with (a peer whose
	// go.mod asks for a newer Go than the one installed).
	Toolchain string
}

// builder is a contender built from a nested module.
type builder interface{ build() build }

// Build builds the binaries of the contenders that need any into cacheDir
// (Go's build cache makes a second build take seconds) and returns them by
// name ("frps", "chisel"...), and the build errors by contender name.
func Build(ctx context.Context, cs []Contender, peersDir, cacheDir string, progress io.Writer) (map[string]string, map[string]error) {
	bins, errs := map[string]string{}, map[string]error{}
	for _, c := range cs {
		b, ok := c.(builder)
		if !ok {
			continue
		}
		spec := b.build()
		out, err := filepath.Abs(filepath.Join(cacheDir, "bin", spec.Module))
		if err == nil {
			err = os.MkdirAll(out, 0o755)
		}
		if err != nil {
			errs[c.Name()] = fmt.Errorf("build %s: %w", c.Name(), err)
			continue
		}
		start := time.Now()
		args := append([]string{"build", "-trimpath", "-o", out + "/"}, spec.Packages...)
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Dir = filepath.Join(peersDir, spec.Module)
		cmd.Env = append(os.Environ(), "GOFLAGS=-mod=readonly")
		if spec.Toolchain != "" {
			cmd.Env = append(cmd.Env, "GOTOOLCHAIN="+spec.Toolchain)
		}
		var log bytes.Buffer
		cmd.Stdout, cmd.Stderr = &log, &log
		if err := cmd.Run(); err != nil {
			errs[c.Name()] = fmt.Errorf("go build in %s: %w: %s", cmd.Dir, err, bytes.TrimSpace(log.Bytes()))
			continue
		}
		for _, p := range spec.Packages {
			name := path.Base(p)
			bins[spec.Prefix+name] = filepath.Join(out, name)
		}
		fmt.Fprintf(progress, "bench: built %s in %s\n", c.Name(), time.Since(start).Round(time.Millisecond))
	}
	return bins, errs
}
