#!/usr/bin/env bash
# Starts or stops the local cluster (the end-to-end tests' control plane) in the background.
#   scripts/cluster.sh up DIR     -> DIR/kubeconfig, DIR/kubectl
#   scripts/cluster.sh down DIR
set -euo pipefail
cmd=${1:?up or down}
dir=${2:-.e2e}
mkdir -p "$dir"
pidfile=$dir/cluster.pid

running() { [[ -f $pidfile ]] && kill -0 "$(<"$pidfile")" 2>/dev/null; }

case $cmd in
up)
  if running && [[ -f $dir/kubeconfig ]]; then
    echo "cluster already up: KUBECONFIG=$dir/kubeconfig"
    exit 0
  fi
  cargo build --quiet --example local-cluster
  rm -f "$dir/kubeconfig"
  nohup target/debug/examples/local-cluster "$dir" >"$dir/cluster.log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 600); do
    [[ -f $dir/kubeconfig ]] && break
    if ! running; then
      echo "the local cluster failed to start:" >&2
      tail -20 "$dir/cluster.log" >&2
      exit 1
    fi
    sleep 0.2
  done
  [[ -f $dir/kubeconfig ]] || { echo "the local cluster did not come up in 120s; see $dir/cluster.log" >&2; exit 1; }
  echo "cluster up: export KUBECONFIG=$PWD/$dir/kubeconfig (kubectl: $dir/kubectl)"
  ;;
down)
  if running; then
    kill "$(<"$pidfile")"
    for _ in $(seq 1 100); do running || break; sleep 0.1; done
  fi
  rm -f "$pidfile"
  echo "cluster down"
  ;;
*)
  echo "usage: $0 up|down [DIR]" >&2
  exit 2
  ;;
esac
