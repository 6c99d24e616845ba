package core_test

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const mod = "github.com/tether-k8s/tether/"

// Packages by side (docs/architecture.md, "Layers"). The contract packages
// are what more than one side imports; each side may import them, never
// another side's packages.
var (
	relaySide  = []string{mod + "core/relay", mod + "core/registry", mod + "core/policy"}
	agentSide  = []string{mod + "core/agent", mod + "core/impersonate"}
	callerSide = []string{mod + "core/proxy", mod + "core/login"}
	contracts  = []string{mod + "core/relayapi", mod + "core/clustercert", mod + "core/identity", mod + "core/tokensource",
		mod + "core/kstatus", mod + "core/clusterid", mod + "core/copybuf", mod + "core/tunnel", mod + "core/version"}
	// The relay's store and access-policy engine: nothing outside the relay
	// may link them.
	relayOnlyModules = []string{"go.etcd.io/bbolt", "github.com/google/cel-go"}
)

func concat(lists ...[]string) []string { return slices.Concat(lists...) }

// TestLayering fails when a package or binary depends on another side's
// packages: the picture of caller | relay | cluster is enforced, not only
// drawn. It reads the dependencies with go list, as the build sees them.
func TestLayering(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("the go command is needed to list dependencies")
	}
	tests := []struct {
		pkg       string
		forbidden []string
	}{
		// The caller's side links nothing of the relay's or the agent's.
		{mod + "core/proxy", concat(relaySide, agentSide, relayOnlyModules)},
		{mod + "core/login", concat(relaySide, agentSide, relayOnlyModules)},
		{mod + "cmd/tether-proxy", concat(relaySide, agentSide, relayOnlyModules)},
		// The agent links nothing of the relay's or the caller's. (Its
		// binary links cel-go through kube-apiserver's JWT authenticator,
		// for claim validation rules; core/agent itself does not.)
		{mod + "core/agent", concat(relaySide, callerSide, relayOnlyModules)},
		{mod + "cmd/tether-agent", concat(relaySide, callerSide, []string{"go.etcd.io/bbolt"})},
		// The relay links nothing of the agent's or the caller's.
		{mod + "core/relay", concat(agentSide, callerSide)},
		{mod + "cmd/tether-relay", concat(agentSide, callerSide)},
		// The shared command-line helpers pull no core package into a
		// binary (but the version, a contract package of no side).
		{mod + "cmd/internal/cli", concat(relaySide, agentSide, callerSide, []string{mod + "core/authn", mod + "core/relayapi",
			mod + "core/clustercert", mod + "core/identity", mod + "core/tokensource", mod + "core/tunnel"})},
	}
	for _, c := range contracts {
		tests = append(tests, struct {
			pkg       string
			forbidden []string
		}{c, concat(relaySide, agentSide, callerSide, []string{mod + "core/authn"}, relayOnlyModules)})
	}
	for _, tc := range tests {
		t.Run(strings.TrimPrefix(tc.pkg, mod), func(t *testing.T) {
			out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", tc.pkg).Output()
			if err != nil {
				t.Fatalf("go list -deps %s: %v", tc.pkg, err)
			}
			for _, dep := range strings.Fields(string(out)) {
				for _, f := range tc.forbidden {
					if dep == f || strings.HasPrefix(dep, strings.TrimSuffix(f, "/")+"/") {
						t.Errorf("%s depends on %s, which belongs to another side (see docs/architecture.md, Layers)", tc.pkg, dep)
					}
				}
			}
		})
	}
}
