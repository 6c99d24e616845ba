package charts

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

// The charts under test, relative to this module.
const (
	agentChart = "tether-agent"
	relayChart = "tether-relay"
	namespace  = "tether-system"
	release    = "t"
)

func chartDir(name string) string { return filepath.Join("..", name) }

var (
	chartsMu sync.Mutex
	charts   = map[string]*chart.Chart{}
)

// loadChart loads a chart from its directory, once per test binary.
func loadChart(t *testing.T, name string) *chart.Chart {
	t.Helper()
	chartsMu.Lock()
	defer chartsMu.Unlock()
	if c, ok := charts[name]; ok {
		return c
	}
	c, err := loader.Load(chartDir(name))
	if err != nil {
		t.Fatalf("load chart %s: %v", name, err)
	}
	charts[name] = c
	return c
}

// values parses YAML documents and merges them, later ones over earlier
// ones, into a fresh map.
func values(t *testing.T, docs ...string) map[string]any {
	t.Helper()
	out := map[string]any{}
	for _, d := range docs {
		m := map[string]any{}
		if err := yaml.Unmarshal([]byte(d), &m); err != nil {
			t.Fatalf("values %q: %v", d, err)
		}
		merge(out, m)
	}
	return out
}

func merge(dst, src map[string]any) {
	for k, v := range src {
		if sm, ok := v.(map[string]any); ok {
			if dm, ok := dst[k].(map[string]any); ok {
				merge(dm, sm)
				continue
			}
			fresh := map[string]any{}
			merge(fresh, sm)
			dst[k] = fresh
			continue
		}
		dst[k] = v
	}
}

// rendered is what a chart produced for one set of values.
type rendered struct {
	objects []runtime.Object
	notes   string
}

// render does what `helm install` does before it talks to the cluster:
// merge the values with the chart's, validate them against
// values.schema.json, render the templates, and decode every object.
func render(t *testing.T, name string, vals map[string]any) (*rendered, error) {
	t.Helper()
	c := loadChart(t, name)
	top, err := chartutil.ToRenderValues(c, vals, chartutil.ReleaseOptions{Name: release, Namespace: namespace, IsInstall: true}, nil)
	if err != nil {
		return nil, err
	}
	files, err := engine.Render(c, top)
	if err != nil {
		return nil, err
	}
	r := &rendered{}
	names := make([]string, 0, len(files))
	for f := range files {
		names = append(names, f)
	}
	sort.Strings(names)
	for _, f := range names {
		switch {
		case strings.HasSuffix(f, "NOTES.txt"):
			r.notes = files[f]
			continue
		case !strings.HasSuffix(f, ".yaml"):
			continue
		}
		objs, err := decode(files[f])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		r.objects = append(r.objects, objs...)
	}
	return r, nil
}

// mustRender renders and fails the test on an error.
func mustRender(t *testing.T, name string, vals map[string]any) *rendered {
	t.Helper()
	r, err := render(t, name, vals)
	if err != nil {
		t.Fatalf("render %s: %v", name, err)
	}
	return r
}

// decode splits a manifest into objects: Kubernetes kinds as their typed
// structs (strictly: an unknown field is an error), others as unstructured.
func decode(manifest string) ([]runtime.Object, error) {
	var out []runtime.Object
	rd := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(manifest)))
	strict := scheme.Codecs.UniversalDeserializer()
	for {
		doc, err := rd.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		obj, gvk, err := strict.Decode(doc, nil, nil)
		if runtime.IsNotRegisteredError(err) {
			u := &unstructured.Unstructured{}
			if err := yaml.Unmarshal(doc, &u.Object); err != nil {
				return nil, fmt.Errorf("decode %s: %w", gvk, err)
			}
			out = append(out, u)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("decode: %w\n%s", err, doc)
		}
		// Strict decoding: a misspelt field would be dropped silently by
		// the API server's non-strict clients.
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			return nil, fmt.Errorf("strict decode %s: %w", gvk, err)
		}
		out = append(out, obj)
	}
}

func stripComments(doc []byte) []byte {
	var b bytes.Buffer
	for _, line := range strings.Split(string(doc), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		b.WriteString(line + "\n")
	}
	return b.Bytes()
}

