package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

func subcommand(t *testing.T, root *cobra.Command, name string) *cobra.Command {
	t.Helper()
	for _, c := range root.Commands() {
		if c.Name() == name {
			return c
		}
	}
	t.Fatalf("no subcommand %s", name)
	return nil
}

// TestKubeconfigFlagSpellings: tether-proxy and tether-proxy kubeconfig
// spell their kubeconfig flags as kubectl does; the root's old spellings
// still work, saying what to use instead.
func TestKubeconfigFlagSpellings(t *testing.T) {
	root := newRootCommand()
	for _, c := range []*cobra.Command{root, subcommand(t, root, "kubeconfig")} {
		for _, name := range []string{"kubeconfig", "context", "overwrite"} {
			if f := c.Flags().Lookup(name); f == nil || f.Deprecated != "" {
				t.Errorf("%s: --%s missing or deprecated", c.CommandPath(), name)
			}
		}
	}
	for _, tc := range []struct {
		args       []string
		flag, want string
		warning    string
	}{
		{[]string{"-f", "/k/config"}, "kubeconfig", "/k/config", "use --kubeconfig"},
		{[]string{"--kubeconfig-file", "/k/config"}, "kubeconfig", "/k/config", "use --kubeconfig"},
		{[]string{"--kube-context", "work"}, "context", "work", "use --context"},
	} {
		root := newRootCommand()
		var errOut bytes.Buffer
		root.SetErr(&errOut)
		root.Flags().SetOutput(&errOut)
		if err := root.ParseFlags(tc.args); err != nil {
			t.Errorf("%v: %v", tc.args, err)
			continue
		}
		f := root.Flags().Lookup(tc.flag)
		if f == nil {
			t.Fatalf("tether-proxy has no --%s", tc.flag)
		}
		if got := f.Value.String(); got != tc.want {
			t.Errorf("%v: --%s is %q, want %q", tc.args, tc.flag, got, tc.want)
		}
		if !strings.Contains(errOut.String(), tc.warning) {
			t.Errorf("%v: printed %q, want a deprecation saying %q", tc.args, errOut.String(), tc.warning)
		}
	}
}

// TestNoFlagThatIsAlwaysRefused: token and kubeconfig (the relay's cluster
// endpoint) cannot carry a service-account token, so they do not list
// --cluster-token-file.
func TestNoFlagThatIsAlwaysRefused(t *testing.T) {
	root := newRootCommand()
	for _, name := range []string{"token", "kubeconfig"} {
		if f := subcommand(t, root, name).Flags().Lookup("cluster-token-file"); f != nil {
			t.Errorf("tether-proxy %s lists --cluster-token-file", name)
		}
	}
	for _, c := range []*cobra.Command{root, subcommand(t, root, "exec")} {
		if c.Flags().Lookup("cluster-token-file") == nil {
			t.Errorf("%s lost --cluster-token-file", c.CommandPath())
		}
	}
}

// TestHelpExamplesNameTheRelayCA: the relay signs its own certificate by
// default, so every example that names a relay also names --relay-ca.
func TestHelpExamplesNameTheRelayCA(t *testing.T) {
	cmds := []*cobra.Command{newRootCommand()}
	cmds = append(cmds, cmds[0].Commands()...)
	for _, c := range cmds {
		for _, line := range strings.Split(c.Long, "\n") {
			if strings.Contains(line, "--relay https://") && !strings.Contains(line, "--relay-ca") {
				t.Errorf("%s --help: an example without --relay-ca: %s", c.CommandPath(), strings.TrimSpace(line))
			}
		}
	}
}
