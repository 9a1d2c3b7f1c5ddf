#!/usr/bin/env bash
# Try a DcdnCluster without a Kubernetes cluster: the operator reconciles
# FILE in-process (in-memory API server), the pods it renders run on Docker
# (operator/pods: StatefulSet controller, kubelet, Services as DNS aliases),
# then an object and a live stream published at the origin are read through
# the edge Service.
#
#   testbed/pods/run.sh deploy/examples/minimal.yaml
#   DCDN_PODS_BUILD=1 testbed/pods/run.sh FILE.yaml   # rebuild the image first
#
# One line per check and a summary; exits 0 only if every byte arrived
# verified. Everything it created (containers, network, files, the private
# image tag) is removed on exit, also when interrupted.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 1 ] || { echo "usage: $0 FILE.yaml [dcdn-pods flags]" >&2; exit 2; }
FILE="$1"
shift
[ -f "$FILE" ] || { echo "error: no such file: $FILE" >&2; exit 2; }
if ! docker info >/dev/null 2>&1; then
  echo "error: no Docker engine answers (docker info failed)" >&2
  exit 1
fi
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
IMAGE="dcdn/node:$VERSION"
if [ -n "${DCDN_PODS_BUILD:-}" ] || ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  deploy/docker/build.sh
fi
RUN="dcdn-pods-$$-$(head -c 3 /dev/urandom | od -An -tx1 | tr -d ' \n')"
# A run-private tag: another build retagging dcdn/node meanwhile cannot
# change what this run's pods execute.
PRIVATE="dcdn/node:$RUN"
docker tag "$IMAGE" "$PRIVATE"
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  docker ps -aq --filter "label=dcdn.pods=$RUN" | xargs -r docker rm -f >/dev/null 2>&1 || true
  docker network rm "$RUN" >/dev/null 2>&1 || true
  docker rmi "$PRIVATE" >/dev/null 2>&1 || true
  rm -rf "${TMPDIR:-/tmp}/$RUN"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cargo build -q --locked -p dcdn-pods
DCDN_PODS_RUN="$RUN" "${CARGO_TARGET_DIR:-target}/debug/dcdn-pods" "$FILE" --image "$PRIVATE" "$@"
