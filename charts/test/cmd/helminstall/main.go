// Command helminstall installs or uninstalls one of tether's charts in a real
// cluster with Helm's Go SDK (action.Install, action.Uninstall), as `helm
// install` and `helm uninstall` would. The e2e suite builds it (it lives in
// this nested module so the main module never depends on Helm) and runs it
// with an admin kubeconfig: inside the local cluster's network namespace, or
// against a kind cluster.
//
//	helminstall install -kubeconfig F -namespace NS -release R -chart DIR -values V.yaml [-wait 2m]
//	helminstall uninstall -kubeconfig F -namespace NS -release R
//
// install prints one JSON object on stdout (Result): the release, the objects
// it created, the rendered manifest and its Deployment, so the caller can run
// the Deployment's container as its pod would. Progress goes to stderr.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/kube"
	"helm.sh/helm/v3/pkg/releaseutil"
	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"
)

// Result is what install prints.
type Result struct {
	Release   string `json:"release"`
	Namespace string `json:"namespace"`
	Chart     string `json:"chart"`
	Version   string `json:"version"`
	Revision  int    `json:"revision"`
	Status    string `json:"status"`
	// Objects are the release's objects as Kind/name, in install order.
	Objects []string `json:"objects"`
	// Manifest is the rendered manifest Helm applied.
	Manifest string `json:"manifest"`
	// Deployment is the release's Deployment, as rendered.
	Deployment *appsv1.Deployment `json:"deployment"`
}

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "helminstall:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "install" && args[0] != "uninstall") {
		return errors.New("usage: helminstall install|uninstall -kubeconfig F -namespace NS -release R [-chart DIR -values FILE -wait D]")
	}
	fs := flag.NewFlagSet("helminstall "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	kubeconfig := fs.String("kubeconfig", "", "admin kubeconfig (required)")
	namespace := fs.String("namespace", "", "the release's namespace (required)")
	releaseName := fs.String("release", "", "the release name (required)")
	chartDir := fs.String("chart", "", "install: the chart's directory (required)")
	valuesFile := fs.String("values", "", "install: a YAML file of values")
	createNS := fs.Bool("create-namespace", false, "install: create the namespace")
	wait := fs.Duration("wait", 0, "wait this long for the release's resources to be ready (0: do not wait)")
	verbose := fs.Bool("v", false, "Helm's debug log on stderr")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *kubeconfig == "" || *namespace == "" || *releaseName == "" {
		return errors.New("-kubeconfig, -namespace and -release are required")
	}

	// Helm's discovery cache goes to a directory of our own, not ~/.kube.
	cache, err := os.MkdirTemp("", "helminstall-cache-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(cache)
	getter := kube.GetConfig(*kubeconfig, "", *namespace)
	getter.CacheDir = &cache
	debug := func(string, ...any) {}
	if *verbose {
		debug = func(format string, v ...any) { fmt.Fprintf(stderr, "helm: "+format+"\n", v...) }
	}
	cfg := new(action.Configuration)
	if err := cfg.Init(getter, *namespace, "secret", debug); err != nil {
		return fmt.Errorf("helm configuration: %w", err)
	}

	if args[0] == "uninstall" {
		u := action.NewUninstall(cfg)
		u.Wait, u.Timeout = *wait > 0, *wait
		res, err := u.Run(*releaseName)
		if err != nil {
			return fmt.Errorf("uninstall %s: %w", *releaseName, err)
		}
		fmt.Fprintf(stderr, "helminstall: uninstalled %s from %s\n", *releaseName, *namespace)
		return json.NewEncoder(stdout).Encode(map[string]any{"release": *releaseName, "namespace": *namespace, "info": res.Info})
	}

	if *chartDir == "" {
		return errors.New("install: -chart is required")
	}
	ch, err := loader.Load(*chartDir)
	if err != nil {
		return fmt.Errorf("load chart %s: %w", *chartDir, err)
	}
	vals := map[string]any{}
	if *valuesFile != "" {
		b, err := os.ReadFile(*valuesFile)
		if err != nil {
			return err
		}
		if err := yaml.Unmarshal(b, &vals); err != nil {
			return fmt.Errorf("values %s: %w", *valuesFile, err)
		}
	}
	in := action.NewInstall(cfg)
	in.ReleaseName, in.Namespace, in.CreateNamespace = *releaseName, *namespace, *createNS
	in.Wait, in.Timeout = *wait > 0, max(*wait, 2*time.Minute)
	begin := time.Now()
	rel, err := in.Run(ch, vals)
	if err != nil {
		return fmt.Errorf("install %s (chart %s): %w", *releaseName, ch.Metadata.Name, err)
	}
	fmt.Fprintf(stderr, "helminstall: installed %s (chart %s %s) in %s, revision %d, %s, in %s\n", rel.Name, ch.Metadata.Name,
		ch.Metadata.Version, rel.Namespace, rel.Version, rel.Info.Status, time.Since(begin).Round(time.Millisecond))

	res := Result{Release: rel.Name, Namespace: rel.Namespace, Chart: ch.Metadata.Name, Version: ch.Metadata.Version,
		Revision: rel.Version, Status: rel.Info.Status.String(), Manifest: rel.Manifest}
	manifests := releaseutil.SplitManifests(rel.Manifest)
	keys := make([]string, 0, len(manifests))
	for k := range manifests {
		keys = append(keys, k)
	}
	sort.Sort(releaseutil.BySplitManifestsOrder(keys))
	for _, k := range keys {
		doc := manifests[k]
		var meta struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			return fmt.Errorf("decode the release's %s: %w", k, err)
		}
		if meta.Kind == "" {
			continue
		}
		res.Objects = append(res.Objects, meta.Kind+"/"+meta.Metadata.Name)
		if meta.Kind == "Deployment" {
			if res.Deployment != nil {
				return errors.New("the release has more than one Deployment")
			}
			res.Deployment = new(appsv1.Deployment)
			if err := yaml.UnmarshalStrict([]byte(doc), res.Deployment); err != nil {
				return fmt.Errorf("decode the Deployment: %w", err)
			}
		}
	}
	if res.Deployment == nil {
		return fmt.Errorf("the release has no Deployment; objects: %s", strings.Join(res.Objects, ", "))
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(res)
}
