#!/usr/bin/env bash
# Installs what is missing, builds, and runs the vault on its embedded default: a SQLite file and
# a SoftHSM2 token in ./tokenvault-data (made on first start), HTTPS on https://127.0.0.1:8443
# with a generated development certificate. Extra arguments go to `tokenvault serve`.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc)" --target tokenvault

data_dir="${TOKENVAULT_DATA_DIR:-$PWD/tokenvault-data}"
echo "tokenvault: data dir $data_dir"
echo "tokenvault: admin API key -> $data_dir/admin.key, CA certificate -> $data_dir/tls/cert.pem"
exec ./build/cli/tokenvault serve --data-dir "$data_dir" "$@"
