#!/usr/bin/env bash
# Renders tokenvault.conf.in into an nginx site file for one tokenvault data dir.
#   deploy/nginx/render.sh --data-dir /var/lib/tokenvault --cert /etc/ssl/vault.crt \
#     --key /etc/ssl/private/vault.key --client-ca /etc/tokenvault/client-ca.pem \
#     [--listen 0.0.0.0:443] [--upstream 127.0.0.1:8443] [--verify-client on|optional] \
#     [--access-log /var/log/nginx/tokenvault.access.log] --out /etc/nginx/sites-available/tokenvault
# The proxy secret is read from <data-dir>/proxy-secret (made by `tokenvault init`); the output
# holds it, so it is written with mode 0600.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
listen="0.0.0.0:443"; upstream="127.0.0.1:8443"; verify="on"; access_log="/var/log/nginx/tokenvault.access.log"
data_dir=""; cert=""; key=""; client_ca=""; out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --data-dir) data_dir="$2"; shift 2 ;;
    --cert) cert="$2"; shift 2 ;;
    --key) key="$2"; shift 2 ;;
    --client-ca) client_ca="$2"; shift 2 ;;
    --listen) listen="$2"; shift 2 ;;
    --upstream) upstream="$2"; shift 2 ;;
    --verify-client) verify="$2"; shift 2 ;;
    --access-log) access_log="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "render.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
for v in data_dir cert key client_ca out; do
  if [ -z "${!v}" ]; then echo "render.sh: --${v//_/-} is required" >&2; exit 2; fi
done
case "$verify" in on|optional) ;; *) echo "render.sh: --verify-client is on or optional" >&2; exit 2 ;; esac
secret="$(head -n1 "$data_dir/proxy-secret")"
if ! [[ "$secret" =~ ^[0-9a-f]{64}$ ]]; then
  echo "render.sh: $data_dir/proxy-secret is missing or malformed (run tokenvault init)" >&2; exit 2
fi
# Values go into nginx syntax: refuse characters that could end a directive.
for v in "$listen" "$upstream" "$cert" "$key" "$client_ca" "$access_log"; do
  if [[ "$v" =~ [\;\{\}\'\"[:space:]\|\&\\\$\#] ]]; then echo "render.sh: unsafe character in $v" >&2; exit 2; fi
done
umask 077
sed -e "s|@LISTEN@|$listen|g" -e "s|@UPSTREAM@|$upstream|g" -e "s|@CERT@|$cert|g" \
    -e "s|@KEY@|$key|g" -e "s|@CLIENT_CA@|$client_ca|g" -e "s|@VERIFY_CLIENT@|$verify|g" \
    -e "s|@ACCESS_LOG@|$access_log|g" -e "s|@PROXY_SECRET@|$secret|g" \
    "$here/tokenvault.conf.in" > "$out.tmp"
mv "$out.tmp" "$out"
