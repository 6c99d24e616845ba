#!/usr/bin/env bash
# images/build.sh IMAGE... builds tether's container images FROM scratch,
# with nothing pulled: the static binaries are built on the host, staged with
# a minimal root file system into one build context per image, and built
# with `docker build` (the classic builder: BuildKit's client, buildx, is not
# needed). `make images` and `make images-test` run it; images/README.md
# describes the images.
#
# IMAGE: relay, agent, proxy (tether-relay, tether-agent, tether-proxy) or
# workload (tether-e2e-workload, the e2e suite's test workload).
#
# Environment (the Makefile sets each):
#   IMAGES_DIR  where the binaries and the build contexts go (dist/images)
#   IMAGE_REPO  the images' repository prefix (ghcr.io/tether-k8s)
#   IMAGE_TAG   their tag
#   VERSION     what the binaries print (--version) and the version label
#   REVISION    the revision label (the commit)
#
# It exits 2, having built nothing, when there is no Docker engine.
set -euo pipefail

: "${IMAGES_DIR:?}" "${IMAGE_REPO:?}" "${IMAGE_TAG:?}" "${VERSION:?}" "${REVISION:=unknown}"
SOURCE=https://github.com/tether-k8s/tether
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
root=$(cd "$(dirname "$0")/.." && pwd)

if [ $# -eq 0 ]; then echo "usage: images/build.sh relay|agent|proxy|workload..." >&2; exit 2; fi
if ! command -v docker >/dev/null 2>&1; then
  echo "images: needs a Docker engine: docker is not installed; no image was built" >&2; exit 2
fi
if ! docker info >/dev/null 2>&1; then
  echo "images: needs a Docker engine: \`docker info\` failed (is dockerd running, may this user use it?); no image was built" >&2; exit 2
fi
if [ ! -s "$CA_BUNDLE" ]; then
  echo "images: $CA_BUNDLE is missing: the relay reaches OIDC issuers over HTTPS with it (apt-get install ca-certificates)" >&2; exit 1
fi

# pkg, Dockerfile and binary of each image.
declare -A pkg dockerfile binary
for b in relay agent proxy; do
  pkg[$b]=./cmd/tether-$b dockerfile[$b]=images/$b.Dockerfile binary[$b]=tether-$b
done
pkg[workload]=./fixtures/images/workload dockerfile[workload]=fixtures/images/workload/Dockerfile binary[workload]=tether-e2e-workload
pkgs=()
for i in "$@"; do
  [ -n "${pkg[$i]:-}" ] || { echo "images: unknown image $i: want relay, agent, proxy or workload" >&2; exit 2; }
  pkgs+=("${pkg[$i]}")
done

# elapsed START: the time since START (date +%s%N), as 12.3s.
elapsed() { local ms=$((($(date +%s%N) - $1) / 1000000)); printf '%d.%ds' $((ms / 1000)) $((ms % 1000 / 100)); }

# install_if_changed SRC DST MODE: copy only when the content differs, so
# that an unchanged file keeps its metadata and docker build's cache.
install_if_changed() {
  if ! cmp -s "$1" "$2"; then install -m "$3" "$1" "$2"; else chmod "$3" "$2"; fi
}

cd "$root"
begin=$(date +%s%N)
mkdir -p "$IMAGES_DIR/bin"
# Static, for any Linux (CGO_ENABLED=0), with make build's version stamp;
# -s -w leaves out the symbol table and DWARF (a third of the size).
for i in "$@"; do
  CGO_ENABLED=0 GOOS=linux go build -trimpath -buildvcs=false \
    -ldflags "-s -w -X github.com/tether-k8s/tether/core/version.Version=$VERSION" \
    -o "$IMAGES_DIR/bin/${binary[$i]}" "${pkg[$i]}"
done
echo "images: built ${#pkgs[@]} static binaries (CGO_ENABLED=0, $(go env GOARCH), version $VERSION) in $(elapsed "$begin")"

for i in "$@"; do
  start=$(date +%s%N)
  name=${binary[$i]} ref=$IMAGE_REPO/${binary[$i]}:$IMAGE_TAG ctx=$IMAGES_DIR/$i
  mkdir -p "$ctx/rootfs/etc/ssl/certs" "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/tmp" "$ctx/home/nonroot"
  chmod 1777 "$ctx/rootfs/tmp"
  chmod 0755 "$ctx/home/nonroot"
  tmp=$(mktemp -d)
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$tmp/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$tmp/group"
  install_if_changed "$tmp/passwd" "$ctx/rootfs/etc/passwd" 0644
  install_if_changed "$tmp/group" "$ctx/rootfs/etc/group" 0644
  rm -rf "$tmp"
  install_if_changed "$CA_BUNDLE" "$ctx/rootfs/etc/ssl/certs/ca-certificates.crt" 0644
  install_if_changed "$IMAGES_DIR/bin/$name" "$ctx/rootfs/usr/local/bin/$name" 0755
  # kubectl cp runs tar and test by name; the workload is both (see its doc).
  if [ "$i" = workload ]; then
    for l in tar test; do ln -sfn "$name" "$ctx/rootfs/usr/local/bin/$l"; done
  fi
  install_if_changed "${dockerfile[$i]}" "$ctx/Dockerfile" 0644
  if ! DOCKER_BUILDKIT=0 docker build --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" \
      --build-arg SOURCE="$SOURCE" -t "$ref" "$ctx" >"$ctx/build.log" 2>&1; then
    echo "images: docker build of $ref failed; its output ($ctx/build.log):" >&2
    tail -n 30 "$ctx/build.log" >&2
    exit 1
  fi
  size=$(docker image inspect --format '{{.Size}}' "$ref")
  echo "images: $ref ($((size / 1000000)) MB) in $(elapsed "$start")"
done
echo "images: $# image(s) in $(elapsed "$begin")"
