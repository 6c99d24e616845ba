package charts

import (
	"net"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// relayRequired is the least an operator must give the relay chart.
const relayRequired = "hostnames: [relay.example.com]\n" + authnConfig

// relayEtcd runs the relay as three replicas on etcd, with client TLS and a
// key-encryption key from Secrets.
const relayEtcd = `
replicas: 3
store:
  type: etcd
  etcd:
    endpoints: [https://etcd-0.etcd:2379, https://etcd-1.etcd:2379, https://etcd-2.etcd:2379]
    tls: {existingSecret: relay-etcd-client}
    keyEncryptionKey: {existingSecret: relay-kek}`

// relayOptionalFlags are the relay's values that render a flag only when
// set.
var relayOptionalFlags = []optionalFlag{
	{"streams.window", "stream-window"},
	{"streams.memory", "stream-memory"},
	{"streams.maxPerCluster", "max-streams-per-cluster"},
	{"streams.maxPerCaller", "max-streams-per-caller"},
	{"adminGroups", "admin-group"},
	{"clusterEndpoint", "cluster-endpoint"},
	{"login.issuer", "login-issuer"},
	{"login.clientID", "login-client-id"},
	{"login.audience", "login-audience"},
}

func relayCases() []chartCase {
	return []chartCase{{
		name: "required values only",
		check: func(t *testing.T, r *rendered) {
			d := one[*appsv1.Deployment](t, r)
			c := container(t, d)
			if got := flagValues(c.Args, "tls-cert"); len(got) != 0 {
				t.Errorf("--tls-cert %v without tls values: the relay's CA should sign the API's certificate", got)
			}
			pvc := one[*corev1.PersistentVolumeClaim](t, r)
			if pvc.Spec.StorageClassName != nil {
				t.Errorf("storageClassName %q: want it unset (the default class) when storage.storageClassName is null", *pvc.Spec.StorageClassName)
			}
			if got := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; got.String() != "1Gi" {
				t.Errorf("claim size %s, want the default 1Gi", got.String())
			}
			if s := one[*corev1.Service](t, r); s.Spec.Type != corev1.ServiceTypeClusterIP {
				t.Errorf("Service type %s, want ClusterIP by default", s.Spec.Type)
			}
			// The relay's own defaults apply: the chart does not restate them.
			for _, f := range relayOptionalFlags {
				if got := flagValues(c.Args, f.flag); len(got) != 0 {
					t.Errorf("--%s %q rendered without %s", f.flag, got, f.value)
				}
			}
		},
	}, {
		name: "streams sized for many idle watches, remote admins, login, no cluster endpoint",
		values: []string{`
streams: {window: 256Ki, memory: 2Gi, maxPerCluster: 8192, maxPerCaller: 2048}
adminGroups: ["oidc:platform-admins", "oidc:sre"]
clusterEndpoint: false
login: {issuer: https://issuer.example.com, clientID: tether, audience: "https://relay.example.com"}
resources: {requests: {cpu: 100m, memory: 256Mi}, limits: {memory: 3Gi}}`},
		check: func(t *testing.T, r *rendered) {
			c := container(t, one[*appsv1.Deployment](t, r))
			for flag, want := range map[string][]string{
				"stream-window":           {"256Ki"},
				"stream-memory":           {"2Gi"},
				"max-streams-per-cluster": {"8192"},
				"max-streams-per-caller":  {"2048"},
				"admin-group":             {"oidc:platform-admins", "oidc:sre"},
				"cluster-endpoint":        {"false"},
				"login-issuer":            {"https://issuer.example.com"},
				"login-client-id":         {"tether"},
				"login-audience":          {"https://relay.example.com"},
			} {
				if got := flagValues(c.Args, flag); !slices.Equal(got, want) {
					t.Errorf("--%s %q, want %q", flag, got, want)
				}
			}
		},
	}, {
		name:   "stream window for large transfers, with its memory; cluster endpoint explicitly on",
		values: []string{"streams: {window: 16MiB, memory: 4Gi}\nclusterEndpoint: true"},
		check: func(t *testing.T, r *rendered) {
			c := container(t, one[*appsv1.Deployment](t, r))
			if got := flagValue(t, c.Args, "stream-window"); got != "16MiB" {
				t.Errorf("--stream-window=%s, want 16MiB as given", got)
			}
			if got := flagValue(t, c.Args, "cluster-endpoint"); got != "true" {
				t.Errorf("--cluster-endpoint=%s, want true as given", got)
			}
			if got := flagValues(c.Args, "max-streams-per-caller"); len(got) != 0 {
				t.Errorf("--max-streams-per-caller %q without streams.maxPerCaller", got)
			}
		},
	}, {
		name:   "TLS from an existing Secret, several hostnames",
		values: []string{"hostnames: [relay.example.com, relay.internal.example, 203.0.113.10, \"2001:db8::10\"]\ntls: {existingSecret: relay-public-tls}"},
		check: func(t *testing.T, r *rendered) {
			d := one[*appsv1.Deployment](t, r)
			c := container(t, d)
			if got := flagValues(c.Args, "hostname"); !slices.Equal(got, []string{"relay.example.com", "relay.internal.example", "203.0.113.10", "2001:db8::10"}) {
				t.Errorf("--hostname %q, want every hostname in order", got)
			}
			for _, flag := range []string{"tls-cert", "tls-key"} {
				f := fileInPod(t, r, d, flagValue(t, c.Args, flag))
				if f.volume.Secret == nil || f.volume.Secret.SecretName != "relay-public-tls" || f.rendered {
					t.Errorf("--%s from %+v, want the existing Secret relay-public-tls", flag, f.volume.VolumeSource)
				}
			}
			if n := len(all[*unstructured.Unstructured](r)); n != 0 {
				t.Errorf("%d cert-manager objects rendered without tls.certManager", n)
			}
		},
	}, {
		name: "TLS from cert-manager",
		values: []string{`
hostnames: [relay.example.com, 203.0.113.10]
tls: {certManager: {issuerRef: {name: letsencrypt, kind: ClusterIssuer}, duration: 2160h}}`},
		check: func(t *testing.T, r *rendered) {
			d := one[*appsv1.Deployment](t, r)
			c := container(t, d)
			cert := one[*unstructured.Unstructured](t, r)
			if cert.GetKind() != "Certificate" || cert.GetAPIVersion() != "cert-manager.io/v1" {
				t.Fatalf("rendered %s %s, want a cert-manager.io/v1 Certificate", cert.GetAPIVersion(), cert.GetKind())
			}
			secretName, _, _ := unstructured.NestedString(cert.Object, "spec", "secretName")
			dns, _, _ := unstructured.NestedStringSlice(cert.Object, "spec", "dnsNames")
			ips, _, _ := unstructured.NestedStringSlice(cert.Object, "spec", "ipAddresses")
			issuer, _, _ := unstructured.NestedStringMap(cert.Object, "spec", "issuerRef")
			if !slices.Equal(dns, []string{"relay.example.com"}) || !slices.Equal(ips, []string{"203.0.113.10"}) {
				t.Errorf("Certificate dnsNames %v, ipAddresses %v: want the hostnames split by kind", dns, ips)
			}
			if issuer["name"] != "letsencrypt" || issuer["kind"] != "ClusterIssuer" || issuer["group"] != "cert-manager.io" {
				t.Errorf("Certificate issuerRef %v", issuer)
			}
			for _, flag := range []string{"tls-cert", "tls-key"} {
				f := fileInPod(t, r, d, flagValue(t, c.Args, flag))
				if f.volume.Secret == nil || f.volume.Secret.SecretName != secretName || secretName == "" {
					t.Errorf("--%s from %+v, want the Certificate's Secret %q", flag, f.volume.VolumeSource, secretName)
				}
			}
		},
	}, {
		name: "published with a load balancer, storage class, longer drain",
		values: []string{`
service: {type: LoadBalancer, apiPort: 443, annotations: {service.beta.kubernetes.io/aws-load-balancer-type: nlb}, loadBalancerSourceRanges: [0.0.0.0/0], externalTrafficPolicy: Local}
storage: {size: 5Gi, storageClassName: fast-ssd}
drainTimeoutSeconds: 120
logLevel: warn`},
		check: func(t *testing.T, r *rendered) {
			d := one[*appsv1.Deployment](t, r)
			s := one[*corev1.Service](t, r)
			if s.Spec.Type != corev1.ServiceTypeLoadBalancer || s.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal {
				t.Errorf("Service type %s, externalTrafficPolicy %s", s.Spec.Type, s.Spec.ExternalTrafficPolicy)
			}
			if p := servicePort(s, "api"); p == nil || p.Port != 443 {
				t.Errorf("Service api port %+v, want 443", p)
			}
			pvc := one[*corev1.PersistentVolumeClaim](t, r)
			if pvc.Spec.StorageClassName == nil || *pvc.Spec.StorageClassName != "fast-ssd" {
				t.Errorf("storageClassName %v, want fast-ssd", deref(pvc.Spec.StorageClassName))
			}
			if got := flagValue(t, container(t, d).Args, "drain-timeout"); got != "120s" {
				t.Errorf("--drain-timeout=%s, want 120s", got)
			}
		},
	}, {
		name:   "existing claim, explicit grace period",
		values: []string{"storage: {existingClaim: relay-data-restored}\ndrainTimeoutSeconds: 30\nterminationGracePeriodSeconds: 31"},
		check: func(t *testing.T, r *rendered) {
			d := one[*appsv1.Deployment](t, r)
			if n := len(all[*corev1.PersistentVolumeClaim](r)); n != 0 {
				t.Errorf("%d claims rendered with storage.existingClaim", n)
			}
			f := fileInPod(t, r, d, flagValue(t, container(t, d).Args, "data"))
			if f.volume.PersistentVolumeClaim.ClaimName != "relay-data-restored" {
				t.Errorf("--data on claim %s, want relay-data-restored", f.volume.PersistentVolumeClaim.ClaimName)
			}
			if g := d.Spec.Template.Spec.TerminationGracePeriodSeconds; g == nil || *g != 31 {
				t.Errorf("terminationGracePeriodSeconds %v, want 31", deref(g))
			}
		},
	}, {
		name:   "monitoring on",
		values: []string{monitoringOn},
		check: func(t *testing.T, r *rendered) {
			for _, kind := range []string{"ServiceMonitor", "PrometheusRule"} {
				if n := len(kindOf(r, kind)); n != 1 {
					t.Errorf("%d %s, want 1", n, kind)
				}
			}
		},
	}, {
		name:   "storage class disabled",
		values: []string{`storage: {storageClassName: ""}`},
		check: func(t *testing.T, r *rendered) {
			pvc := one[*corev1.PersistentVolumeClaim](t, r)
			if pvc.Spec.StorageClassName == nil || *pvc.Spec.StorageClassName != "" {
				t.Errorf("storageClassName %v, want \"\" (no dynamic provisioning)", deref(pvc.Spec.StorageClassName))
			}
		},
	}, {
		name:   "etcd, 3 replicas",
		values: []string{relayEtcd},
		check: func(t *testing.T, r *rendered) {
			d := one[*appsv1.Deployment](t, r)
			c := container(t, d)
			if d.Spec.Replicas == nil || *d.Spec.Replicas != 3 {
				t.Errorf("replicas %v, want 3", deref(d.Spec.Replicas))
			}
			pdb := one[*policyv1.PodDisruptionBudget](t, r)
			if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 || pdb.Spec.MinAvailable != nil {
				t.Errorf("PodDisruptionBudget maxUnavailable %v, minAvailable %v: want maxUnavailable 1", pdb.Spec.MaxUnavailable, pdb.Spec.MinAvailable)
			}
			checkSelects(t, "PodDisruptionBudget", pdb.Spec.Selector, d)
			if got := flagValues(c.Args, "etcd-endpoints"); !slices.Equal(got, []string{"https://etcd-0.etcd:2379", "https://etcd-1.etcd:2379", "https://etcd-2.etcd:2379"}) {
				t.Errorf("--etcd-endpoints %q, want the three members in order", got)
			}
			for flag, key := range map[string]string{"etcd-cert": "tls.crt", "etcd-key": "tls.key", "etcd-ca": "ca.crt"} {
				f := fileInPod(t, r, d, flagValue(t, c.Args, flag))
				if f.volume.Secret == nil || f.volume.Secret.SecretName != "relay-etcd-client" || f.key != key || f.rendered {
					t.Errorf("--%s from %+v key %s, want key %s of the existing Secret relay-etcd-client", flag, f.volume.VolumeSource, f.key, key)
				}
			}
			if got := flagValues(c.Args, "etcd-prefix"); len(got) != 0 {
				t.Errorf("--etcd-prefix %q without store.etcd.prefix: the relay's default applies", got)
			}
			if len(d.Spec.Template.Spec.TopologySpreadConstraints) == 0 {
				t.Errorf("3 replicas with no topologySpreadConstraints: they may all land on one node")
			}
			if !strings.Contains(r.notes, "--store=etcd") || !strings.Contains(r.notes, "--ca-key-encryption-key-file=/etc/tether/kek/kek") {
				t.Errorf("NOTES' cluster commands do not open etcd when no relay answers the socket:\n%s", r.notes)
			}
		},
	}, {
		name: "etcd, one replica, plain http, own prefix, rotating the key-encryption key, longer drain",
		values: []string{`
store:
  type: etcd
  etcd:
    endpoints: [http://etcd.tether.svc:2379]
    prefix: /tether/relay-eu/
    keyEncryptionKey: {existingSecret: relay-kek, key: kek-2026-12, previousKeys: [kek-2026-06]}
peer: {port: 9445}
drainTimeoutSeconds: 90`},
		check: func(t *testing.T, r *rendered) {
			d := one[*appsv1.Deployment](t, r)
			c := container(t, d)
			if n := len(all[*policyv1.PodDisruptionBudget](r)); n != 0 {
				t.Errorf("%d PodDisruptionBudgets for one replica: it could never be evicted", n)
			}
			if got := flagValue(t, c.Args, "etcd-prefix"); got != "/tether/relay-eu/" {
				t.Errorf("--etcd-prefix=%s, want /tether/relay-eu/", got)
			}
			for _, flag := range []string{"etcd-cert", "etcd-key", "etcd-ca"} {
				if got := flagValues(c.Args, flag); len(got) != 0 {
					t.Errorf("--%s %q without store.etcd.tls.existingSecret", flag, got)
				}
			}
			if got := flagValues(c.Args, "ca-key-encryption-key-file"); !slices.Equal(got, []string{"/etc/tether/kek/kek-2026-12", "/etc/tether/kek/kek-2026-06"}) {
				t.Errorf("--ca-key-encryption-key-file %q: want the new key first (it encrypts), then the old", got)
			}
			if got := flagValue(t, c.Args, "peer-advertise"); got != "$(POD_IP):9445" {
				t.Errorf("--peer-advertise=%s, want $(POD_IP):9445", got)
			}
			if g := d.Spec.Template.Spec.TerminationGracePeriodSeconds; g == nil || *g != 105 {
				t.Errorf("terminationGracePeriodSeconds %v, want 90 + 15", deref(g))
			}
		},
	}}
}

func TestRelayRenders(t *testing.T) {
	for _, tc := range relayCases() {
		t.Run(tc.name, func(t *testing.T) {
			vals := values(t, append([]string{relayRequired}, tc.values...)...)
			r := mustRender(t, relayChart, vals)
			checkRelayInvariants(t, r, vals)
			tc.check(t, r)
		})
	}
}

func checkRelayInvariants(t *testing.T, r *rendered, vals map[string]any) {
	t.Helper()
	d := one[*appsv1.Deployment](t, r)
	c := container(t, d)
	pod := d.Spec.Template.Spec
	checkHardened(t, d)
	checkProbes(t, c)
	checkEnvRefs(t, c)
	checkSelects(t, "Deployment", d.Spec.Selector, d)

	if pod.SecurityContext == nil || pod.SecurityContext.FSGroup == nil || *pod.SecurityContext.FSGroup != 65532 {
		t.Errorf("fsGroup %v, want 65532 so the relay can write its volume and read its Secrets", pod.SecurityContext)
	}
	// Every pod names itself: the relay ID is the pod's name.
	if got := flagValue(t, c.Args, "relay-id"); got != "$(POD_NAME)" {
		t.Errorf("--relay-id=%s, want $(POD_NAME): each replica needs a name of its own", got)
	}
	checkFieldRef(t, c, "POD_NAME", "metadata.name")
	// The grace period outlasts the drain.
	drain, err := time.ParseDuration(flagValue(t, c.Args, "drain-timeout"))
	if err != nil {
		t.Fatalf("--drain-timeout: %v", err)
	}
	if g := pod.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second <= drain {
		t.Errorf("terminationGracePeriodSeconds %v is not greater than --drain-timeout %s", deref(g), drain)
	}
	store, _ := vals["store"].(map[string]any)
	if store["type"] == "etcd" {
		checkRelayReplicas(t, r, vals)
	} else {
		checkRelayBbolt(t, r)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Errorf("the relay does not use the Kubernetes API: it must not mount a token")
	}
	if pod.ServiceAccountName != one[*corev1.ServiceAccount](t, r).Name {
		t.Errorf("pod runs as %s, not the chart's ServiceAccount", pod.ServiceAccountName)
	}

	// Global flags, then serve.
	if i := slices.Index(c.Args, "serve"); i < 0 || slices.ContainsFunc(c.Args[:i], func(a string) bool { return !strings.HasPrefix(a, "--") }) {
		t.Errorf("args %q: want global flags, then the serve command", c.Args)
	}
	if got := path.Dir(flagValue(t, c.Args, "data")); !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == got && !m.ReadOnly }) {
		t.Errorf("--data's directory %s is not a writable mount: the admin socket and bbolt's lock live there", got)
	}
	var hostnames []string
	for _, h := range vals["hostnames"].([]any) {
		hostnames = append(hostnames, h.(string))
	}
	if got := flagValues(c.Args, "hostname"); !slices.Equal(got, hostnames) {
		t.Errorf("--hostname %q, want %q", got, hostnames)
	}
	authn := fileInPod(t, r, d, flagValue(t, c.Args, "authentication-config"))
	var gotAuthn any
	if err := yaml.Unmarshal([]byte(authn.content), &gotAuthn); err != nil {
		t.Errorf("--authentication-config file: %v", err)
	}
	if a, b := mustJSON(t, gotAuthn), mustJSON(t, vals["authenticationConfig"]); a != b {
		t.Errorf("--authentication-config file holds\n%s\nwant\n%s", a, b)
	}

	checkOptionalFlags(t, c.Args, vals, relayOptionalFlags)

	// The Service reaches the API and the agent endpoint on the ports the
	// relay listens on; /metrics has a Service of its own, never this one.
	s := publicService(t, r)
	if servicePort(s, "metrics") != nil {
		t.Errorf("the relay's public Service carries /metrics")
	}
	if s.Spec.Selector == nil {
		t.Fatalf("Service has no selector")
	}
	for k, v := range s.Spec.Selector {
		if d.Spec.Template.Labels[k] != v {
			t.Errorf("Service selector %v does not select the pods", s.Spec.Selector)
		}
	}
	for _, p := range []struct{ name, flag string }{{"api", "listen"}, {"agents", "agent-listen"}} {
		_, port, err := net.SplitHostPort(flagValue(t, c.Args, p.flag))
		if err != nil {
			t.Fatalf("--%s: %v", p.flag, err)
		}
		sp := servicePort(s, p.name)
		if sp == nil {
			t.Errorf("Service has no %s port", p.name)
			continue
		}
		target := sp.TargetPort.String()
		for _, cp := range c.Ports {
			if cp.Name == target {
				target = strconv.Itoa(int(cp.ContainerPort))
			}
		}
		if target != port {
			t.Errorf("Service port %s targets %s, the relay's --%s listens on %s", p.name, target, p.flag, port)
		}
	}
}

