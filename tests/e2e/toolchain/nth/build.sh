#!/usr/bin/env bash
# Builds (once) and caches the two peers of the drain benchmark, both through
# the Go module proxy:
#   - aws-node-termination-handler (NTH), from the wrapper module next to this
#     script (a `tool` directive on its cmd package; -mod=readonly);
#   - amazon-ec2-metadata-mock (AEMM), which serves NTH its spot notices, via
#     `go install pkg@version`.
# Only the benchmark path (benches/drain.rs peer run) calls this; `make test`
# never does.
#
# Output: progress on stderr; the bin directory as the LAST line on stdout:
#   BIN=$(tests/e2e/toolchain/nth/build.sh | tail -1)
#   "$BIN/node-termination-handler"  "$BIN/ec2-metadata-mock"
# A warm cache returns at once. Build output goes to build.log in the
# versioned cache dir; on failure its tail is printed. Cold: ~6 min on two
# busy cores.
#
# Env: FLASHSALE_TOOLCHAIN_DIR  cache root
#                               (default: $HOME/.cache/flashsale-operator/toolchain)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
pkg=github.com/aws/aws-node-termination-handler
# The version NTH is pinned at: its line in the wrapper's require block.
version=$(awk -v m="$pkg" '$1 == m { print $2; exit }' "$here/go.mod")
[[ -n $version ]] || { echo "nth/build.sh: no $pkg requirement in go.mod" >&2; exit 1; }
AEMM_PKG=github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock
AEMM_VERSION=v1.13.0

cache_root=${FLASHSALE_TOOLCHAIN_DIR:-$HOME/.cache/flashsale-operator/toolchain}
dir=$cache_root/nth-$version-aemm-$AEMM_VERSION
bin=$dir/bin
nth=$bin/node-termination-handler
aemm=$bin/ec2-metadata-mock
log=$dir/build.log

ldflags="-s -w"

# The stamp records what the binaries were built from, so editing the
# wrapper's go.mod/go.sum, a version or the flags triggers a rebuild.
key() { echo "$version $AEMM_VERSION $ldflags $(cat "$here/go.mod" "$here/go.sum" | cksum)"; }
ready() { [[ -x $nth && -x $aemm && -f $dir/.stamp && "$(<"$dir/.stamp")" == "$(key)" ]]; }

if ready; then
  echo "$bin"
  exit 0
fi

mkdir -p "$bin"
exec 9>"$dir/.lock"
flock 9
if ready; then
  echo "$bin"
  exit 0
fi

if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
  export PATH=/usr/local/go/bin:$PATH
fi
command -v go >/dev/null 2>&1 || { echo "nth/build.sh: go not found on PATH" >&2; exit 1; }

tmp=$(mktemp -d "$dir/.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
export GOWORK=off CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -buildvcs=false"

fail() {
  echo "toolchain: $1 FAILED after $((SECONDS - start))s; last lines of $log:" >&2
  tail -n 60 "$log" >&2
  exit 1
}

start=$SECONDS
echo "toolchain: building node-termination-handler $version (cold: ~6 min; log: $log)" >&2
echo "=== $(date -u +%FT%TZ) node-termination-handler $version" >>"$log"
(cd "$here" && go build -mod=readonly -trimpath -ldflags "$ldflags" \
  -o "$tmp/node-termination-handler" "$pkg/cmd") >>"$log" 2>&1 || fail node-termination-handler

echo "toolchain: installing ec2-metadata-mock $AEMM_VERSION" >&2
echo "=== $(date -u +%FT%TZ) ec2-metadata-mock $AEMM_VERSION" >>"$log"
(cd "$tmp" && GOBIN="$tmp/gobin" go install -trimpath -ldflags "$ldflags" "$AEMM_PKG@$AEMM_VERSION") \
  >>"$log" 2>&1 || fail ec2-metadata-mock
mv -f "$tmp/gobin/ec2-metadata-mock" "$aemm"
mv -f "$tmp/node-termination-handler" "$nth"
key >"$dir/.stamp"
echo "toolchain: node-termination-handler and ec2-metadata-mock built in $((SECONDS - start))s" >&2

echo "$bin"
