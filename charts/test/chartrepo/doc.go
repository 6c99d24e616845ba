// Package chartrepo packages tether's Helm charts as a chart repository: one
// archive per chart, at a version given at release time (the binaries'
// version), and the repository's index.yaml with each archive's digest. It
// is what `make charts-package` and the release run (cmd/helmpackage), and
// what the chart tests check, so the archives users `helm repo add` are the
// ones the tests read back. It lives in the nested charts/test module so the
// main module never depends on Helm.
package chartrepo
