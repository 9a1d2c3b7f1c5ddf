# The offline node image: one statically linked binary, nothing else: no
# shell, no libc, no CA store (the mesh trusts only the cluster CA, which is
# mounted). Built by deploy/docker/build.sh from a binary linked on the host.
FROM scratch
# OCI annotations (opencontainers image-spec, annotations.md); build.sh adds
# version, revision, created and source from the checkout.
LABEL org.opencontainers.image.title="dcdn" \
      org.opencontainers.image.description="DCDN node: origin, relay and edge roles moving signed chunks over QUIC" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY dcdn /usr/local/bin/dcdn
# Numeric, so Kubernetes' runAsNonRoot can check it without /etc/passwd.
USER 65532:65532
EXPOSE 7400/udp 8080/tcp 9090/tcp
ENTRYPOINT ["/usr/local/bin/dcdn"]
CMD ["run", "--config", "/etc/dcdn/dcdn.toml"]
