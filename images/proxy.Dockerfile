# The tether-proxy image, FROM scratch: the static binary, /etc/passwd and
# /etc/group naming user 65532 (nonroot), the CA bundle, /tmp and
# /home/nonroot. images/build.sh stages the context (rootfs/) from binaries
# built on the host and runs docker build; `make images` runs it.
FROM scratch
COPY rootfs/ /
COPY --chown=65532:65532 home/ /home/
ARG VERSION=dev
ARG REVISION=unknown
ARG SOURCE=https://github.com/tether-k8s/tether
LABEL org.opencontainers.image.title="tether-proxy" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tether-proxy"]
