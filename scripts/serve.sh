#!/usr/bin/env bash
# Quick start, command 1: install what is missing, build, and run one standalone node on
# 127.0.0.1:6667 with data in ./caucus-data and DataRegion-0 ready for curl.
# Extra arguments go to `caucus serve` (see `caucus serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
swift build -c release --product caucus
exec .build/release/caucus serve "$@"
