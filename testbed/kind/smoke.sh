#!/usr/bin/env bash
# Smoke test of the kind testbed: publish objects through the origin (its
# ingest API, with the token from the cluster's admin Secret), fetch them
# through the edge Service on 127.0.0.1 and from every edge pod, compare
# SHA-256 digests. Exits 0 only if every copy is identical.
#
#   testbed/kind/smoke.sh [BYTES]     # object size, default 8 MiB + 12345
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
require_testbed
setup_tmp
size="${1:-$((8 * 1024 * 1024 + 12345))}"

for bytes in "$size" 1000; do
  name="smoke-$(date +%s)-$$-$bytes"
  random_file "$TMP/$name" "$bytes"
  want="$(digest "$TMP/$name")"
  if ! publish "$TMP/$name" "$name"; then
    fail "publish $name ($bytes bytes) at the origin"
    continue
  fi
  start=$SECONDS
  pass "published $name ($bytes bytes, sha256 ${want:0:16}...) at $DCDN-origin-0"

  got=""
  for _ in $(seq 1 15); do
    if fetch_edge "$name" "$TMP/$name.edge" 2>/dev/null; then
      got="$(digest "$TMP/$name.edge")"
      break
    fi
    sleep 1
  done
  if [ "$got" = "$want" ]; then
    pass "edge Service $EDGE_URL: $name identical, $((SECONDS - start)) s after publish"
  else
    fail "edge Service $EDGE_URL: $name ${got:+digest $got, }want $want"
  fi

  n=0
  bad=()
  for pod in $(pods_of edge); do
    if fetch_pod "$pod" 8080 "/v1/objects/$name" "$TMP/$name.$pod" 2>/dev/null &&
      [ "$(digest "$TMP/$name.$pod")" = "$want" ]; then
      n=$((n + 1))
    else
      bad+=("$pod")
    fi
  done
  if [ "${#bad[@]}" -eq 0 ] && [ "$n" -gt 0 ]; then
    pass "$name identical at all $n edge pods"
  else
    fail "$name missing or different at: ${bad[*]:-no edge pods found}"
  fi
done
finish
