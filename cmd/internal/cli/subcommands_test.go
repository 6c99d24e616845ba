package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// A group command given a word that names none of its subcommands fails,
// naming the one it was probably meant to be; bare, it prints its help.
func TestRefuseUnknownSubcommands(t *testing.T) {
	newRoot := func() *cobra.Command {
		root := &cobra.Command{Use: "tether-relay"}
		group := &cobra.Command{Use: "cluster"}
		group.AddCommand(&cobra.Command{Use: "list", RunE: func(*cobra.Command, []string) error { return nil }})
		root.AddCommand(group)
		RefuseUnknownSubcommands(root)
		return root
	}
	run := func(args ...string) (string, error) {
		root := newRoot()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs(args)
		err := root.Execute()
		return out.String(), err
	}
	_, err := run("cluster", "ls")
	if err == nil || !strings.Contains(err.Error(), `unknown command "ls" for "tether-relay cluster"`) || !strings.Contains(err.Error(), "did you mean list?") {
		t.Fatalf("cluster ls: %v", err)
	}
	if out, err := run("cluster"); err != nil || !strings.Contains(out, "Available Commands") {
		t.Fatalf("bare cluster: %v\n%s", err, out)
	}
	if _, err := run("cluster", "list"); err != nil {
		t.Fatalf("cluster list: %v", err)
	}
}
