#!/usr/bin/env bash
# The kind testbed's scripts, run for real where no Kubernetes exists:
# smoke.sh, rotate.sh and chaos.sh against a local `dcdn up` (an origin, a
# relay, three edges as processes), with testbed/kind/test/kubectl standing
# in for kubectl (port-forward, pod proxy, the DcdnCluster's status). This
# proves their publishing, fetching, digest, metrics and loop logic on real
# nodes; what it cannot prove is how Kubernetes itself behaves under them:
# the disruptions are no-ops here. Linting is scripts/checks/helm.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build -q --locked -p dcdn-node --bin dcdn
dir="$(mktemp -d)"
"${CARGO_TARGET_DIR:-target}/debug/dcdn" up --relays 1 --edges 3 --dir "$dir/up" >"$dir/up.log" 2>&1 &
up_pid=$!
trap 'kill "$up_pid" 2>/dev/null; wait "$up_pid" 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 120); do
  grep -q "Press Ctrl-C" "$dir/up.log" && break
  kill -0 "$up_pid" 2>/dev/null || { cat "$dir/up.log" >&2; exit 1; }
  sleep 0.5
done
grep -q "Press Ctrl-C" "$dir/up.log" || { cat "$dir/up.log" >&2; exit 1; }
edge="$(awk '$1 == "edge-0" { for (i = 1; i <= NF; i++) if ($i == "serve") print $(i + 1) }' "$dir/up.log")"

export PATH="$PWD/testbed/kind/test:$PATH" DCDN_FAKE_DIR="$dir" DCDN_EDGE_URL="$edge"
for script in smoke rotate chaos; do
  echo "==> testbed/kind/$script.sh (kubectl stand-in, local dcdn up)"
  MAX_GAP=5 "testbed/kind/$script.sh"
done
