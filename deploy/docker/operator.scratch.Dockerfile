# The offline operator image; see node.scratch.Dockerfile.
FROM scratch
LABEL org.opencontainers.image.title="dcdn-operator" \
      org.opencontainers.image.description="DCDN Kubernetes operator: one DcdnCluster becomes origin, relay and edge workloads, config rollouts and key rotations" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY dcdn-operator /usr/local/bin/dcdn-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/dcdn-operator"]

