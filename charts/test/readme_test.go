package charts

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the values tables of the charts' READMEs from values.schema.json and values.yaml")

const (
	tableBegin = "<!-- values table: generated from values.schema.json and values.yaml; in charts/test run `go test -run TestREADMEValuesTables -update` -->"
	tableEnd   = "<!-- end of values table -->"
)

// TestREADMEValuesTables checks each chart's README lists every value with
// the schema's description and the values.yaml default: it fails when the
// README, the schema or values.yaml drifts apart, and -update rewrites the
// table.
func TestREADMEValuesTables(t *testing.T) {
	for _, name := range []string{agentChart, relayChart} {
		t.Run(name, func(t *testing.T) {
			want := "\n" + valuesTable(t, name) + "\n"
			path := filepath.Join(chartDir(name), "README.md")
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			readme := string(b)
			i, j := strings.Index(readme, tableBegin), strings.Index(readme, tableEnd)
			if i < 0 || j < i {
				t.Fatalf("%s lacks the values table markers:\n%s\n%s", path, tableBegin, tableEnd)
			}
			got := readme[i+len(tableBegin) : j]
			if got == want {
				return
			}
			if *update {
				if err := os.WriteFile(path, []byte(readme[:i+len(tableBegin)]+want+readme[j:]), 0o644); err != nil {
					t.Fatal(err)
				}
				t.Logf("rewrote the values table of %s", path)
				return
			}
			t.Errorf("%s's values table is out of date with values.schema.json and values.yaml; in charts/test run `go test -run TestREADMEValuesTables -update`. First difference:\n%s", path, firstDiff(got, want))
		})
	}
}

// valuesTable renders a chart's values as a Markdown table: one row per
// value values.yaml sets (descending into the maps it sets), and per
// required value it leaves out.
func valuesTable(t *testing.T, name string) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(chartDir(name), "values.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	var schema map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&schema); err != nil {
		t.Fatalf("values.schema.json: %v", err)
	}
	raw, err = os.ReadFile(filepath.Join(chartDir(name), "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var defaults map[string]any
	if err := yaml.Unmarshal(raw, &defaults); err != nil {
		t.Fatalf("values.yaml: %v", err)
	}
	var rows []string
	walkSchema(t, schema, schema, "", defaults, &rows)
	return "| Value | Type | Default | Description |\n|---|---|---|---|\n" + strings.Join(rows, "\n")
}

func walkSchema(t *testing.T, root, node map[string]any, prefix string, defaults map[string]any, rows *[]string) {
	t.Helper()
	props, _ := node["properties"].(map[string]any)
	var required []string
	for _, r := range asSlice(node["required"]) {
		required = append(required, r.(string))
	}
	names := make([]string, 0, len(props))
	for k := range props {
		if k != "global" {
			names = append(names, k)
		}
	}
	// Required values first, then the others, each alphabetically.
	slices.SortFunc(names, func(a, b string) int {
		ra, rb := slices.Contains(required, a), slices.Contains(required, b)
		if ra != rb {
			if ra {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	})
	for _, k := range names {
		p := resolve(t, root, props[k].(map[string]any))
		key := prefix + k
		def, set := defaults[k]
		if sub, ok := def.(map[string]any); ok && len(sub) > 0 && p["properties"] != nil {
			walkSchema(t, root, p, key+".", sub, rows)
			continue
		}
		desc, _ := p["description"].(string)
		if desc == "" {
			t.Errorf("values.schema.json: %s has no description", key)
		}
		dflt := ""
		switch {
		case set:
			b, err := json.Marshal(def)
			if err != nil {
				t.Fatal(err)
			}
			dflt = "`" + string(b) + "`"
		case slices.Contains(required, k):
			dflt = "**required**"
		}
		*rows = append(*rows, fmt.Sprintf("| `%s` | %s | %s | %s |", key, schemaType(p), cell(dflt), cell(desc)))
	}
}

// resolve follows a local $ref, keeping the referring node's description.
func resolve(t *testing.T, root, node map[string]any) map[string]any {
	t.Helper()
	ref, ok := node["$ref"].(string)
	if !ok {
		return node
	}
	target := any(root)
	for _, part := range strings.Split(strings.TrimPrefix(ref, "#/"), "/") {
		m, ok := target.(map[string]any)
		if !ok {
			t.Fatalf("values.schema.json: $ref %s does not resolve", ref)
		}
		target = m[part]
	}
	m, ok := target.(map[string]any)
	if !ok {
		t.Fatalf("values.schema.json: $ref %s does not resolve", ref)
	}
	out := map[string]any{}
	for k, v := range m {
		out[k] = v
	}
	if d, ok := node["description"]; ok {
		out["description"] = d
	}
	return out
}

func schemaType(p map[string]any) string {
	switch ty := p["type"].(type) {
	case string:
		return ty
	case []any:
		var s []string
		for _, x := range ty {
			s = append(s, fmt.Sprint(x))
		}
		return strings.Join(s, " or ")
	}
	if p["items"] != nil {
		return "array"
	}
	return "any"
}

func asSlice(v any) []any {
	s, _ := v.([]any)
	return s
}

func cell(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

func firstDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := 0; i < len(g) || i < len(w); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return fmt.Sprintf("README:    %s\ngenerated: %s", gl, wl)
		}
	}
	return ""
}
