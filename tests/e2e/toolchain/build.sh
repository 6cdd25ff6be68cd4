#!/usr/bin/env bash
# Builds (once) and caches the real Kubernetes control-plane binaries the e2e
# tests run against, all from source through the Go module proxy:
#
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl
#       from the wrapper module in ./k8s (k8s.io/kubernetes + the etcd server
#       version its client libraries require),
#   kwok, helm
#       via `go install pkg@version`,
#
# and installs Debian's `prometheus` package when no prometheus is on PATH
# (its service is never started; tests run their own prometheus processes).
#
# Output: progress lines on stderr; the bin directory as the last line on
# stdout, so callers can do  BIN=$(tests/e2e/toolchain/build.sh | tail -1).
# A warm cache returns immediately. Heavy build output goes to build.log in
# the versioned cache dir; on failure its tail is printed.
#
# Env: FLASHSALE_TOOLCHAIN_DIR  cache root
#                               (default: $HOME/.cache/flashsale-operator/toolchain)
#      FLASHSALE_TOOLCHAIN_SKIP_PROMETHEUS=1  do not install prometheus
set -euo pipefail

K8S_VERSION=v1.36.3
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.22.0

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mod_dir=$here/k8s
cache_root=${FLASHSALE_TOOLCHAIN_DIR:-$HOME/.cache/flashsale-operator/toolchain}
dir=$cache_root/k8s-$K8S_VERSION
bin=$dir/bin
log=$dir/build.log

k8s_bins=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl)

# Same version stamping as the Kubernetes release build (hack/lib/version.sh).
k8s_minor=${K8S_VERSION#v1.}
k8s_minor=${k8s_minor%%.*}
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit="
done

# A stamp per component records what its binaries were built from, so bumping
# a version (or editing the wrapper's go.mod/go.sum or the ldflags) rebuilds
# just that part.
k8s_key() { echo "$K8S_VERSION $( (echo "$k8s_ldflags"; cat "$mod_dir/go.mod" "$mod_dir/go.sum") | cksum)"; }
stamp_ok() { [[ -f $dir/.stamp-$1 && "$(<"$dir/.stamp-$1")" == "$2" ]]; }

k8s_ready() {
  local b
  for b in "${k8s_bins[@]}"; do [[ -x $bin/$b ]] || return 1; done
  stamp_ok k8s "$(k8s_key)"
}
kwok_ready() { [[ -x $bin/kwok ]] && stamp_ok kwok "$KWOK_VERSION"; }
helm_ready() { [[ -x $bin/helm ]] && stamp_ok helm "$HELM_VERSION"; }
prometheus_ready() {
  [[ ${FLASHSALE_TOOLCHAIN_SKIP_PROMETHEUS:-} == 1 ]] || command -v prometheus >/dev/null 2>&1
}

# Fast path: everything is there already.
if k8s_ready && kwok_ready && helm_ready && prometheus_ready; then
  echo "$bin"
  exit 0
fi

mkdir -p "$bin"
# Serialize concurrent callers (e.g. parallel test jobs on a cold machine).
exec 9>"$dir/.lock"
flock 9

if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
  export PATH=/usr/local/go/bin:$PATH
fi
command -v go >/dev/null 2>&1 || { echo "build.sh: go not found on PATH" >&2; exit 1; }

export CGO_ENABLED=0 GOWORK=off
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
: >>"$log"

say() { echo "toolchain: $*" >&2; }

# run LABEL CMD... : run CMD with output appended to the log, time it, and on
# failure show the log's tail and stop.
run() {
  local label=$1 start=$SECONDS
  shift
  echo "=== $(date -u +%FT%TZ) $label: $*" >>"$log"
  if ! "$@" >>"$log" 2>&1; then
    say "$label FAILED after $((SECONDS - start))s; last lines of $log:"
    tail -n 60 "$log" >&2
    exit 1
  fi
  say "$label: done in $((SECONDS - start))s"
}

tmp=$(mktemp -d "$dir/.tmp.XXXXXX")
cleanup() { rm -rf "$tmp"; [[ -z ${policy_rc_d_added:-} ]] || rm -f /usr/sbin/policy-rc.d; }
trap cleanup EXIT

build_k8s() {
  # One `go build` for all five so the shared packages compile once and in
  # parallel. etcd's main package is the root of the server/v3 module, so go
  # names its binary "server".
  (cd "$mod_dir" && go build -trimpath -ldflags "$k8s_ldflags" -o "$tmp/k8s/" \
    go.etcd.io/etcd/server/v3 \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl) &&
    mv "$tmp/k8s/server" "$tmp/k8s/etcd"
}

build_kwok() {
  GOBIN=$tmp/kwok go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
}

build_helm() {
  # helm's Makefile stamps its version and the Kubernetes version its
  # client-go tracks (used for .Capabilities defaults and lint rules).
  local gomod client_go major minor
  gomod=$(cd "$tmp" && GOFLAGS= go mod download -json "helm.sh/helm/v3@$HELM_VERSION" |
    sed -n 's/.*"GoMod": "\(.*\)".*/\1/p') || return 1
  client_go=$(awk '$1 == "k8s.io/client-go" { print $2; exit }' "$gomod") || return 1
  client_go=${client_go#v}
  [[ $client_go =~ ^[0-9]+\.[0-9]+ ]] || { echo "helm go.mod: no k8s.io/client-go version" >&2; return 1; }
  major=$((${client_go%%.*} + 1))
  minor=${client_go#*.}
  minor=${minor%%.*}
  local v=helm.sh/helm/v3/internal/version
  GOBIN=$tmp/helm go install -trimpath -ldflags "-s -w \
    -X $v.version=$HELM_VERSION -X $v.metadata= -X $v.gitTreeState=clean \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$major \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$major \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

install_prometheus() {
  # Keep the package's maintainer scripts from starting a prometheus service
  # (Debian's invoke-rc.d / deb-systemd-invoke honour policy-rc.d exit 101).
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    policy_rc_d_added=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update && apt-get install -y --no-install-recommends prometheus
}

if ! k8s_ready; then
  say "building etcd + kube-apiserver/controller-manager/scheduler + kubectl $K8S_VERSION (cold: 10-25 min; log: $log)"
  run "k8s $K8S_VERSION + etcd" build_k8s
  for b in "${k8s_bins[@]}"; do mv -f "$tmp/k8s/$b" "$bin/$b"; done
  k8s_key >"$dir/.stamp-k8s"
fi

if ! kwok_ready; then
  run "kwok $KWOK_VERSION" build_kwok
  mv -f "$tmp/kwok/kwok" "$bin/kwok"
  echo "$KWOK_VERSION" >"$dir/.stamp-kwok"
fi

if ! helm_ready; then
  run "helm $HELM_VERSION" build_helm
  mv -f "$tmp/helm/helm" "$bin/helm"
  echo "$HELM_VERSION" >"$dir/.stamp-helm"
fi

if ! prometheus_ready; then
  if [[ $(id -u) -ne 0 ]]; then
    say "prometheus not on PATH and not root: install Debian's prometheus package yourself"
    exit 1
  fi
  run "prometheus (apt)" install_prometheus
fi

echo "$bin"
