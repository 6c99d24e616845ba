// Command helmpackage writes tether's charts as a Helm chart repository: one
// archive per chart and index.yaml (package chartrepo).
//
//	helmpackage -charts ../ -out ../../dist/charts [-version 0.2.0] [-url https://example.com/charts]
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/tether-k8s/tether/charts/test/chartrepo"
)

func main() {
	var o chartrepo.Options
	flag.StringVar(&o.ChartsDir, "charts", "..", "the directory holding tether-agent/ and tether-relay/")
	flag.StringVar(&o.Out, "out", "", "where to write the archives and index.yaml (required)")
	flag.StringVar(&o.Version, "version", "", "each chart's version and appVersion (default: Chart.yaml's)")
	flag.StringVar(&o.URL, "url", "", "where the repository is served, for index.yaml's URLs (default: relative)")
	flag.Parse()
	archives, err := chartrepo.Package(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helmpackage:", err)
		os.Exit(1)
	}
	for _, a := range archives {
		fmt.Println(a)
	}
}
