#!/usr/bin/env bash
# The real swarm against `dcdn sim` (issue #14): an origin, a relay and 8
# edges as `dcdn run` processes, one network namespace each, every link
# capped at 100 Mbit/s with `tbf`; a 256 MiB object preheated to every edge
# at once; per-edge completion and the share of edge bytes that came from
# edges, real against the simulator on the same scenario
# (testbed/swarm-netns/fidelity.py; about 75 s). The nodes are the image's
# statically linked `dist` binary (a debug node is CPU-bound, not
# link-bound); the simulator, which that binary leaves out, runs from the
# debug build. The issue asks agreement within 20 % (measured: 14-18 %
# apart, see its note); CI fails past 30 %, so load on a shared machine
# does not fail it, while a real divergence does (seed pacing made the real
# edges take 55 s against the simulator's 28 s: 49 % apart).
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -c "import ast, sys; ast.parse(open(sys.argv[1]).read())" testbed/swarm-netns/fidelity.py
if [ "$(id -u)" != 0 ] || ! ip netns add dcdn-probe 2>/dev/null; then
  echo "!!! SKIPPED: needs root and network namespaces; the real swarm was not compared with the simulator !!!" >&2
  exit 0
fi
ip netns del dcdn-probe
if ! command -v iptables >/dev/null || ! command -v tc >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables iproute2 >/dev/null
fi
# After docker-testbed.sh both builds are cargo no-ops.
deploy/docker/build.sh --no-image >/dev/null
cargo build --locked -q --workspace --bins
triple="$(uname -m)-unknown-linux-gnu"
python3 testbed/swarm-netns/fidelity.py --dcdn "target/$triple/dist/dcdn" --sim-dcdn target/debug/dcdn \
  --edges 8 --object-mb 256 --mbps 100 --tolerance 0.30
