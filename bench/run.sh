#!/usr/bin/env bash
# Benchmarks tokenvault with wrk on loopback (HTTPS, keep-alive, 32 connections): GET /healthz,
# single tokenize, single detokenize of pre-made tokens, and batch tokenize (100 values per
# request). Prints req/s, p50 and p99 for each, and each throughput as a ratio of /healthz
# measured in the same run (absolute numbers drift on a shared machine; ratios hold); then values
# tokenized per second, single against batch. A benchmark, not a test: it asserts nothing.
#   BENCH_DURATION (default 10s), BENCH_CONNECTIONS (32), BENCH_THREADS (2), BENCH_BATCH_SIZE (100)
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh >/dev/null
# -O2: GCC 12 at -O3 raises false -Wstringop-overflow warnings in libstdc++ (we build with -Werror).
cmake -S . -B build-release -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_FLAGS_RELEASE="-O2 -DNDEBUG" -DTOKENVAULT_BUILD_TESTS=OFF >/dev/null
cmake --build build-release -j "$(nproc)" --target tokenvault | grep -E "error:|FAILED:" || true
[ -x build-release/cli/tokenvault ] || { echo "build failed"; exit 1; }

duration="${BENCH_DURATION:-10s}"
conns="${BENCH_CONNECTIONS:-32}"
threads="${BENCH_THREADS:-2}"
work=$(mktemp -d)
trap 'kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; rm -rf "$work"' EXIT

./build-release/cli/tokenvault serve --data-dir "$work/data" --port 0 ${BENCH_SERVER_ARGS:-} >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 300); do
  port=$(sed -n 's/^listening \([0-9]*\)$/\1/p' "$work/server.log" | tail -1)
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "${port:-}" ] || { echo "server did not start"; cat "$work/server.log"; exit 1; }
url="https://127.0.0.1:$port"
ca="$work/data/tls/cert.pem"
admin=$(cat "$work/data/admin.key")
post() { curl -sf --cacert "$ca" -H "Authorization: Bearer $1" -H 'Content-Type: application/json' -d "$3" "$url$2"; }
key_of() { sed -n 's/.*"api_key":"\([^"]*\)".*/\1/p'; }

post "$admin" /v1/merchants '{"id":"bench"}' >/dev/null
export TV_TOKENIZER_KEY=$(post "$admin" /v1/principals '{"name":"bench-app","roles":["tokenizer"],"merchants":["bench"]}' | key_of)
export TV_READER_KEY=$(post "$admin" /v1/principals '{"name":"bench-reader","roles":["detokenizer"],"merchants":["bench"]}' | key_of)
export TV_TOKENS_FILE="$work/tokens.txt"
for i in $(seq 1 200); do
  # echo: the answer has no final newline, and the tokens file needs one token per line.
  { post "$TV_TOKENIZER_KEY" /v1/merchants/bench/tokens "{\"value\":\"premade-$i\"}"; echo; } |
    sed -n 's/.*"token":"\([^"]*\)".*/\1/p'
done >"$TV_TOKENS_FILE"
# The detokenize run must reveal real values, not answer per-item errors: check before measuring.
[ "$(wc -l <"$TV_TOKENS_FILE")" -eq 200 ] || { echo "could not pre-make 200 tokens"; exit 1; }
first=$(head -1 "$TV_TOKENS_FILE")
post "$TV_READER_KEY" /v1/merchants/bench/detokenize "{\"tokens\":[\"$first\"],\"reveal\":\"plain\"}" |
  grep -q '"value":"premade-1"' || { echo "detokenize of a pre-made token does not reveal its value"; exit 1; }
# Likewise a batch must make tokens, not answer per-item errors.
export TV_BATCH_SIZE="${BENCH_BATCH_SIZE:-100}"
checked=$(post "$TV_TOKENIZER_KEY" /v1/merchants/bench/tokens/batch '{"items":[{"value":"check-1"},{"value":"check-2"}]}' || true)
case "$checked" in
  *'"error"'* | '') echo "a batch does not make tokens: $checked"; exit 1 ;;
esac

# wrk prints latency percentiles with --latency; pick req/s, p50, p99.
run() {
  local name=$1; shift
  local out
  out=$(wrk -t"$threads" -c"$conns" -d"$duration" --latency "$@")
  local rps p50 p99 errors
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  errors=$(echo "$out" | awk '/Non-2xx/ {print $5}')
  # A run that measured nothing says why (and the server's log tail), instead of printing 0.
  if [ -z "$rps" ] || [ "$rps" = "0.00" ]; then
    { echo "--- $name: wrk measured nothing:"; echo "$out"; tail -5 "$work/server.log"; } >&2
  fi
  echo "$name $rps $p50 $p99 ${errors:-0}"
}

echo "tokenvault benchmark: $(nproc) cores, wrk -t$threads -c$conns -d$duration, HTTPS keep-alive, $(date -u +%Y-%m-%dT%H:%MZ)"
results=$(
  run healthz "$url/healthz"
  run tokenize -s bench/tokenize.lua "$url"
  run detokenize -s bench/detokenize.lua "$url"
  run batch -s bench/tokenize_batch.lua "$url"
)
base=$(echo "$results" | awk '$1=="healthz" {print $2}')
printf '%-11s %10s %9s %9s %9s %8s\n' endpoint req/s p50 p99 non-2xx ratio
echo "$results" | while read -r name rps p50 p99 errors; do
  ratio=$(awk -v a="$rps" -v b="$base" 'BEGIN {printf "%.2f", a / b}')
  printf '%-11s %10s %9s %9s %9s %8s\n' "$name" "$rps" "$p50" "$p99" "$errors" "$ratio"
done
# Values made per second: a single tokenize makes one per request, a batch TV_BATCH_SIZE.
echo "$results" | awk -v n="$TV_BATCH_SIZE" '
  $1=="tokenize" {single=$2} $1=="batch" {batch=$2 * n}
  END {printf "values/s: single tokenize %.0f, batch tokenize (%d per request) %.0f (x%.1f)\n", single, n, batch, batch / single}'
