package charts

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
)

// TestArgsAreFlagsOfTheBinaries builds tether-agent and tether-relay from
// this repository and checks the args every rendered Deployment gives them:
// each is a flag the binary's --help lists, with a value of the flag's
// type; and the binary itself parses them, getting as far as reading the
// files the pod would have mounted.
func TestArgsAreFlagsOfTheBinaries(t *testing.T) {
	bin := buildBinaries(t)
	agentFlags := helpFlags(t, runHelp(t, filepath.Join(bin, "tether-agent"), "--help"))
	serveFlags, globalFlags := helpFlagsSplit(t, runHelp(t, filepath.Join(bin, "tether-relay"), "serve", "--help"))
	for name := range globalFlags {
		serveFlags[name] = globalFlags[name]
	}

	for _, tc := range agentCases() {
		t.Run("agent/"+tc.name, func(t *testing.T) {
			r := mustRender(t, agentChart, values(t, append([]string{agentRequired(t)}, tc.values...)...))
			args := expand(container(t, one[*appsv1.Deployment](t, r)).Args)
			checkArgs(t, "tether-agent", args, agentFlags)
			checkParses(t, filepath.Join(bin, "tether-agent"), args)
		})
	}
	for _, tc := range relayCases() {
		t.Run("relay/"+tc.name, func(t *testing.T) {
			r := mustRender(t, relayChart, values(t, append([]string{relayRequired}, tc.values...)...))
			args := expand(container(t, one[*appsv1.Deployment](t, r)).Args)
			i := slices.Index(args, "serve")
			if i < 0 {
				t.Fatalf("args %q: no serve command", args)
			}
			checkArgs(t, "tether-relay", args[:i], globalFlags)
			checkArgs(t, "tether-relay serve", args[i+1:], serveFlags)
			checkParses(t, filepath.Join(bin, "tether-relay"), args)
		})
	}
}

// buildBinaries builds ./cmd/tether-agent and ./cmd/tether-relay of the main module into
// .cache/charts-test (ignored by git), where go build leaves binaries that
// are up to date alone: a warm run takes a second instead of a relink.
func buildBinaries(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to build the binaries whose flags the charts use: %v", err)
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, ".cache", "charts-test")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool, "build", "-buildvcs=false", "-ldflags=-s -w", "-o", dir+string(filepath.Separator), "./cmd/tether-agent", "./cmd/tether-relay")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/tether-agent ./cmd/tether-relay: %v\n%s", err, out)
	}
	return dir
}

func runHelp(t *testing.T, bin string, args ...string) string {
	t.Helper()
	out, err := exec.CommandContext(t.Context(), bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, out)
	}
	return string(out)
}

// flagSpec is what --help says of a flag: its value's type, or "" for a
// boolean, which takes no separate value.
type flagSpec struct{ typ string }

// A pflag help line: "  -h, --help[=true|false]   ..." or
// "      --cluster string   ...".
var helpLine = regexp.MustCompile(`^\s+(?:-[A-Za-z], )?--([a-z0-9][-a-z0-9]*)(\[=[^\]]*\]| ([a-zA-Z]+))?\s`)

func helpFlags(t *testing.T, help string) map[string]flagSpec {
	t.Helper()
	flags := map[string]flagSpec{}
	for _, line := range strings.Split(help, "\n") {
		if m := helpLine.FindStringSubmatch(line); m != nil {
			flags[m[1]] = flagSpec{typ: m[3]}
		}
	}
	if len(flags) == 0 {
		t.Fatalf("found %d flags in the help text:\n%s", len(flags), help)
	}
	return flags
}

// helpFlagsSplit returns a subcommand's own flags and its global flags.
func helpFlagsSplit(t *testing.T, help string) (own, global map[string]flagSpec) {
	t.Helper()
	before, after, ok := strings.Cut(help, "Global Flags:")
	if !ok {
		t.Fatalf("no Global Flags in:\n%s", help)
	}
	return helpFlags(t, before), helpFlags(t, after)
}

// expand substitutes $(VAR) as the kubelet would, with the pod's values.
func expand(args []string) []string {
	podEnv := map[string]string{"POD_NAME": "pod-0", "POD_NAMESPACE": namespace, "POD_IP": "198.18.0.10"}
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = envRef.ReplaceAllStringFunc(a, func(ref string) string {
			if v, ok := podEnv[envRef.FindStringSubmatch(ref)[1]]; ok {
				return v
			}
			return ref
		})
	}
	return out
}

// sizeValue is what cmd/internal/cli.Bytes (the "bytes" flags) accepts: a
// number of bytes with an optional binary unit.
var sizeValue = regexp.MustCompile(`^[0-9]+(Ki|Mi|Gi|Ti)?B?$`)

// checkArgs checks every arg is a flag the binary lists, with a value its
// type accepts.
func checkArgs(t *testing.T, binary string, args []string, flags map[string]flagSpec) {
	t.Helper()
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "--") {
			t.Errorf("%s: arg %q is not a flag", binary, a)
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		spec, ok := flags[name]
		if !ok {
			t.Errorf("%s has no flag --%s (its --help lists %v)", binary, name, keys(flags))
			continue
		}
		if spec.typ == "" {
			if hasValue {
				if _, err := strconv.ParseBool(value); err != nil {
					t.Errorf("%s --%s=%q: not a boolean", binary, name, value)
				}
			}
			continue
		}
		if !hasValue {
			if i+1 >= len(args) || strings.HasPrefix(args[i+1], "--") {
				t.Errorf("%s --%s: no value", binary, name)
				continue
			}
			i++
			value = args[i]
		}
		var err error
		switch spec.typ {
		case "duration":
			_, err = time.ParseDuration(value)
		case "int":
			_, err = strconv.Atoi(value)
		case "bytes":
			if !sizeValue.MatchString(value) {
				err = fmt.Errorf("not a size such as 262144, 256Ki or 4Mi")
			}
		case "string", "strings", "stringArray":
			if value == "" {
				t.Errorf("%s --%s: empty value", binary, name)
			}
		default:
			t.Errorf("%s --%s: checkArgs does not know how to check a %s: teach it", binary, name, spec.typ)
		}
		if err != nil {
			t.Errorf("%s --%s=%q: %v", binary, name, value, err)
		}
	}
}

// checkParses runs the binary with args. It must get past parsing them to
// reading the first file the pod would have mounted, which does not exist
// here.
func checkParses(t *testing.T, bin string, args []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err == nil {
		t.Fatalf("%s ran with the pod's args and no mounted files:\n%s", filepath.Base(bin), out.String())
	}
	for _, parseErr := range []string{"unknown flag", "unknown shorthand", "invalid argument", "unknown command", "needs an argument"} {
		if strings.Contains(out.String(), parseErr) {
			t.Fatalf("%s refuses the pod's args: %s", filepath.Base(bin), out.String())
		}
	}
	if !strings.Contains(out.String(), "/etc/tether/") || !strings.Contains(out.String(), "no such file or directory") {
		t.Errorf("%s stopped before reading its mounted files: %s", filepath.Base(bin), out.String())
	}
}

func keys(m map[string]flagSpec) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
