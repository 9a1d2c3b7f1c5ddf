# The offline node image: one statically linked binary, nothing else: no
# shell, no libc, no CA store (the mesh trusts only the cluster CA, which is
# mounted). Built by deploy/docker/build.sh from a binary linked on the host.
FROM scratch
COPY dcdn /usr/local/bin/dcdn
# Numeric, so Kubernetes' runAsNonRoot can check it without /etc/passwd.
USER 65532:65532
EXPOSE 7400/udp 8080/tcp 9090/tcp
ENTRYPOINT ["/usr/local/bin/dcdn"]
CMD ["run", "--config", "/etc/dcdn/dcdn.toml"]
