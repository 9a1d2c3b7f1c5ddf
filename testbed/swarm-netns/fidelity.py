#!/usr/bin/env python3
"""Real swarm against `dcdn sim` on the same scenario (issue #14).

A real cluster — 1 origin, 1 relay, N edges, each `dcdn run` a process in its
own network namespace — joined by a bridge, every node's link capped both
ways with a `tbf` qdisc (upload on the namespace side of its veth, download
on the bridge side), so the network and not the CPU is the bottleneck. An
object is published (before the caps go on), then preheated: every edge
swarms it at once. Per-edge completion (from the preheat to the edge's
swarm completing, polled on its admin API) and the share of the edges' swarm
bytes that came from other edges are compared with `dcdn sim` on the same
scenario (same tiers, object, chunk size, caps and `[p2p]`); exit 0 only if
median and slowest completion and the share agree within the tolerance.

Needs root (namespaces, qdiscs) and a `dcdn` binary built with optimisations
(debug nodes are CPU-bound, not link-bound); run by
`scripts/checks/swarm-netns.sh`, or by hand:

  sudo testbed/swarm-netns/fidelity.py --dcdn target/release/dcdn \\
      --edges 8 --object-mb 256 --mbps 100 --timeline

--timeline prints, once a second, each edge's share of the object and what
the origin and the relay have sent: where a slow run loses its time (it
showed the relay feeding edges at 37 % of its link while seeds were paced).
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

PREFIX = "dsw"  # namespaces dsw-<i>, host-side veths dsw<i>h, bridge dswbr
BRIDGE = f"{PREFIX}br"
HOST_IP = "10.77.0.254"


def sh(*args, check=True, ns=None, quiet=False):
    cmd = list(args)
    if ns is not None:
        cmd = ["ip", "netns", "exec", ns] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"swarm-netns: {' '.join(cmd)} failed: {r.stderr.strip()}")
    return r


# Bridged frames pass the host's iptables FORWARD chain when br_netfilter is
# loaded (Docker loads it and sets the policy to DROP): accept exactly this
# bridge's traffic while the run lasts.
FORWARD_RULE = ["FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"]


def teardown(n):
    while sh("iptables", "-C", *FORWARD_RULE, check=False, quiet=True).returncode == 0:
        sh("iptables", "-D", *FORWARD_RULE, check=False)
    for i in range(n):
        sh("ip", "netns", "del", f"{PREFIX}-{i}", check=False)
        sh("ip", "link", "del", f"{PREFIX}{i}h", check=False)
    sh("ip", "link", "del", BRIDGE, check=False)


def network(n):
    teardown(n + 4)
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")
    if sh("iptables", "-S", "FORWARD", check=False).returncode == 0:
        sh("iptables", "-I", *FORWARD_RULE)
    for i in range(n):
        ns, host = f"{PREFIX}-{i}", f"{PREFIX}{i}h"
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", host, "master", BRIDGE)
        sh("ip", "link", "set", host, "up")
        sh("ip", "addr", "add", f"10.77.0.{i + 1}/24", "dev", "eth0", ns=ns)
        sh("ip", "link", "set", "eth0", "up", ns=ns)
        sh("ip", "link", "set", "lo", "up", ns=ns)


def cap(n, mbps):
    # A queue of 50 ms at the rate: QUIC's congestion control finds the rate
    # without a drop-tail queue so short that it never fills the link.
    for i in range(n):
        args = ["tbf", "rate", f"{mbps}mbit", "burst", "64kb", "latency", "50ms"]
        sh("tc", "qdisc", "replace", "dev", "eth0", "root", *args, ns=f"{PREFIX}-{i}")
        sh("tc", "qdisc", "replace", "dev", f"{PREFIX}{i}h", "root", *args)


def metric(text, name, **labels):
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        rest = line[len(name):]
        if not rest.startswith(("{", " ")):
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def get(url, token, timeout=5):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read().decode()


def post(url, token, body=b"", method="POST", timeout=600):
    req = urllib.request.Request(
        url, data=body, method=method, headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read().decode()


P2P = {
    # The same `[p2p]` in the nodes (as DCDN_P2P_* overrides) and the sim:
    # a burst lasts tens of seconds, so re-rank every second.
    "unchoke_interval_seconds": 1,
    "rate_window_seconds": 2,
    "regular_unchoke_count": 4,
    "optimistic_unchoke_count": 2,
}


def sim_scenario(a):
    p2p = "\n".join(f"{k} = {v}" for k, v in P2P.items())
    node = f"{{ up_mbps = {a.mbps}, down_mbps = {a.mbps} }}"
    return f"""# Written by testbed/swarm-netns/fidelity.py: the real run's scenario.
name = "swarm-netns"
seed = 1

[tiers]
relays = 1
edges = {a.edges}

[content]
object_mb = {a.object_mb}
chunk_kb = {a.chunk_kb}

[nodes]
origin = {node}
relay = {node}
edge = {node}

[network]
origin_relay = {{ latency_ms = 0.1 }}
relay_edge = {{ latency_ms = 0.1 }}
edge_edge = {{ latency_ms = 0.1 }}

