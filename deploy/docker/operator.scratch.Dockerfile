# The offline operator image; see node.scratch.Dockerfile.
FROM scratch
COPY dcdn-operator /usr/local/bin/dcdn-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/dcdn-operator"]

