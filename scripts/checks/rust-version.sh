#!/usr/bin/env bash
# Each crate's `rust-version` is true: no lower than the highest
# `rust-version` among the crates it builds with (normal and build
# dependencies, transitively, as Cargo.lock resolves them). Clippy's
# `incompatible_msrv` lint (on in `scripts/test`) then checks our own use
# of std APIs against it. Language features newer than it are not caught
# here: that needs the old toolchain itself.
set -euo pipefail
cd "$(dirname "$0")/../.."
meta="$(mktemp)"
trap 'rm -f "$meta"' EXIT
cargo metadata --format-version 1 --locked >"$meta"
python3 - "$meta" <<'PY'
import json, sys
meta = json.load(open(sys.argv[1]))
pkgs = {p["id"]: p for p in meta["packages"]}
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
ver = lambda s: tuple((list(map(int, s.split("."))) + [0, 0])[:3])
show = lambda v: ".".join(map(str, v))
bad = 0
for root in meta["workspace_members"]:
    seen, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        for dep in nodes[pid]["deps"]:
            # Dev-dependencies count for the crate itself only (its tests).
            if pid == root or any(k["kind"] in (None, "build") for k in dep["dep_kinds"]):
                todo.append(dep["pkg"])
    name, declared = pkgs[root]["name"], pkgs[root].get("rust_version") or "0"
    need, who = max((ver(pkgs[p]["rust_version"]), pkgs[p]["name"] + " " + pkgs[p]["version"])
                    for p in seen if p != root and pkgs[p].get("rust_version"))
    if ver(declared) < need:
        bad += 1
        print(f"error: {name} declares rust-version {declared}, but {who} needs {show(need)}", file=sys.stderr)
    else:
        print(f"ok   {name}: rust-version {declared} (highest need: {who}, {show(need)})")
sys.exit(1 if bad else 0)
PY
