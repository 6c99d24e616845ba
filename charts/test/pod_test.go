package charts

import (
	"net"
	"os"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// checkHardened checks the pod runs as the image's non-root user with a
// read-only root file system, no privilege escalation, no capabilities and
// the runtime's default seccomp profile, and shares nothing with the node.
func checkHardened(t *testing.T, d *appsv1.Deployment) {
	t.Helper()
	pod := d.Spec.Template.Spec
	if pod.HostNetwork || pod.HostPID || pod.HostIPC {
		t.Errorf("pod shares the node's network, PID or IPC namespace")
	}
	psc := pod.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	for _, v := range pod.Volumes {
		if v.HostPath != nil {
			t.Errorf("volume %s is a hostPath", v.Name)
		}
	}
	c := container(t, d)
	sc := c.SecurityContext
	if sc == nil {
		t.Fatalf("container %s has no securityContext", c.Name)
	}
	// Container settings override the pod's: check the effective ones.
	runAsNonRoot := firstNonNil(sc.RunAsNonRoot, psc.RunAsNonRoot)
	runAsUser := firstNonNil(sc.RunAsUser, psc.RunAsUser)
	seccomp := firstNonNil(sc.SeccompProfile, psc.SeccompProfile)
	switch {
	case runAsNonRoot == nil || !*runAsNonRoot:
		t.Errorf("runAsNonRoot is not true")
	case runAsUser == nil || *runAsUser != 65532:
		t.Errorf("runAsUser = %v, want 65532 (the nonroot user of tether's images)", deref(runAsUser))
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("seccompProfile = %+v, want RuntimeDefault", seccomp)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("readOnlyRootFilesystem is not true")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("allowPrivilegeEscalation is not false")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Errorf("privileged")
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
		t.Errorf("capabilities = %+v, want drop [ALL] and add nothing", sc.Capabilities)
	}
	if c.Resources.Requests == nil {
		t.Errorf("no resource requests")
	}
}

func firstNonNil[T any](vs ...*T) *T {
	for _, v := range vs {
		if v != nil {
			return v
		}
	}
	return nil
}

func deref[T any](v *T) any {
	if v == nil {
		return nil
	}
	return *v
}

// checkProbes checks readiness and liveness probe the paths the binary
// serves, on the port its --health-listen flag names.
func checkProbes(t *testing.T, c corev1.Container) {
	t.Helper()
	_, port, err := net.SplitHostPort(flagValue(t, c.Args, "health-listen"))
	if err != nil {
		t.Fatalf("--health-listen: %v", err)
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"readiness", c.ReadinessProbe, "/readyz"}, {"liveness", c.LivenessProbe, "/healthz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("no HTTP %s probe", p.name)
			continue
		}
		if p.probe.HTTPGet.Path != p.path {
			t.Errorf("%s probe path %q, want %q", p.name, p.probe.HTTPGet.Path, p.path)
		}
		got := p.probe.HTTPGet.Port.String()
		for _, cp := range c.Ports {
			if cp.Name == got {
				got = strconv.Itoa(int(cp.ContainerPort))
			}
		}
		if got != port {
			t.Errorf("%s probe on port %s, but --health-listen listens on %s", p.name, got, port)
		}
	}
}

var envRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// checkEnvRefs checks every $(VAR) in the args and env values names a
// variable Kubernetes defines for the container at that point: one of its
// env entries (earlier ones, for env values) or the API server's service
// variables.
func checkEnvRefs(t *testing.T, c corev1.Container) {
	t.Helper()
	defined := map[string]bool{"KUBERNETES_SERVICE_HOST": true, "KUBERNETES_SERVICE_PORT": true}
	for _, e := range c.Env {
		for _, m := range envRef.FindAllStringSubmatch(e.Value, -1) {
			if !defined[m[1]] {
				t.Errorf("env %s refers to $(%s), which is not defined before it", e.Name, m[1])
			}
		}
		defined[e.Name] = true
	}
	for _, a := range c.Args {
		for _, m := range envRef.FindAllStringSubmatch(a, -1) {
			if !defined[m[1]] {
				t.Errorf("arg %q refers to $(%s), which the container does not define", a, m[1])
			}
		}
	}
}

