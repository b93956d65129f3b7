#!/usr/bin/env bash
# Quick start, command 2: install what the tests need and run them all: unit tests, simulation
# seeds, the multi-process tests against real `caucus` processes, the README's curl walk-through
# (scripts/smoke.sh) and the OpenAPI validation.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --tests
# The OpenAPI check installs its validator (into a virtual environment when the system's Python
# refuses pip installs) before the tests run it.
scripts/validate-openapi.sh >/dev/null
swift build --build-tests
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
swift test 2>&1 | tee "$log" || status=$?
# XCTest's summary of the whole run, restated last as a plain count (swift test closes with Swift
# Testing's own line, which counts only Swift Testing tests).
summary="$(grep -E "^[[:space:]]*Executed [0-9]+ tests?, with [0-9]+ failures?" "$log" | tail -n 1 || true)"
executed="$(sed -E 's/.*Executed ([0-9]+) tests?.*/\1/' <<<"$summary")"
failed="$(sed -E 's/.*with ([0-9]+) failures?.*/\1/' <<<"$summary")"
if [ -z "$summary" ]; then
  echo "tests: no XCTest summary found" >&2
  exit 1
fi
echo "tests: $((executed - failed)) passed, $failed failed"
exit "$status"
