#!/usr/bin/env bash
# The container testbed (testbed/docker/run.sh) whenever a Docker engine
# answers; where none does, it says so loudly and skips.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash -n testbed/docker/run.sh deploy/docker/build.sh
exec testbed/docker/run.sh