// env returns the container's variable name, and whether it is set.
func env(c corev1.Container, name string) (corev1.EnvVar, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e, true
		}
	}
	return corev1.EnvVar{}, false
}

// mountedFile is a file a flag names, as the pod would see it.
type mountedFile struct {
	volume corev1.Volume
	// key is the ConfigMap or Secret key the file comes from.
	key string
	// content is the file's content when the chart renders its source;
	// rendered says whether it does.
	content  string
	rendered bool
}

// fileInPod finds where the file at p comes from: a volume mounted above it
// and, for a ConfigMap or Secret, the key, whose content it returns when
// the chart renders that object. It fails when no mount holds the file.
func fileInPod(t *testing.T, r *rendered, d *appsv1.Deployment, p string) mountedFile {
	t.Helper()
	c := container(t, d)
	var mount *corev1.VolumeMount
	for i, m := range c.VolumeMounts {
		if strings.HasPrefix(p, strings.TrimSuffix(m.MountPath, "/")+"/") && (mount == nil || len(m.MountPath) > len(mount.MountPath)) {
			mount = &c.VolumeMounts[i]
		}
	}
	if mount == nil {
		t.Fatalf("%s: no volume is mounted above it", p)
	}
	var vol *corev1.Volume
	for i, v := range d.Spec.Template.Spec.Volumes {
		if v.Name == mount.Name {
			vol = &d.Spec.Template.Spec.Volumes[i]
		}
	}
	if vol == nil {
		t.Fatalf("%s: mount %s names no volume", p, mount.Name)
	}
	rel := strings.TrimPrefix(p, strings.TrimSuffix(mount.MountPath, "/")+"/")
	f := mountedFile{volume: *vol}
	keyFor := func(items []corev1.KeyToPath) string {
		if len(items) == 0 {
			return rel
		}
		for _, it := range items {
			if it.Path == rel {
				return it.Key
			}
		}
		t.Fatalf("%s: volume %s projects no item to %s", p, vol.Name, rel)
		return ""
	}
	switch {
	case vol.ConfigMap != nil:
		f.key = keyFor(vol.ConfigMap.Items)
		for _, cm := range all[*corev1.ConfigMap](r) {
			if cm.Name == vol.ConfigMap.Name {
				content, ok := cm.Data[f.key]
				if !ok {
					t.Fatalf("%s: ConfigMap %s has no key %s", p, cm.Name, f.key)
				}
				f.content, f.rendered = content, true
			}
		}
		if !f.rendered {
			t.Fatalf("%s: ConfigMap %s is not part of the chart", p, vol.ConfigMap.Name)
		}
	case vol.Secret != nil:
		f.key = keyFor(vol.Secret.Items)
		for _, s := range all[*corev1.Secret](r) {
			if s.Name == vol.Secret.SecretName {
				content, ok := s.Data[f.key]
				if !ok {
					t.Fatalf("%s: Secret %s has no key %s", p, s.Name, f.key)
				}
				f.content, f.rendered = string(content), true
			}
		}
	case vol.PersistentVolumeClaim != nil, vol.EmptyDir != nil:
		f.key = rel
	default:
		t.Fatalf("%s: volume %s is neither a ConfigMap, a Secret, a claim nor an emptyDir", p, vol.Name)
	}
	return f
}

// checkSelects checks sel selects the Deployment's pods.
func checkSelects(t *testing.T, what string, sel *metav1.LabelSelector, d *appsv1.Deployment) {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Fatalf("%s selector: %v", what, err)
	}
	if s.Empty() || !s.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("%s selector %q does not select the pods (labels %v)", what, s, d.Spec.Template.Labels)
	}
}

// documentedExtras returns the userextras/... resources docs/operations.md
// says the agent's ClusterRole grants.
func documentedExtras(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(path.Join("..", "..", "docs", "operations.md"))
	if err != nil {
		t.Fatalf("read docs/operations.md: %v", err)
	}
	found := regexp.MustCompile(`userextras/[a-z0-9][-a-z0-9./]*[a-z0-9]`).FindAllString(string(b), -1)
	slices.Sort(found)
	found = slices.Compact(found)
	if len(found) == 0 {
		t.Fatal("docs/operations.md lists no userextras/ resource")
	}
	return found
}
