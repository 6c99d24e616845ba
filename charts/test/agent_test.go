package charts

import (
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

// chartCase is one realistic set of values for a chart and what must hold
// of its render besides the chart's invariants.
type chartCase struct {
	name   string
	values []string // YAML, over the required values
	check  func(t *testing.T, r *rendered)
}

// agentRequired is the least an operator must give the agent chart.
func agentRequired(t *testing.T) string {
	t.Helper()
	b, err := yaml.Marshal(map[string]any{
		"cluster": "prod",
		"relay":   map[string]any{"url": "https://relay.example.com:9443", "caPEM": caPEM(t)},
	})
	if err != nil {
		t.Fatal(err)
	}
	return string(b) + authnConfig
}

// agentOptionalFlags are the agent's values that render a flag only when
// set.
var agentOptionalFlags = []optionalFlag{
	{"streams.window", "stream-window"},
	{"audiences.relay", "relay-audience"},
	{"audiences.cluster", "cluster-audience"},
}

func agentCases() []chartCase {
	return []chartCase{{
		name: "required values only",
		check: func(t *testing.T, r *rendered) {
			d := one[*appsv1.Deployment](t, r)
			c := container(t, d)
			if got := flagValue(t, c.Args, "relay-transport"); got != "tcp" {
				t.Errorf("--relay-transport=%s, want tcp by default", got)
			}
			if len(flagValues(c.Args, "join-token-file")) != 0 || len(all[*corev1.Secret](r)) != 0 {
				t.Errorf("no join token given, yet the chart renders one (%v)", r.kinds())
			}
			if _, ok := env(c, "HTTPS_PROXY"); ok {
				t.Errorf("HTTPS_PROXY set without egress.httpsProxy")
			}
			if n := len(all[*networkingv1.NetworkPolicy](r)); n != 0 {
				t.Errorf("%d NetworkPolicies rendered while networkPolicy.enabled is false", n)
			}
			if *d.Spec.Replicas != 2 {
				t.Errorf("replicas = %d, want 2 by default", *d.Spec.Replicas)
			}
			if pdb := one[*policyv1.PodDisruptionBudget](t, r); pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != 1 {
				t.Errorf("PodDisruptionBudget minAvailable = %v, want 1", pdb.Spec.MinAvailable)
			}
			keys := map[string]corev1.UnsatisfiableConstraintAction{}
			for _, tsc := range d.Spec.Template.Spec.TopologySpreadConstraints {
				keys[tsc.TopologyKey] = tsc.WhenUnsatisfiable
				checkSelects(t, "topologySpreadConstraint "+tsc.TopologyKey, tsc.LabelSelector, d)
			}
			if keys["kubernetes.io/hostname"] != corev1.ScheduleAnyway {
				t.Errorf("topologySpreadConstraints = %v: want the agents spread across nodes, preferred (a one-node cluster still runs them)", keys)
			}
			if got := flagValues(c.Args, "stream-window"); len(got) != 0 {
				t.Errorf("--stream-window %q without streams.window: the agent's own default should apply", got)
			}
			if !strings.HasSuffix(c.Image, ":"+loadChart(t, agentChart).Metadata.AppVersion) {
				t.Errorf("image %s, want the chart's appVersion as tag", c.Image)
			}
		},
	}, {
		name:   "join token in values",
		values: []string{`joinToken: "s3cr3t-join-token"`},
		check: func(t *testing.T, r *rendered) {
			d := one[*appsv1.Deployment](t, r)
			f := fileInPod(t, r, d, flagValue(t, container(t, d).Args, "join-token-file"))
			if !f.rendered || f.content != "s3cr3t-join-token" {
				t.Errorf("--join-token-file reads %q from Secret %s (rendered %v), want the joinToken value", f.content, f.volume.Secret.SecretName, f.rendered)
			}
			if f.volume.Secret.DefaultMode == nil || *f.volume.Secret.DefaultMode&0o007 != 0 {
				t.Errorf("join token file mode %v: readable by others", f.volume.Secret.DefaultMode)
			}
			if strings.Contains(r.notes, "s3cr3t") {
				t.Errorf("NOTES.txt shows the join token")
			}
		},
	}, {
		name:   "existing join token and credential secrets",
		values: []string{"existingJoinTokenSecret: prod-join\ncredentialSecretName: prod-credential"},
		check: func(t *testing.T, r *rendered) {
			d := one[*appsv1.Deployment](t, r)
			c := container(t, d)
			f := fileInPod(t, r, d, flagValue(t, c.Args, "join-token-file"))
			if f.volume.Secret == nil || f.volume.Secret.SecretName != "prod-join" || f.key != "token" || f.rendered {
				t.Errorf("join token from %+v key %s (rendered by the chart: %v), want the existing Secret prod-join, key token", f.volume.VolumeSource, f.key, f.rendered)
			}
			if got := flagValue(t, c.Args, "credential-secret"); got != "$(POD_NAMESPACE)/prod-credential" {
				t.Errorf("--credential-secret=%s, want $(POD_NAMESPACE)/prod-credential", got)
			}
		},
	}, {
		name: "websocket through an HTTPS proxy",
		values: []string{`
relay: {transport: websocket}
egress: {httpsProxy: "http://proxy.corp.example:3128", noProxy: [.internal.example, 10.0.0.0/8]}`},
		check: func(t *testing.T, r *rendered) {
			c := container(t, one[*appsv1.Deployment](t, r))
			if got := flagValue(t, c.Args, "relay-transport"); got != "websocket" {
				t.Errorf("--relay-transport=%s, want websocket", got)
			}
			if e, _ := env(c, "HTTPS_PROXY"); e.Value != "http://proxy.corp.example:3128" {
				t.Errorf("HTTPS_PROXY=%q, want the egress.httpsProxy value", e.Value)
			}
			e, _ := env(c, "NO_PROXY")
			entries := strings.Split(e.Value, ",")
			for _, want := range []string{"$(KUBERNETES_SERVICE_HOST)", ".internal.example", "10.0.0.0/8"} {
				if !slices.Contains(entries, want) {
					t.Errorf("NO_PROXY=%q lacks %s", e.Value, want)
				}
			}
		},
	}, {
		name: "network policy, tcp transport",
		values: []string{`
networkPolicy:
  enabled: true
  relay: {cidrs: [203.0.113.10/32]}
  apiServer: {cidrs: [10.0.0.1/32, "fd00::1/128"]}
  metricsFrom: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]`},
		check: func(t *testing.T, r *rendered) {
			np := checkAgentNetworkPolicy(t, r)
			if !egressAllows(np, "203.0.113.10/32", 9443) || !egressAllows(np, "203.0.113.10/32", 8444) {
				t.Errorf("egress to the relay does not allow its API port (9443, from relay.url) and agent port (8444): %+v", np.Spec.Egress)
			}
			if !egressAllows(np, "fd00::1/128", 6443) {
				t.Errorf("egress to the API server does not allow 6443: %+v", np.Spec.Egress)
			}
			if len(np.Spec.Ingress) != 1 || len(np.Spec.Ingress[0].Ports) != 1 || np.Spec.Ingress[0].Ports[0].Port.IntValue() != 8081 {
				t.Errorf("ingress %+v: want only the metrics port from metricsFrom", np.Spec.Ingress)
			}
		},
	}, {
		name: "network policy, websocket through an egress proxy",
		values: []string{`
relay: {transport: websocket, agentAddr: "agents.example.com:8444"}
egress: {httpsProxy: "http://10.1.2.3:3128"}
networkPolicy:
  enabled: true
  egressProxy: {cidrs: [10.1.2.3/32], ports: [3128]}
  apiServer: {cidrs: [10.0.0.1/32]}`},
		check: func(t *testing.T, r *rendered) {
			np := checkAgentNetworkPolicy(t, r)
			if !egressAllows(np, "10.1.2.3/32", 3128) {
				t.Errorf("egress to the proxy not allowed: %+v", np.Spec.Egress)
			}
			if len(np.Spec.Ingress) != 0 {
				t.Errorf("ingress %+v: want none without metricsFrom", np.Spec.Ingress)
			}
			for _, rule := range np.Spec.Egress {
				for _, p := range rule.Ports {
					if p.Port.IntValue() == 8444 || p.Port.IntValue() == 9443 {
						t.Errorf("egress allows relay port %d though the agent reaches the relay only through the proxy", p.Port.IntValue())
					}
				}
			}
		},
	}, {
		name: "claim extras, issuers, one replica, pinned image",
		values: []string{`
replicas: 1
extraImpersonatedExtras: [example.com/team, example.com/cost-center]
serviceAccountIssuers: ["https://oidc.eks.example.com/id/ABC", "https://kubernetes.default.svc"]
sessions: 3
audiences: {relay: "https://relay.example.com", cluster: "https://prod.example.com"}
streams: {window: 16Mi}
logLevel: debug
image: {digest: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}
relay: {agentAddr: "agents.example.com:443"}`},
		check: func(t *testing.T, r *rendered) {
			d := one[*appsv1.Deployment](t, r)
			c := container(t, d)
			if n := len(all[*policyv1.PodDisruptionBudget](r)); n != 0 {
				t.Errorf("a PodDisruptionBudget with one replica would block every node drain")
			}
			if got := flagValues(c.Args, "service-account-issuer"); !slices.Equal(got, []string{"https://oidc.eks.example.com/id/ABC", "https://kubernetes.default.svc"}) {
				t.Errorf("--service-account-issuer %q", got)
			}
			if r, cl := flagValue(t, c.Args, "relay-audience"), flagValue(t, c.Args, "cluster-audience"); r != "https://relay.example.com" || cl != "https://prod.example.com" {
				t.Errorf("--relay-audience=%s --cluster-audience=%s", r, cl)
			}
			if got := flagValue(t, c.Args, "stream-window"); got != "16Mi" {
				t.Errorf("--stream-window=%s, want 16Mi", got)
			}
			if got := flagValue(t, c.Args, "relay-agent-addr"); got != "agents.example.com:443" {
				t.Errorf("--relay-agent-addr=%s", got)
			}
			if !strings.HasSuffix(c.Image, "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef") {
				t.Errorf("image %s not pinned by the digest", c.Image)
			}
		},
	}, {
		name:   "names overridden",
		values: []string{"fullnameOverride: tether\nserviceAccount: {name: tether-impersonator}"},
		check: func(t *testing.T, r *rendered) {
			if d := one[*appsv1.Deployment](t, r); d.Name != "tether" || d.Spec.Template.Spec.ServiceAccountName != "tether-impersonator" {
				t.Errorf("Deployment %s runs as %s", d.Name, d.Spec.Template.Spec.ServiceAccountName)
			}
		},
	}, {
		name:   "monitoring on, behind a NetworkPolicy",
		values: []string{monitoringOn, `networkPolicy: {enabled: true, relay: {cidrs: [203.0.113.10/32]}, apiServer: {cidrs: [10.0.0.1/32]}, metricsFrom: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]}`},
		check: func(t *testing.T, r *rendered) {
			for _, kind := range []string{"ServiceMonitor", "PrometheusRule"} {
				if n := len(kindOf(r, kind)); n != 1 {
					t.Errorf("%d %s, want 1", n, kind)
				}
			}
		},
	}}
}

func TestAgentRenders(t *testing.T) {
	for _, tc := range agentCases() {
		t.Run(tc.name, func(t *testing.T) {
			vals := values(t, append([]string{agentRequired(t)}, tc.values...)...)
			r := mustRender(t, agentChart, vals)
			checkAgentInvariants(t, r, vals)
			tc.check(t, r)
		})
	}
}

// checkAgentInvariants checks what must hold for every set of values.
func checkAgentInvariants(t *testing.T, r *rendered, vals map[string]any) {
	t.Helper()
	d := one[*appsv1.Deployment](t, r)
	c := container(t, d)
	pod := d.Spec.Template.Spec
	checkHardened(t, d)
	checkProbes(t, c)
	checkEnvRefs(t, c)
	checkSelects(t, "Deployment", d.Spec.Selector, d)
	for _, pdb := range all[*policyv1.PodDisruptionBudget](r) {
		checkSelects(t, "PodDisruptionBudget", pdb.Spec.Selector, d)
	}
	if s := d.Spec.Strategy; s.RollingUpdate == nil || s.RollingUpdate.MaxUnavailable == nil || s.RollingUpdate.MaxUnavailable.IntValue() != 0 {
		t.Errorf("strategy %+v: a rollout must not take an agent away before its successor holds a session", s)
	}

	// The values reach the flags.
	relay := vals["relay"].(map[string]any)
	if got := flagValue(t, c.Args, "cluster"); got != vals["cluster"] {
		t.Errorf("--cluster=%s, want %s", got, vals["cluster"])
	}
	if got := flagValue(t, c.Args, "relay"); got != relay["url"] {
		t.Errorf("--relay=%s, want %s", got, relay["url"])
	}
	if got := flagValue(t, c.Args, "log-format"); got != "json" {
		t.Errorf("--log-format=%s, want json", got)
	}
	if ca := fileInPod(t, r, d, flagValue(t, c.Args, "relay-ca")); strings.TrimSpace(ca.content) != strings.TrimSpace(caPEM(t)) {
		t.Errorf("--relay-ca file holds %q, want relay.caPEM", ca.content)
	}
	authn := fileInPod(t, r, d, flagValue(t, c.Args, "authentication-config"))
	var gotAuthn any
	if err := yaml.Unmarshal([]byte(authn.content), &gotAuthn); err != nil {
		t.Errorf("--authentication-config file: %v", err)
	}
	if a, b := mustJSON(t, gotAuthn), mustJSON(t, vals["authenticationConfig"]); a != b {
		t.Errorf("--authentication-config file holds\n%s\nwant authenticationConfig\n%s", a, b)
	}
	checkOptionalFlags(t, c.Args, vals, agentOptionalFlags)
	for _, name := range []string{"POD_NAME", "POD_NAMESPACE"} {
		if e, ok := env(c, name); !ok || e.ValueFrom == nil || e.ValueFrom.FieldRef == nil {
			t.Errorf("%s does not come from the downward API", name)
		}
	}

	// The service account: used by the pod, token mounted for it only, and
	// bound to the two roles.
	sa := one[*corev1.ServiceAccount](t, r)
	if pod.ServiceAccountName != sa.Name {
		t.Errorf("pod runs as %q, the chart's ServiceAccount is %q", pod.ServiceAccountName, sa.Name)
	}
	if pod.AutomountServiceAccountToken == nil || !*pod.AutomountServiceAccountToken {
		t.Errorf("the pod must mount its service account token explicitly")
	}
	checkAgentRBAC(t, r, vals, sa, flagValue(t, c.Args, "credential-secret"))
}

// checkAgentRBAC checks the agent may impersonate and keep its credential
// Secret, and nothing else.
func checkAgentRBAC(t *testing.T, r *rendered, vals map[string]any, sa *corev1.ServiceAccount, credentialSecret string) {
	t.Helper()
	cr := one[*rbacv1.ClusterRole](t, r)
	if cr.AggregationRule != nil {
		t.Errorf("ClusterRole aggregates other roles")
	}
	want := map[string][]string{
		"":                      {"groups", "serviceaccounts", "users"},
		"authentication.k8s.io": append([]string{"uids"}, documentedExtras(t)...),
	}
	if extras, ok := vals["extraImpersonatedExtras"].([]any); ok {
		for _, e := range extras {
			want["authentication.k8s.io"] = append(want["authentication.k8s.io"], "userextras/"+e.(string))
		}
	}
	got := map[string][]string{}
	for _, rule := range cr.Rules {
		if !slices.Equal(rule.Verbs, []string{"impersonate"}) {
			t.Errorf("ClusterRole rule %+v: verbs %v, want only impersonate", rule, rule.Verbs)
		}
		if len(rule.ResourceNames) != 0 || len(rule.NonResourceURLs) != 0 {
			t.Errorf("ClusterRole rule %+v: want no resourceNames or nonResourceURLs", rule)
		}
		for _, g := range rule.APIGroups {
			got[g] = append(got[g], rule.Resources...)
		}
	}
	for g := range want {
		slices.Sort(want[g])
		slices.Sort(got[g])
		if !slices.Equal(got[g], want[g]) {
			t.Errorf("ClusterRole may impersonate %q in group %q, want exactly %q (docs/operations.md plus extraImpersonatedExtras)", got[g], g, want[g])
		}
	}
	if len(got) != len(want) {
		t.Errorf("ClusterRole names API groups %v, want only core and authentication.k8s.io", got)
	}

	role := one[*rbacv1.Role](t, r)
	_, secretName, _ := strings.Cut(credentialSecret, "/")
	wantRules := []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"create"}},
		{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{secretName}, Verbs: []string{"get", "update"}},
	}
	if a, b := mustJSON(t, role.Rules), mustJSON(t, wantRules); a != b {
		t.Errorf("Role rules\n%s\nwant (create secrets; get, update only the credential Secret named by --credential-secret)\n%s", a, b)
	}

	crb := one[*rbacv1.ClusterRoleBinding](t, r)
	rb := one[*rbacv1.RoleBinding](t, r)
	for _, b := range []struct {
		kind, name string
		ref        rbacv1.RoleRef
		subjects   []rbacv1.Subject
		wantRef    string
	}{{"ClusterRoleBinding", crb.Name, crb.RoleRef, crb.Subjects, cr.Name}, {"RoleBinding", rb.Name, rb.RoleRef, rb.Subjects, role.Name}} {
		if b.ref.Name != b.wantRef {
			t.Errorf("%s %s binds %s, want %s", b.kind, b.name, b.ref.Name, b.wantRef)
		}
		if len(b.subjects) != 1 || b.subjects[0].Kind != "ServiceAccount" || b.subjects[0].Name != sa.Name || b.subjects[0].Namespace != namespace {
			t.Errorf("%s %s subjects %+v, want only the agent's ServiceAccount", b.kind, b.name, b.subjects)
		}
	}
}

