package relay

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/tether-k8s/tether/core/clusterid"
	"github.com/tether-k8s/tether/core/relayapi"
)

// FuzzClusterPath splits fuzzed request paths as the cluster endpoint
// does: an accepted path is exactly the cluster's prefix, a slash and the
// rest; the rest unescapes to the path the agent is sent; and the URL the
// relay builds for the agent parses back to that path, with no query or
// fragment smuggled in from an escaped '?' or '#'.
func FuzzClusterPath(f *testing.F) {
	for _, s := range [][2]string{{"prod", "/v1/clusters/prod/k8s/api/v1/pods"}, {"prod", "/v1/clusters/prod/k8s"},
		{"prod", "/v1/clusters/prod/k8sapi"}, {"prod", "/v1/clusters/prod/k8s/api/v1/namespaces/a%2Fb/pods"},
		{"prod", "/v1/clusters/prod/k8s/api%3Fwatch=1%23x"}, {"prod", "/v1/clusters/prod/k8s/%zz"},
		{"prod", "/v1/clusters/prod/k8s/../../staging/k8s/api"}, {"prod", "/v1/clusters/prod/k8s//api"},
		{"prod", "/v1/clusters/staging/k8s/api"}, {"prod", "/v1/clusters/prod/k8s/%2e%2e/%2e%2e/staging/k8s/api"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, id, escaped string) {
		if clusterid.Validate(id) != nil {
			return // refused before the split
		}
		path, rawPath, ok := splitClusterPath(id, escaped)
		if !ok {
			return
		}
		prefix := fmt.Sprintf(relayapi.ClusterEndpointPath, id)
		if escaped != prefix+rawPath || !strings.HasPrefix(rawPath, "/") {
			t.Fatalf("%q split into %q under %q", escaped, rawPath, prefix)
		}
		if p, err := url.PathUnescape(rawPath); err != nil || p != path {
			t.Fatalf("%q: path %q, but the raw path unescapes to %q (%v)", escaped, path, p, err)
		}
		out := &url.URL{Scheme: "https", Host: "cluster.tether", Path: path, RawPath: rawPath}
		back, err := url.Parse(out.String())
		if err != nil {
			t.Fatalf("%q: the agent's URL %q does not parse: %v", escaped, out, err)
		}
		if back.Path != path || back.RawQuery != "" || back.Fragment != "" || back.Host != "cluster.tether" {
			t.Fatalf("%q: the agent would see path %q query %q fragment %q host %q, want path %q", escaped, back.Path, back.RawQuery, back.Fragment, back.Host, path)
		}
	})
}

// FuzzBearer parses fuzzed Authorization headers as the relay does: it
// takes a token only from exactly one header of the form "Bearer <token>"
// with a non-empty token, and what it forwards to the agent ("Bearer " and
// the token) is that header unchanged, so the agent authenticates the
// same token the relay did.
func FuzzBearer(f *testing.F) {
	f.Add("Bearer abc.def.ghi", "", false)
	f.Add("Bearer ", "", false)
	f.Add("bearer abc", "", false)
	f.Add("Bearer  abc", "", false)
	f.Add("Basic dTpw", "", false)
	f.Add("Bearer a", "Bearer b", true)
	f.Fuzz(func(t *testing.T, first, second string, two bool) {
		r := &http.Request{Header: http.Header{"Authorization": {first}}}
		if two {
			r.Header["Authorization"] = append(r.Header["Authorization"], second)
		}
		tok, ok := bearer(r)
		switch {
		case !ok && tok != "":
			t.Fatalf("refused %q but returned a token", r.Header["Authorization"])
		case ok && two:
			t.Fatalf("took a token from two Authorization headers %q", r.Header["Authorization"])
		case ok && (tok == "" || "Bearer "+tok != first):
			t.Fatalf("header %q gave token %q: forwarding it changes what the agent authenticates", first, tok)
		case !ok && !two && strings.HasPrefix(first, "Bearer ") && len(first) > len("Bearer "):
			t.Fatalf("refused %q", first)
		}
	})
}
