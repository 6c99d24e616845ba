// Package images tests tether's container images by running them as
// containers, so that an image that cannot start fails the build. It has no
// code of its own: images/build.sh builds the images (`make images`), and
// `make images-test` builds them with the e2e workload image and runs this
// package's tests:
//
//   - TestImageContents: each image's configuration (user 65532, the
//     binary as entrypoint, the OCI labels) and file system (the binary,
//     /etc/passwd and /etc/group, the CA bundle, /tmp, no shell);
//   - TestImageHelp: `--help` and `--version` of tether-relay, tether-agent
//     and tether-proxy as containers, and the workload's exec targets;
//   - TestImageJoin: the relay image and the agent image as containers,
//     hardened as the charts run them, joined with a real join token around
//     the fixtures' real kube-apiserver and etcd (fixtures/cluster,
//     fixtures/stack), and the real kubectl through the host's tether-proxy.
//
// The containers of TestImageJoin run in the network namespaces of the
// fixture's hosts: each of those hosts is the namespace of a container of
// the workload image (netns.Config.Attach), which the relay's and the
// agent's containers join (`docker run --network container:...`), so that
// the firewall and the addresses are the local provider's. Nothing leaves
// those namespaces.
//
// The tests skip, with one line, when `docker info` fails or when
// TETHER_IMAGE_REPO and TETHER_IMAGE_TAG (which `make images-test` sets)
// do not name the images to test.
package images