// all returns the rendered objects of type T.
func all[T runtime.Object](r *rendered) []T {
	var out []T
	for _, o := range r.objects {
		if v, ok := o.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

// one returns the single rendered object of type T.
func one[T runtime.Object](t *testing.T, r *rendered) T {
	t.Helper()
	got := all[T](r)
	if len(got) != 1 {
		var zero T
		t.Fatalf("want one %T, rendered %d", zero, len(got))
	}
	return got[0]
}

// kinds lists the rendered objects' kinds, sorted, for messages.
func (r *rendered) kinds() []string {
	var out []string
	for _, o := range r.objects {
		out = append(out, o.GetObjectKind().GroupVersionKind().Kind)
	}
	sort.Strings(out)
	return out
}

// container returns the Deployment's only container.
func container(t *testing.T, d *appsv1.Deployment) corev1.Container {
	t.Helper()
	cs := d.Spec.Template.Spec.Containers
	if len(cs) != 1 || len(d.Spec.Template.Spec.InitContainers) != 0 {
		t.Fatalf("Deployment %s: want one container, got %d (+%d init)", d.Name, len(cs), len(d.Spec.Template.Spec.InitContainers))
	}
	return cs[0]
}

// flagValues returns the values given to --name in args (--name=v or
// --name v), in order.
func flagValues(args []string, name string) []string {
	var out []string
	for i, a := range args {
		switch {
		case strings.HasPrefix(a, "--"+name+"="):
			out = append(out, strings.TrimPrefix(a, "--"+name+"="))
		case a == "--"+name && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-"):
			out = append(out, args[i+1])
		case a == "--"+name:
			out = append(out, "")
		}
	}
	return out
}

// flagValue returns the single value of --name, failing when it is given
// other than once.
func flagValue(t *testing.T, args []string, name string) string {
	t.Helper()
	v := flagValues(args, name)
	if len(v) != 1 {
		t.Fatalf("--%s given %d times in %q, want once", name, len(v), args)
	}
	return v[0]
}

var (
	testCAOnce sync.Once
	testCAPEM  string
)

// caPEM returns a self-signed CA certificate, as `tether-relay ca` prints
// one.
func caPEM(t *testing.T) string {
	t.Helper()
	testCAOnce.Do(func() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tether relay CA"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			panic(err)
		}
		testCAPEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	})
	return testCAPEM
}

// authnConfig is a realistic AuthenticationConfiguration, as values YAML.
const authnConfig = `
authenticationConfig:
  apiVersion: apiserver.config.k8s.io/v1
  kind: AuthenticationConfiguration
  jwt:
  - issuer:
      url: https://issuer.example.com
      audiences: [tether]
    claimMappings:
      username: {claim: sub, prefix: "oidc:"}
      groups: {claim: groups, prefix: "oidc:"}
      extra:
      - key: example.com/team
        valueExpression: claims.team
`

// mustJSON encodes v canonically (map keys sorted), for comparisons.
func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("encode %T: %v", v, err)
	}
	return string(b)
}

// optionalFlag is a value that renders its flag only when it is set, so
// that, unset, the binary's own default applies.
type optionalFlag struct {
	value string // its dotted path in the values
	flag  string
}

// checkOptionalFlags checks each optional value renders its flag exactly
// when set: once with the value, or once per item of a list; and not at
// all when it is unset, empty or null.
func checkOptionalFlags(t *testing.T, args []string, vals map[string]any, flags []optionalFlag) {
	t.Helper()
	for _, f := range flags {
		var v any = vals
		for _, k := range strings.Split(f.value, ".") {
			m, _ := v.(map[string]any)
			v = m[k]
		}
		var want []string
		switch v := v.(type) {
		case nil:
		case string:
			if v != "" {
				want = []string{v}
			}
		case []any:
			for _, item := range v {
				want = append(want, fmt.Sprint(item))
			}
		default: // a bool or a number
			want = []string{fmt.Sprint(v)}
		}
		if got := flagValues(args, f.flag); !slices.Equal(got, want) {
			t.Errorf("%s %v renders --%s %q, want %q", f.value, v, f.flag, got, want)
		}
	}
}
