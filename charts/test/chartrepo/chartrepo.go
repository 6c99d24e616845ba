package chartrepo

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/Masterminds/semver/v3"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/repo"
)

// Charts are the directories, under the repository's charts/, that a
// release packages.
var Charts = []string{"tether-agent", "tether-relay"}

// Options say what to package and where.
type Options struct {
	// ChartsDir holds the chart directories (the repository's charts/).
	// Required.
	ChartsDir string
	// Out is the directory the archives and index.yaml are written to; it
	// is created if missing. Required.
	Out string
	// Version, when set, is each chart's version and appVersion (a
	// release's version, e.g. 0.2.0 or 0.2.0-rc.1; a leading v is dropped).
	// Zero keeps the versions in Chart.yaml.
	Version string
	// URL is where the repository will be served (index.yaml's archive
	// URLs are relative to it). Zero leaves them relative.
	URL string
}

// Validate reports the first problem with o, naming the field.
func (o *Options) Validate() error {
	switch {
	case o.ChartsDir == "":
		return errors.New("chartrepo: Options.ChartsDir is required (the repository's charts/ directory)")
	case o.Out == "":
		return errors.New("chartrepo: Options.Out is required (where the archives and index.yaml go)")
	}
	if o.Version != "" {
		if _, err := semver.StrictNewVersion(strings.TrimPrefix(o.Version, "v")); err != nil {
			return fmt.Errorf("chartrepo: Options.Version %q: want a semantic version such as 0.2.0: %w", o.Version, err)
		}
	}
	return nil
}

// Package lints nothing and renders nothing (the chart tests do): it loads
// each chart, sets the version, writes its archive into o.Out, and then the
// index of every archive there. It returns the archives' paths.
func Package(o Options) ([]string, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, fmt.Errorf("chartrepo: create %s: %w", o.Out, err)
	}
	version := strings.TrimPrefix(o.Version, "v")
	var archives []string
	for _, name := range Charts {
		dir := filepath.Join(o.ChartsDir, name)
		ch, err := loader.LoadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("chartrepo: load the chart in %s: %w", dir, err)
		}
		if version != "" {
			ch.Metadata.Version, ch.Metadata.AppVersion = version, version
		}
		if err := ch.Validate(); err != nil {
			return nil, fmt.Errorf("chartrepo: chart %s: %w", name, err)
		}
		path, err := chartutil.Save(ch, o.Out)
		if err != nil {
			return nil, fmt.Errorf("chartrepo: write the archive of %s into %s: %w", name, o.Out, err)
		}
		archives = append(archives, path)
	}
	idx, err := repo.IndexDirectory(o.Out, o.URL)
	if err != nil {
		return nil, fmt.Errorf("chartrepo: index %s: %w", o.Out, err)
	}
	idx.SortEntries()
	if err := idx.WriteFile(filepath.Join(o.Out, "index.yaml"), 0o644); err != nil {
		return nil, fmt.Errorf("chartrepo: write %s: %w", filepath.Join(o.Out, "index.yaml"), err)
	}
	return archives, nil
}