// checkAgentNetworkPolicy checks the NetworkPolicy every enabled case
// needs: it selects the agents, denies what it does not list, allows DNS,
// and never has a rule open to every destination.
func checkAgentNetworkPolicy(t *testing.T, r *rendered) *networkingv1.NetworkPolicy {
	t.Helper()
	np := one[*networkingv1.NetworkPolicy](t, r)
	d := one[*appsv1.Deployment](t, r)
	checkSelects(t, "NetworkPolicy", &np.Spec.PodSelector, d)
	if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) || !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
		t.Errorf("policyTypes %v: want Ingress and Egress", np.Spec.PolicyTypes)
	}
	for _, rule := range np.Spec.Egress {
		if len(rule.To) == 0 || len(rule.Ports) == 0 {
			t.Errorf("egress rule %+v allows every destination or every port", rule)
		}
	}
	for _, rule := range np.Spec.Ingress {
		if len(rule.From) == 0 {
			t.Errorf("ingress rule %+v allows every source", rule)
		}
	}
	dns := false
	for _, rule := range np.Spec.Egress {
		for _, p := range rule.Ports {
			if p.Port.IntValue() == 53 && p.Protocol != nil && *p.Protocol == corev1.ProtocolUDP {
				dns = true
			}
		}
	}
	if !dns {
		t.Errorf("no egress to DNS (UDP 53)")
	}
	return np
}

// egressAllows says whether an egress rule lets the pods reach cidr on
// TCP port.
func egressAllows(np *networkingv1.NetworkPolicy, cidr string, port int) bool {
	for _, rule := range np.Spec.Egress {
		to := false
		for _, peer := range rule.To {
			to = to || (peer.IPBlock != nil && peer.IPBlock.CIDR == cidr)
		}
		for _, p := range rule.Ports {
			if to && p.Port.IntValue() == port && (p.Protocol == nil || *p.Protocol == corev1.ProtocolTCP) {
				return true
			}
		}
	}
	return false
}