[peers]
neighbours = {a.edges - 1}
start_spread_s = 0
deadlines = false
swarm = true

[p2p]
{p2p}

[run]
max_time_s = 3600
"""


def run_sim(a, work):
    path = os.path.join(work, "scenario.toml")
    with open(path, "w") as f:
        f.write(sim_scenario(a))
    r = sh(a.sim_dcdn or a.dcdn, "sim", path, "--json")
    rep = json.loads(r.stdout)
    edge = next(t for t in rep["completion"] if t["tier"] == "edge")
    if edge["completed"] != a.edges:
        raise SystemExit(f"swarm-netns: the sim did not complete: {rep.get('end')}")
    return {
        "p50_s": edge["seconds"]["p50"],
        "max_s": edge["seconds"]["max"],
        "share": rep["bytes"]["edge_to_edge_share"],
        "origin_x": rep["bytes"]["origin"] / (a.object_mb * 2**20),
    }


def percentile(sorted_values, q):
    i = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) + 1))) - 1))
    return sorted_values[i]


def run_real(a, work):
    n = a.edges + 2
    cluster = os.path.join(work, "cluster")
    # `dcdn up` lays the cluster out (CA, keys, tokens, one config per node)
    # on loopback; it is stopped at once and its configs are moved onto the
    # namespaces' addresses (ports are unique in a plan, so each
    # 127.0.0.1:PORT names one node).
    up = subprocess.Popen(
        [a.dcdn, "up", "--relays", "1", "--edges", str(a.edges), "--json", "--dir", cluster],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = up.stdout.readline()
    up.send_signal(signal.SIGINT)
    up.wait(timeout=60)
    if not line:
        raise SystemExit("swarm-netns: dcdn up did not report ready")
    plan = json.loads(line)
    names = ["origin-0", "relay-0"] + [f"edge-{i}" for i in range(a.edges)]
    ip = {name: f"10.77.0.{i + 1}" for i, name in enumerate(names)}
    configs = {name: open(os.path.join(cluster, f"{name}.toml")).read() for name in names}
    port_owner = {}
    for name, text in configs.items():
        for key in ("mesh_listen", "http_listen", "admin_listen"):
            m = re.search(rf'^{key} = "127\.0\.0\.1:(\d+)"', text, re.M)
            port_owner[m.group(1)] = name
    for name, text in configs.items():
        text = re.sub(
            r"127\.0\.0\.1:(\d+)",
            lambda m: f"{ip[port_owner[m.group(1)]]}:{m.group(1)}",
            text,
        )
        with open(os.path.join(cluster, f"{name}.toml"), "w") as f:
            f.write(text)
    admin = {}
    http = {}
    for name, text in configs.items():
        admin[name] = re.search(r'^admin_listen = "127\.0\.0\.1:(\d+)"', text, re.M).group(1)
        http[name] = re.search(r'^http_listen = "127\.0\.0\.1:(\d+)"', text, re.M).group(1)
    token = plan["ingest_token"]
    admin_token = open(os.path.join(cluster, "admin-token")).read().strip()

    network(n)
    env = dict(os.environ)
    env.update({f"DCDN_P2P_{k.upper()}": str(v) for k, v in P2P.items()})
    # The nodes' idea of their links is the caps, as the sim's is: a relay
    # admits pulls and a picker sizes its pipelines from these (left at the
    # 1 Gbit/s default, a relay on a 100 Mbit/s link admits 10x its queue).
    env["DCDN_P2P_MAX_UPLOAD_MBPS"] = str(a.mbps)
    env["DCDN_P2P_MAX_DOWNLOAD_MBPS"] = str(a.mbps)
    env["DCDN_LOG"] = "warn"
    # Room for the object at every tier (an edge swarms an object only up to
    # half its store).
    env["DCDN_STORAGE_RING_BUFFER_SIZE_MB"] = str(max(1024, 4 * a.object_mb))
    env["DCDN_ORIGIN_CHUNK_SIZE_KB"] = str(a.chunk_kb)
    procs = []
    try:
        for i, name in enumerate(names):
            log = open(os.path.join(work, f"{name}.log"), "w")
            procs.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", f"{PREFIX}-{i}", a.dcdn, "run", "--config",
                     os.path.join(cluster, f"{name}.toml")],
                    stdout=log, stderr=log, env=env,
                )
            )
        adm = lambda name, path: f"http://{ip[name]}:{admin[name]}{path}"  # noqa: E731
        deadline = time.time() + 120
        for name in names:
            while True:
                try:
                    get(adm(name, "/readyz"), admin_token)
                    break
                except Exception:
                    if time.time() > deadline or any(p.poll() is not None for p in procs):
                        raise SystemExit(f"swarm-netns: {name} not ready; see {work}/{name}.log")
                    time.sleep(0.2)
        # Every edge must know its neighbours before the burst.
        time.sleep(3)
        origin = f"http://{ip['origin-0']}:{http['origin-0']}"
        body = bytes((i * 2654435761 >> 7) & 0xFF for i in range(1 << 20)) * a.object_mb
        status, _ = post(f"{origin}/v1/objects/release.bin", token, body, method="PUT")
        assert status in (200, 201), status
        cap(n, a.mbps)
        before = {e: metric(get(adm(e, "/metrics"), admin_token), "dcdn_bytes_total",
                            direction="out") for e in ["origin-0"]}
        t0 = time.time()
        status, answer = post(f"{origin}/v1/objects/release.bin/preheat", token)
        assert status == 202, (status, answer)
        edges = names[2:]
        done = {}
        timeline = []
        next_sample = t0
        limit = t0 + max(300, 20 * a.object_mb * 8 / a.mbps)
        while len(done) < len(edges):
            if time.time() > limit:
                raise SystemExit(
                    f"swarm-netns: edges {sorted(set(edges) - set(done))} did not finish; "
                    f"logs in {work}")
            sample = time.time() >= next_sample
            row = {}
            for e in edges:
                if e in done and not sample:
                    continue
                try:
                    text = get(adm(e, "/metrics"), admin_token)
                except Exception:
                    continue
                row[e] = metric(text, "dcdn_swarm_bytes_total") / (a.object_mb * 2**20)
                if e not in done and metric(text, "dcdn_swarms_total", outcome="complete") >= 1:
                    done[e] = time.time() - t0
            if sample:
                # Where the time goes: each edge's share of the object held,
                # and what the origin and the relay have sent (in objects),
                # once a second (printed with --timeline).
                sent = []
                for up in ("origin-0", "relay-0"):
                    try:
                        text = get(adm(up, "/metrics"), admin_token)
                        sent.append(metric(text, "dcdn_bytes_total", direction="out")
                                    / (a.object_mb * 2**20))
                    except Exception:
                        sent.append(float("nan"))
                timeline.append((round(time.time() - t0, 1),
                                 [round(row.get(e, 0), 2) for e in edges] + sent))
                next_sample += 1.0
            time.sleep(0.1)
        texts = {e: get(adm(e, "/metrics"), admin_token) for e in edges}
        # Every node's metrics at the end, beside its log, for the why.
        for name in names:
            try:
                with open(os.path.join(work, f"{name}.metrics"), "w") as f:
                    f.write(get(adm(name, "/metrics"), admin_token))
            except Exception:
                pass
        from_edges = sum(metric(t, "dcdn_swarm_bytes_total", **{"from": "edge"}) for t in texts.values())
        from_relay = sum(metric(t, "dcdn_swarm_bytes_total", **{"from": "relay"}) for t in texts.values())
        origin_out = metric(get(adm("origin-0", "/metrics"), admin_token), "dcdn_bytes_total",
                            direction="out") - before["origin-0"]
        # Every edge serves the bytes published (checked on one, over the
        # capped link, so it is after the measurement).
        times = sorted(done.values())
        return {
            "p50_s": percentile(times, 0.5),
            "max_s": times[-1],
            "share": from_edges / max(1.0, from_edges + from_relay),
            "origin_x": origin_out / (a.object_mb * 2**20),
            "per_edge_s": {e: round(t, 2) for e, t in sorted(done.items())},
            "timeline": timeline,
        }
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        teardown(n)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dcdn", default="target/release/dcdn")
    ap.add_argument("--sim-dcdn", default=None,
                    help="the binary that runs `dcdn sim` (default: --dcdn; the image's "
                         "binary is built without the simulator)")
    ap.add_argument("--edges", type=int, default=8)
    ap.add_argument("--object-mb", type=int, default=256)
    ap.add_argument("--chunk-kb", type=int, default=256)
    ap.add_argument("--mbps", type=int, default=100)
    ap.add_argument("--tolerance", type=float, default=0.20)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--timeline", action="store_true",
                    help="print each edge's share of the object held, once a second")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("swarm-netns: needs root (network namespaces, tc)")
    work = tempfile.mkdtemp(prefix="dcdn-swarm-netns-")
    floor = a.object_mb * 2**20 * 8 / (a.mbps * 1e6)
    real = run_real(a, work)
    sim = run_sim(a, work)
    timeline = real.pop("timeline")
    if a.timeline:
        for t, held in timeline:
            print(f"t={t:6.1f}s  edges " + " ".join(f"{h:4.2f}" for h in held[:-2])
                  + f"  origin out {held[-2]:5.2f}  relay out {held[-1]:5.2f}")
    print(json.dumps({"floor_s": round(floor, 2), "real": real, "sim": sim}, indent=1))
    bad = []
    for key in ("p50_s", "max_s", "share"):
        r, s = real[key], sim[key]
        off = abs(r - s) / max(abs(r), abs(s), 1e-9)
        print(f"{key:>6}: real {r:8.3f}  sim {s:8.3f}  differ by {off * 100:5.1f} %")
        if off > a.tolerance:
            bad.append(key)
    if bad:
        raise SystemExit(f"swarm-netns: FAIL: real and sim differ by more than "
                         f"{a.tolerance * 100:.0f} % on {', '.join(bad)} (logs: {work})")
    print("swarm-netns: real and sim agree")


if __name__ == "__main__":
    main()
