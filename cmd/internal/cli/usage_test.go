package cli

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// TestUsagesHaveNoBackquotes checks the shared flags' usages: pflag takes a
// `quoted` word in a usage for the name of the flag's value, so --help would
// print it in place of the value's type.
func TestUsagesHaveNoBackquotes(t *testing.T) {
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	new(LogFlags).Add(fs)
	fs.VisitAll(func(f *pflag.Flag) {
		if strings.Contains(f.Usage, "`") {
			name, _ := pflag.UnquoteUsage(f)
			t.Errorf("--%s: its usage has a backquote, so --help names its value %q", f.Name, name)
		}
	})
}
