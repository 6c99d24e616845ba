package chartrepo_test

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/repo"

	"github.com/tether-k8s/tether/charts/test/chartrepo"
)

// TestPackageWritesARepository: the archives load back as the charts at the
// release's version, and index.yaml lists each with its archive's digest, as
// `helm repo add` and `helm install --version` read them.
func TestPackageWritesARepository(t *testing.T) {
	out := filepath.Join(t.TempDir(), "charts")
	archives, err := chartrepo.Package(chartrepo.Options{ChartsDir: "../..", Out: out, Version: "v0.9.1-rc.1", URL: "https://charts.example.com/tether"})
	if err != nil {
		t.Fatal(err)
	}
	if len(archives) != len(chartrepo.Charts) {
		t.Fatalf("%d archives for %d charts", len(archives), len(chartrepo.Charts))
	}
	idx, err := repo.LoadIndexFile(filepath.Join(out, "index.yaml"))
	if err != nil {
		t.Fatalf("index.yaml does not load as a repository index: %v", err)
	}
	for i, name := range chartrepo.Charts {
		ch, err := loader.Load(archives[i])
		if err != nil {
			t.Fatalf("%s does not load as a chart: %v", archives[i], err)
		}
		if ch.Name() != name || ch.Metadata.Version != "0.9.1-rc.1" || ch.Metadata.AppVersion != "0.9.1-rc.1" {
			t.Errorf("%s: chart %s version %s appVersion %s, want %s at 0.9.1-rc.1", archives[i], ch.Name(), ch.Metadata.Version, ch.Metadata.AppVersion, name)
		}
		if ch.Schema == nil || len(ch.Templates) == 0 {
			t.Errorf("%s: the archive lost the schema or the templates", archives[i])
		}
		cv, err := idx.Get(name, "0.9.1-rc.1")
		if err != nil {
			t.Fatalf("index.yaml has no %s 0.9.1-rc.1: %v", name, err)
		}
		b, err := os.ReadFile(archives[i])
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		if cv.Digest != hex.EncodeToString(sum[:]) {
			t.Errorf("index.yaml's digest of %s is %s, the archive's %x", name, cv.Digest, sum)
		}
		if len(cv.URLs) != 1 || cv.URLs[0] != "https://charts.example.com/tether/"+filepath.Base(archives[i]) {
			t.Errorf("index.yaml's URLs of %s: %v", name, cv.URLs)
		}
	}
}

// TestPackageRefusesABadVersion: a version Helm would refuse later is
// refused before anything is written.
func TestPackageRefusesABadVersion(t *testing.T) {
	out := filepath.Join(t.TempDir(), "charts")
	_, err := chartrepo.Package(chartrepo.Options{ChartsDir: "../..", Out: out, Version: "latest"})
	if err == nil || !strings.Contains(err.Error(), `Options.Version "latest"`) {
		t.Fatalf("Package: %v, want a refusal naming the version", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatalf("a refused version still created %s", out)
	}
}
