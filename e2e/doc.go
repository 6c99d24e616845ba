// Package e2e holds tether's end-to-end suite: Ginkgo specs that run the real
// kubectl against a real kube-apiserver and etcd. The cluster comes from an
// e2e-framework provider chosen by E2E_PROVIDER: "local" (the default; package
// fixtures/local, no container runtime, a real firewall in front of the
// cluster) or, on machines with Docker, "kind".
package e2e
