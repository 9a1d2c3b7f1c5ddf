#!/usr/bin/env bash
# Runs `dcdn bench --quick --json` (every benchmark, short rounds, small
# objects) and checks that it exits 0, that every line parses, carries
# every field, and has finite, positive figures and ratio, and that every
# benchmark produced its lines. Figures from a debug build on a shared
# machine mean nothing; that they are produced at all is what is checked.
set -euo pipefail
cd "$(dirname "$0")/../.."

# The workspace's feature set, so the binary nextest already built is reused.
cargo build --locked -q --workspace --bins
out=$(mktemp)
trap 'rm -f "$out"' EXIT
target/debug/dcdn bench --quick --json > "$out"
python3 - "$out" <<'PY'
import json, math, sys

want = {
    "fec_encode", "fec_encode_vs_reused_buffers", "fec_encode_vs_rs_simd",
    "fec_decode", "fec_decode_fixed", "fec_decode_vs_rs_simd",
    "verify_batch", "verify_single",
    "store_insert", "store_insert_vs_dashmap", "store_get", "store_get_vs_dashmap",
    "e2e_throughput", "e2e_throughput_vs_one_hop",
    "live_latency_p50", "live_latency_p99",
    "origin_offload",
}
seen = set()
lines = open(sys.argv[1]).read().splitlines()
for n, line in enumerate(lines, 1):
    try:
        r = json.loads(line)
    except ValueError as e:
        sys.exit(f"line {n} is not JSON ({e}): {line!r}")
    for key, kind in [("bench", str), ("unit", str), ("baseline_name", str),
                      ("ours", (int, float)), ("baseline", (int, float)), ("ratio", (int, float))]:
        if not isinstance(r.get(key), kind):
            sys.exit(f"line {n}: {key} missing or not {kind}: {line!r}")
    for key in ("ours", "baseline", "ratio"):
        if not (math.isfinite(r[key]) and r[key] > 0):
            sys.exit(f"{r['bench']}: {key} = {r[key]} is not a finite positive number")
    seen.add(r["bench"])
missing = want - seen
if missing:
    sys.exit(f"benchmarks without a line: {sorted(missing)}")
print(f"dcdn bench --quick --json: {len(lines)} lines, every ratio finite")
PY
