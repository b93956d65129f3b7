#!/usr/bin/env bash
# Installs the system packages Caucus needs, only when they are missing, so repeated runs stay
# fast. Debian/Ubuntu; needs root or sudo for the first run.
#   scripts/install-deps.sh [--tests] [PACKAGE...]
# Without --tests: what building and running a node needs (scripts/serve.sh). With --tests: also
# what the test suite needs (scripts/test.sh). More arguments name more packages to install the
# same way (the benchmarks' wrk, bc, etcd-server).
set -euo pipefail
# libcurl4-openssl-dev: PeerClient (CCurl). libssl-dev: hashing, HMAC, random bytes and TLS in
# Platform (COpenSSL). curl: the quick start's requests.
packages=(libcurl4-openssl-dev libssl-dev curl)
if [ "${1:-}" = "--tests" ]; then
  shift
  # openssl: the command that makes the TLS tests' certificates at test time
  # (scripts/tls-certificates.sh). iproute2 and iptables: the torture runs' network namespaces,
  # partitions and packet loss. chromium and chromium-driver: the dashboard's browser test
  # (Tests/IntegrationTests/DashboardTests.swift drives a headless Chromium through chromedriver)
  # and scripts/dashboard-screenshot.sh.
  packages+=(openssl iproute2 iptables chromium chromium-driver)
fi
packages+=("$@")
missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
