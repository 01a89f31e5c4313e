#!/usr/bin/env bash
# System packages the test suite uses: a real Prometheus (the dashboards' PromQL is checked
# against it) and headless Chromium (the HTML run report is rendered in it). Idempotent: does
# nothing when both are present. Without root or apt the tests that need them skip and say why.
set -euo pipefail
need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "[install-system] missing ${need[*]} and no root apt-get: the tests that need them will skip" >&2
  exit 0
fi
echo "[install-system] apt-get install ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