// checkRelayBbolt checks a relay on its embedded store: one pod, replaced
// with Recreate, its state on a claim kept with the release.
func checkRelayBbolt(t *testing.T, r *rendered) {
	t.Helper()
	d := one[*appsv1.Deployment](t, r)
	c := container(t, d)
	// One writer of the bbolt file at a time.
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 1 || d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Errorf("replicas %v, strategy %s: the embedded store needs exactly one replica, replaced with Recreate", deref(d.Spec.Replicas), d.Spec.Strategy.Type)
	}
	if got := flagValues(c.Args, "store"); len(got) != 0 && !slices.Equal(got, []string{"bbolt"}) {
		t.Errorf("--store %q on the embedded store", got)
	}
	for _, flag := range []string{"etcd-endpoints", "ca-key-encryption-key-file", "peer-listen", "peer-advertise"} {
		if got := flagValues(c.Args, flag); len(got) != 0 {
			t.Errorf("--%s %q without store.type etcd", flag, got)
		}
	}
	if n := len(all[*policyv1.PodDisruptionBudget](r)); n != 0 {
		t.Errorf("%d PodDisruptionBudgets for the single bbolt relay: a node drain could never evict it", n)
	}
	if s := peerService(r); s != nil {
		t.Errorf("peer Service %s without store.type etcd", s.Name)
	}
	data := fileInPod(t, r, d, flagValue(t, c.Args, "data"))
	if data.volume.PersistentVolumeClaim == nil {
		t.Fatalf("--data on volume %+v, want a PersistentVolumeClaim", data.volume.VolumeSource)
	}
	for _, pvc := range all[*corev1.PersistentVolumeClaim](r) {
		if pvc.Name != data.volume.PersistentVolumeClaim.ClaimName {
			t.Errorf("claim %s is not the one --data is on", pvc.Name)
		}
		if pvc.Annotations["helm.sh/resource-policy"] != "keep" {
			t.Errorf("claim %s would be deleted with the release, and the relay's CA with it", pvc.Name)
		}
	}
}

