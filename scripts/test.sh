#!/usr/bin/env bash
# Quick start, command 2: install what the tests need and run them all: unit tests, simulation
# seeds, the multi-process tests against real `caucus` processes, the README's curl walk-through
# (scripts/smoke.sh) and the OpenAPI validation.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
python3 -c "import openapi_spec_validator" 2>/dev/null || python3 -m pip install --quiet openapi-spec-validator
swift build --build-tests
swift test
