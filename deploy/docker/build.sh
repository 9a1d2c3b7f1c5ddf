#!/usr/bin/env bash
# Builds the DCDN images without pulling anything: the binaries are linked
# statically on this host (glibc +crt-static, rustls, no OpenSSL), then each
# image is FROM scratch with one binary, a numeric non-root user, no shell.
#
#   deploy/docker/build.sh            # dcdn/node:<version> (+ dcdn/operator if the crate exists)
#   deploy/docker/build.sh --no-image # only the static binaries, under target/<triple>/dist/
#
# Prints the image tags and sizes. Fails if the node image exceeds 24 MB.
set -euo pipefail
cd "$(dirname "$0")/../.."

TRIPLE="$(uname -m)-unknown-linux-gnu"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
BIN_DIR="${CARGO_TARGET_DIR:-target}/$TRIPLE/dist"
# The limit catches a jump (debug info, a second TLS or HTTP stack), not
# the steady growth of features: it was 20 MB until the node, with HTTP/3,
# LL-HLS, S3 pull-through and `dcdn sim` inside, reached 20.05 MB; fat LTO
# in one codegen unit and leaving `dcdn sim` out (the `sim` feature, off
# under --no-default-features) brought it to 15.7 MB (issue #17's note).
MAX_NODE_BYTES=$((24 * 1000 * 1000))
# OCI labels that vary per build (the fixed ones are in the Dockerfiles).
REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
SOURCE="$(sed -n 's/^repository = "\(.*\)"/\1/p' Cargo.toml | head -1)"
CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

packages=(-p dcdn-node)
images=(node:dcdn)
if [ -f operator/Cargo.toml ]; then
  packages+=(-p dcdn-operator)
  images+=(operator:dcdn-operator)
fi

echo "==> building ${packages[*]} statically for $TRIPLE (profile dist)"
# --no-default-features: the images leave out the crates only `dcdn bench`
# compares against (dcdn-node's `bench-baselines` feature).
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --locked --profile dist --target "$TRIPLE" --no-default-features "${packages[@]}"

for spec in "${images[@]}"; do
  bin="$BIN_DIR/${spec#*:}"
  # A dynamic binary would start on this host and fail in a scratch image.
  if command -v file >/dev/null && ! file -L "$bin" | grep -Eq 'statically linked|static-pie'; then
    echo "error: $bin is not statically linked: $(file -L "$bin")" >&2
    exit 1
  fi
done

[ "${1:-}" = "--no-image" ] && exit 0

if ! docker info >/dev/null 2>&1; then
  echo "error: no Docker engine answers (docker info failed); binaries are in $BIN_DIR" >&2
  exit 1
fi

for spec in "${images[@]}"; do
  name="${spec%%:*}"
  bin="${spec#*:}"
  ctx="$(mktemp -d)"
  trap 'rm -rf "$ctx"' EXIT
  cp "$BIN_DIR/$bin" "$ctx/$bin"
  docker build -q -f "deploy/docker/$name.scratch.Dockerfile" \
    --label "org.opencontainers.image.version=$VERSION" \
    --label "org.opencontainers.image.revision=$REVISION" \
    --label "org.opencontainers.image.source=$SOURCE" \
    --label "org.opencontainers.image.created=$CREATED" \
    -t "dcdn/$name:$VERSION" -t "dcdn/$name:dev" "$ctx" >/dev/null
  rm -rf "$ctx"
  trap - EXIT
  size="$(docker image inspect -f '{{.Size}}' "dcdn/$name:$VERSION")"
  awk -v n="dcdn/$name:$VERSION" -v s="$size" 'BEGIN { printf "%s  %d bytes (%.1f MB)\n", n, s, s / 1e6 }'
  if [ "$name" = node ] && [ "$size" -gt "$MAX_NODE_BYTES" ]; then
    echo "error: the node image is $size bytes, over the $((MAX_NODE_BYTES / 1000000)) MB limit" >&2
    exit 1
  fi
done