// checkRelayReplicas checks relays on etcd: N pods rolled one at a time
// with none missing, each publishing its own pod IP on the peer port a
// headless Service lists, the store's flags from the values, the
// key-encryption key from its Secret, and no claim.
func checkRelayReplicas(t *testing.T, r *rendered, vals map[string]any) {
	t.Helper()
	d := one[*appsv1.Deployment](t, r)
	c := container(t, d)
	store := vals["store"].(map[string]any)
	etcd := store["etcd"].(map[string]any)
	replicas := 1
	if n, ok := vals["replicas"].(float64); ok {
		replicas = int(n)
	}
	if d.Spec.Replicas == nil || int(*d.Spec.Replicas) != replicas {
		t.Errorf("replicas %v, want %d", deref(d.Spec.Replicas), replicas)
	}
	ru := d.Spec.Strategy.RollingUpdate
	if d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType || ru == nil || ru.MaxUnavailable == nil || ru.MaxUnavailable.IntValue() != 0 || ru.MaxSurge == nil || ru.MaxSurge.IntValue() != 1 {
		t.Errorf("strategy %+v: want RollingUpdate with maxUnavailable 0, maxSurge 1, so a rollout never runs fewer replicas", d.Spec.Strategy)
	}
	if got := flagValue(t, c.Args, "store"); got != "etcd" {
		t.Errorf("--store=%s, want etcd", got)
	}
	var endpoints []string
	for _, e := range etcd["endpoints"].([]any) {
		endpoints = append(endpoints, e.(string))
	}
	if got := flagValues(c.Args, "etcd-endpoints"); !slices.Equal(got, endpoints) {
		t.Errorf("--etcd-endpoints %q, want %q", got, endpoints)
	}
	kek := etcd["keyEncryptionKey"].(map[string]any)
	keks := flagValues(c.Args, "ca-key-encryption-key-file")
	if len(keks) == 0 {
		t.Errorf("no --ca-key-encryption-key-file: the relay refuses etcd without one")
	}
	for _, p := range keks {
		f := fileInPod(t, r, d, p)
		if f.volume.Secret == nil || f.volume.Secret.SecretName != kek["existingSecret"] || f.rendered {
			t.Errorf("--ca-key-encryption-key-file %s from %+v, want the existing Secret %v", p, f.volume.VolumeSource, kek["existingSecret"])
			continue
		}
		// The kubelet makes a Secret's files group-readable for fsGroup;
		// the relay accepts group read (0440) and nothing for others.
		if m := f.volume.Secret.DefaultMode; m == nil || *m&0o037 != 0 {
			t.Errorf("key-encryption key Secret mounted with mode %v: the relay refuses group write and any bit for others", deref(m))
		}
	}
	// The admin socket needs a writable --data directory; the state is in
	// etcd, so no claim.
	data := fileInPod(t, r, d, flagValue(t, c.Args, "data"))
	if data.volume.EmptyDir == nil {
		t.Errorf("--data on volume %+v, want an emptyDir (only the admin socket lives there)", data.volume.VolumeSource)
	}
	if n := len(all[*corev1.PersistentVolumeClaim](r)); n != 0 {
		t.Errorf("%d claims rendered with store.type etcd", n)
	}

	// Peers: each pod listens on the peer port and publishes its own IP.
	_, listenPort, err := net.SplitHostPort(flagValue(t, c.Args, "peer-listen"))
	if err != nil {
		t.Fatalf("--peer-listen: %v", err)
	}
	advHost, advPort, err := net.SplitHostPort(flagValue(t, c.Args, "peer-advertise"))
	if err != nil {
		t.Fatalf("--peer-advertise: %v", err)
	}
	if advHost != "$(POD_IP)" || advPort != listenPort {
		t.Errorf("--peer-advertise %s:%s, want $(POD_IP):%s (the pod's own address, the port --peer-listen listens on)", advHost, advPort, listenPort)
	}
	checkFieldRef(t, c, "POD_IP", "status.podIP")
	peers := peerService(r)
	if peers == nil {
		t.Fatalf("no headless peer Service with store.type etcd (rendered %v)", r.kinds())
	}
	if peers.Spec.ClusterIP != corev1.ClusterIPNone || !peers.Spec.PublishNotReadyAddresses || peers.Spec.Type != corev1.ServiceTypeClusterIP {
		t.Errorf("peer Service %s: clusterIP %q, publishNotReadyAddresses %t, type %s: want headless, listing draining replicas too", peers.Name, peers.Spec.ClusterIP, peers.Spec.PublishNotReadyAddresses, peers.Spec.Type)
	}
	sp := servicePort(peers, "peers")
	if sp == nil || strconv.Itoa(int(sp.Port)) != listenPort || containerPort(c, sp.TargetPort.String()) != listenPort {
		t.Errorf("peer Service port %+v, want %s onto the container's --peer-listen port", sp, listenPort)
	}
	for k, v := range peers.Spec.Selector {
		if d.Spec.Template.Labels[k] != v || len(peers.Spec.Selector) == 0 {
			t.Errorf("peer Service selector %v does not select the pods", peers.Spec.Selector)
		}
	}
	if servicePort(publicService(t, r), "peers") != nil {
		t.Errorf("the public Service carries the peer port: only replicas may reach it")
	}

	pdbs := all[*policyv1.PodDisruptionBudget](r)
	if replicas > 1 && len(pdbs) != 1 {
		t.Errorf("%d replicas with %d PodDisruptionBudgets, want 1", replicas, len(pdbs))
	}
	for _, pdb := range pdbs {
		if mu := pdb.Spec.MaxUnavailable; mu == nil || mu.IntValue() < 1 || mu.IntValue() >= replicas {
			t.Errorf("PodDisruptionBudget maxUnavailable %v with %d replicas: want 1 to %d", mu, replicas, replicas-1)
		}
		checkSelects(t, "PodDisruptionBudget", pdb.Spec.Selector, d)
	}
}

