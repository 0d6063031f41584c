#!/usr/bin/env bash
# Installs every Debian 12 package tokenvault needs to build, test and run, when it is missing.
# Idempotent: a machine that has everything is left untouched (no apt-get update, no network).
set -euo pipefail

PACKAGES=(
  build-essential g++ cmake pkg-config ninja-build
  libssl-dev openssl
  libsqlite3-dev sqlite3
  softhsm2 libp11-kit-dev
  libspdlog-dev libfmt-dev
  nlohmann-json3-dev
  libgtest-dev libgmock-dev
  libpistache-dev
  libcli11-dev
  curl ca-certificates libcurl4-openssl-dev wrk
  nginx
  clang libclang-rt-14-dev
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PACKAGES[@]} packages present"
  exit 0
fi

echo "setup: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
