#!/usr/bin/env bash
# Fetches (once) and caches the prometheus-operator CRDs (ServiceMonitor, PodMonitor,
# PrometheusRule, ...) from the Go module proxy: the module ships them as plain YAML under
# example/prometheus-operator-crd/, so nothing is built; `go mod download` verifies the zip.
#
# Output: progress on stderr; the directory holding the CRD files as the LAST line on stdout:
#   CRDS=$(tests/e2e/toolchain/prometheus-operator/fetch.sh | tail -1)
#   kubectl apply --server-side -f "$CRDS"
# The cache is keyed by the version below; a warm cache returns at once.
#
# Env: FLASHSALE_TOOLCHAIN_DIR  cache root
#                               (default: $HOME/.cache/flashsale-operator/toolchain)
set -euo pipefail

VERSION=v0.86.1
MODULE=github.com/prometheus-operator/prometheus-operator

cache_root=${FLASHSALE_TOOLCHAIN_DIR:-$HOME/.cache/flashsale-operator/toolchain}
dir=$cache_root/prometheus-operator-crds-$VERSION
crds=$dir/crds

if [[ -f $crds/.complete ]]; then
  echo "$crds"
  exit 0
fi

mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
if [[ -f $crds/.complete ]]; then
  echo "$crds"
  exit 0
fi

if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
  export PATH=/usr/local/go/bin:$PATH
fi
command -v go >/dev/null 2>&1 || { echo "prometheus-operator/fetch.sh: go not found on PATH" >&2; exit 1; }

echo "toolchain: fetching $MODULE@$VERSION CRDs" >&2
start=$SECONDS
# The module is not in the checksum database's reach here; the Go module cache still checks
# the zip against the hash it records. GOFLAGS=-mod=mod: outside any module.
json=$(cd "$dir" && GOWORK=off GOSUMDB=off GOFLAGS=-mod=mod go mod download -json "$MODULE@$VERSION")
src=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' <<<"$json")
[[ -n $src && -d $src/example/prometheus-operator-crd ]] || {
  echo "prometheus-operator/fetch.sh: no example/prometheus-operator-crd in $MODULE@$VERSION: $json" >&2
  exit 1
}
tmp=$(mktemp -d "$dir/.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cp "$src"/example/prometheus-operator-crd/*.yaml "$tmp"/
chmod u+w "$tmp"/*.yaml
touch "$tmp/.complete"
rm -rf "$crds"
mv "$tmp" "$crds"
echo "toolchain: prometheus-operator CRDs fetched in $((SECONDS - start))s" >&2

echo "$crds"
