#!/usr/bin/env bash
# The committed admin OpenAPI document is a valid OpenAPI 3.1 document.
# (Its freshness against the code is a Rust test: tests/admin.rs.)
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib-venv.sh
pip_need openapi-spec-validator
"$VENV/bin/openapi-spec-validator" deploy/openapi/admin.json
