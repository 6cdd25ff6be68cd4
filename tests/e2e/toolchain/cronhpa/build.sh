#!/usr/bin/env bash
# Builds (once) and caches the real Alibaba CronHPA controller
# (github.com/AliyunContainerService/kubernetes-cronhpa-controller) from the
# wrapper module next to this script, through the Go module proxy.
#
# Output: progress on stderr; the bin directory as the LAST line on stdout:
#   BIN=$(tests/e2e/toolchain/cronhpa/build.sh | tail -1)
#   "$BIN/kubernetes-cronhpa-controller"
# A warm cache returns immediately. Build output goes to build.log in the
# versioned cache dir; on failure its tail is printed.
#
# Env: FLASHSALE_TOOLCHAIN_DIR  cache root
#                               (default: $HOME/.cache/flashsale-operator/toolchain)
#
# The binary is the unmodified upstream main package, built with:
#   - CGO_ENABLED=0 -trimpath, and the timetzdata tag, so TZ=<IANA zone> works
#     without a system zoneinfo database (the cron engine uses the local zone);
#   - controller-runtime's metrics listener disabled at link time
#     (metrics.DefaultBindAddress=0). v1.3.0 has no flag for it and would
#     otherwise bind :8080 on all interfaces, so two instances (or anything
#     else on 8080) could not coexist.
#
# Running it (v1.3.0 parses NO command-line flags at all, not even --help or
# --kubeconfig; configuration is the environment only):
#   KUBECONFIG=/path/to/kubeconfig TZ=UTC "$BIN/kubernetes-cronhpa-controller"
# KUBECONFIG must name a single file. Without it, it falls back to in-cluster
# config, then ~/.kube/config. No leader election, no webhooks, no ports.
# It exits at once unless the API server is reachable and crd.yaml is applied
# and Established. It watches CronHorizontalPodAutoscalers cluster-wide and
# logs to stderr (zap JSON plus logrus text); SIGINT/SIGTERM stop it.
# RBAC it needs: cronhorizontalpodautoscalers get/list/watch/update,
# <group>/<kinds>/scale get/update for its targets (e.g. apps deployments/scale),
# events create/patch (plus the default discovery access).
# Schedules: 6 fields, seconds first ("*/10 * * * * *"); a 5-field spec is read
# as seconds-first with the weekday omitted. "@date 2006-01-02 15:04:05" fires
# at that time in TZ, but the year is ignored: pair it with runOnce: true.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
pkg=github.com/AliyunContainerService/kubernetes-cronhpa-controller
version=$(awk -v m="$pkg" '$1 == m { print $2; exit }' "$here/go.mod")
[[ -n $version ]] || { echo "cronhpa/build.sh: no $pkg requirement in go.mod" >&2; exit 1; }

cache_root=${FLASHSALE_TOOLCHAIN_DIR:-$HOME/.cache/flashsale-operator/toolchain}
dir=$cache_root/cronhpa-$version
bin=$dir/bin
exe=$bin/kubernetes-cronhpa-controller
log=$dir/build.log

ldflags="-s -w -X sigs.k8s.io/controller-runtime/pkg/metrics.DefaultBindAddress=0"
tags=timetzdata

# The stamp records what the binary was built from, so editing the wrapper's
# go.mod/go.sum or the build flags triggers a rebuild.
key() { echo "$version $tags $ldflags $(cat "$here/go.mod" "$here/go.sum" | cksum)"; }
ready() { [[ -x $exe && -f $dir/.stamp && "$(<"$dir/.stamp")" == "$(key)" ]]; }

if ready; then
  echo "$bin"
  exit 0
fi

mkdir -p "$bin"
# Serialize concurrent callers; re-check once we hold the lock.
exec 9>"$dir/.lock"
flock 9
if ready; then
  echo "$bin"
  exit 0
fi

if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
  export PATH=/usr/local/go/bin:$PATH
fi
command -v go >/dev/null 2>&1 || { echo "cronhpa/build.sh: go not found on PATH" >&2; exit 1; }

tmp=$(mktemp -d "$dir/.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

echo "toolchain: building kubernetes-cronhpa-controller $version (cold: ~2-4 min; log: $log)" >&2
start=$SECONDS
echo "=== $(date -u +%FT%TZ) kubernetes-cronhpa-controller $version" >>"$log"
# -mod=readonly: never let go rewrite the pinned go.mod; GOWORK=off: ignore
# any go.work further up.
if ! (cd "$here" && GOWORK=off CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -buildvcs=false" \
  go build -mod=readonly -trimpath -tags "$tags" -ldflags "$ldflags" \
    -o "$tmp/kubernetes-cronhpa-controller" "$pkg/cmd/kubernetes-cronhpa-controller") >>"$log" 2>&1; then
  echo "toolchain: kubernetes-cronhpa-controller FAILED after $((SECONDS - start))s; last lines of $log:" >&2
  tail -n 60 "$log" >&2
  exit 1
fi
mv -f "$tmp/kubernetes-cronhpa-controller" "$exe"
key >"$dir/.stamp"
echo "toolchain: kubernetes-cronhpa-controller $version built in $((SECONDS - start))s" >&2

echo "$bin"