// checkFieldRef checks the container's variable name comes from the pod's
// field (the downward API).
func checkFieldRef(t *testing.T, c corev1.Container, name, field string) {
	t.Helper()
	e, ok := env(c, name)
	if !ok || e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != field {
		t.Errorf("env %s %+v, want it from the pod's %s", name, e, field)
	}
}

// containerPort returns the number of the container's port named name, or
// name itself when it is a number.
func containerPort(c corev1.Container, name string) string {
	for _, p := range c.Ports {
		if p.Name == name {
			return strconv.Itoa(int(p.ContainerPort))
		}
	}
	return name
}

// peerService is the relay's headless Service listing the replicas, or nil.
func peerService(r *rendered) *corev1.Service {
	for _, s := range all[*corev1.Service](r) {
		if s.Labels["tether.io/peers"] != "" {
			return s
		}
	}
	return nil
}

// publicService is the relay's Service for agents and callers: the one
// that is neither the metrics nor the peer Service.
func publicService(t *testing.T, r *rendered) *corev1.Service {
	t.Helper()
	var out []*corev1.Service
	for _, s := range all[*corev1.Service](r) {
		if s.Labels["tether.io/metrics"] == "" && s.Labels["tether.io/peers"] == "" {
			out = append(out, s)
		}
	}
	if len(out) != 1 {
		t.Fatalf("%d public Services, want 1", len(out))
	}
	return out[0]
}

func servicePort(s *corev1.Service, name string) *corev1.ServicePort {
	for i, p := range s.Spec.Ports {
		if p.Name == name {
			return &s.Spec.Ports[i]
		}
	}
	return nil
}
