#!/usr/bin/env bash
# The protocol cores do no I/O: dcdn-core may not depend, even transitively,
# on an async runtime, a socket, TLS or HTTP crate. The compiler enforces the
# rule through this dependency list; this check keeps the list honest.
set -euo pipefail
cd "$(dirname "$0")/../.."
forbidden='^(tokio|mio|quinn|quinn-proto|quinn-udp|hyper|hyper-util|axum|tower|rustls|socket2|h2|h3|reqwest|async-std|smol)$'
deps=$(cargo tree -p dcdn-core -e normal,build --prefix none --format '{p}' --locked | awk '{print $1}' | sort -u)
bad=$(grep -E "$forbidden" <<<"$deps" || true)
if [ -n "$bad" ]; then
  echo "dcdn-core depends on I/O crates it must not use:" >&2
  echo "$bad" >&2
  cargo tree -p dcdn-core -e normal --invert "$(head -1 <<<"$bad")" >&2 || true
  exit 1
fi
echo "dcdn-core: $(wc -l <<<"$deps") crates, none of them an async runtime, socket, TLS or HTTP library"
