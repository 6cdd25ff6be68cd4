#!/usr/bin/env bash
# Builds (once) and caches `statuscheck`, the small Go tool in this directory
# that tells how real GitOps tooling judges one Kubernetes object:
#   kstatus  sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute (Flux, kpt, ...)
#   argocd   an Argo CD health Lua script, run with gopher-lua as Argo CD does
# See main.go for the exact semantics and go.mod for the pinned versions.
#
# Output: progress on stderr; the bin directory as the LAST line on stdout:
#   BIN=$(tests/e2e/toolchain/statuscheck/build.sh | tail -1)
#   "$BIN/statuscheck" --lua charts/flashsale-operator/docs/argocd-health.lua < sale.json
# The cache directory is named after a hash of go.mod, go.sum and main.go, so
# editing any of them builds a fresh binary; a warm cache returns at once.
# Build output goes to build.log there; on failure its tail is printed.
#
# Env: FLASHSALE_TOOLCHAIN_DIR  cache root
#                               (default: $HOME/.cache/flashsale-operator/toolchain)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
hash=$(cd "$here" && cat go.mod go.sum main.go | sha256sum | cut -c1-12)

cache_root=${FLASHSALE_TOOLCHAIN_DIR:-$HOME/.cache/flashsale-operator/toolchain}
dir=$cache_root/statuscheck-$hash
bin=$dir/bin
exe=$bin/statuscheck
log=$dir/build.log

if [[ -x $exe ]]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$bin"
# Serialize concurrent callers; re-check once we hold the lock.
exec 9>"$dir/.lock"
flock 9
if [[ -x $exe ]]; then
  echo "$bin"
  exit 0
fi

if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
  export PATH=/usr/local/go/bin:$PATH
fi
command -v go >/dev/null 2>&1 || { echo "statuscheck/build.sh: go not found on PATH" >&2; exit 1; }

tmp=$(mktemp -d "$dir/.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

echo "toolchain: building statuscheck $hash (cold: ~1-2 min; log: $log)" >&2
start=$SECONDS
echo "=== $(date -u +%FT%TZ) statuscheck $hash" >>"$log"
# -mod=readonly: never let go rewrite the pinned go.mod/go.sum; GOWORK=off:
# ignore any go.work further up. The binary is moved into place only once
# complete, so its presence means a finished build.
if ! (cd "$here" && GOWORK=off CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -buildvcs=false" \
  go build -mod=readonly -trimpath -ldflags "-s -w" -o "$tmp/statuscheck" .) >>"$log" 2>&1; then
  echo "toolchain: statuscheck FAILED after $((SECONDS - start))s; last lines of $log:" >&2
  tail -n 60 "$log" >&2
  exit 1
fi
mv -f "$tmp/statuscheck" "$exe"
echo "toolchain: statuscheck built in $((SECONDS - start))s" >&2

echo "$bin"
