#!/usr/bin/env bash
# Deletes the kind testbed cluster (and with it everything in it).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
need kind
if kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
  kind delete cluster --name "$KIND_CLUSTER"
else
  say "no kind cluster $KIND_CLUSTER; nothing to do"
fi
