#!/usr/bin/env bash
# The operator's tests that need a real cluster (operator/tests/real_cluster.rs,
# ignored elsewhere), against the kind testbed made by up.sh: a DcdnCluster
# `optest` is created in $DCDN_NAMESPACE, edited, checked and deleted.
# Needs Rust (cargo) on the host besides what up.sh needs.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
need cargo
need kubectl
# The tests use the current kubeconfig context; never switch it for the user.
current="$(kubectl config current-context 2>/dev/null || true)"
[ "$current" = "$CONTEXT" ] || die "kubectl's current context is '$current'; run: kubectl config use-context $CONTEXT"
cd "$ROOT"
DCDN_NAMESPACE="$NS" cargo test --locked -p dcdn-operator --test real_cluster -- --ignored --nocapture
