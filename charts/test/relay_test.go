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
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// relayRequired is the least an operator must give the relay chart.
const relayRequired = "hostnames: [relay.example.com]\n" + authnConfig

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

	// One writer of the bbolt file at a time.
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 1 || d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Errorf("replicas %v, strategy %s: the embedded store needs exactly one replica, replaced with Recreate", deref(d.Spec.Replicas), d.Spec.Strategy.Type)
	}
	if pod.SecurityContext == nil || pod.SecurityContext.FSGroup == nil || *pod.SecurityContext.FSGroup != 65532 {
		t.Errorf("fsGroup %v, want 65532 so the relay can write its volume", pod.SecurityContext)
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
	data := fileInPod(t, r, d, flagValue(t, c.Args, "data"))
	if data.volume.PersistentVolumeClaim == nil {
		t.Errorf("--data on volume %+v, want a PersistentVolumeClaim", data.volume.VolumeSource)
	}
	for _, pvc := range all[*corev1.PersistentVolumeClaim](r) {
		if pvc.Name != data.volume.PersistentVolumeClaim.ClaimName {
			t.Errorf("claim %s is not the one --data is on", pvc.Name)
		}
		if pvc.Annotations["helm.sh/resource-policy"] != "keep" {
			t.Errorf("claim %s would be deleted with the release, and the relay's CA with it", pvc.Name)
		}
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

	// The grace period outlasts the drain.
	drain, err := time.ParseDuration(flagValue(t, c.Args, "drain-timeout"))
	if err != nil {
		t.Fatalf("--drain-timeout: %v", err)
	}
	if g := pod.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second <= drain {
		t.Errorf("terminationGracePeriodSeconds %v is not greater than --drain-timeout %s", deref(g), drain)
	}

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

// publicService is the relay's Service for agents and callers: the one
// that is not the metrics Service.
func publicService(t *testing.T, r *rendered) *corev1.Service {
	t.Helper()
	var out []*corev1.Service
	for _, s := range all[*corev1.Service](r) {
		if s.Labels["tether.io/metrics"] == "" {
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
