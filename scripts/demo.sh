#!/usr/bin/env bash
# `make demo`: a local cluster, the operator running against it, and a FlashSale whose window
# opens a minute from now; prints the sale's status every time it changes, until it completes.
set -euo pipefail
dir=${1:-.e2e}
bash scripts/cluster.sh up "$dir"
export KUBECONFIG=$PWD/$dir/kubeconfig
kubectl=$dir/kubectl

cargo build --quiet --bin flashsale-operator
# The CRD may be newer than the one a running local cluster was started with.
target/debug/flashsale-operator crd | $kubectl apply --server-side --force-conflicts -f - >/dev/null
# What an installer does once with the chart: the drain agents' identity and rights in the agent
# namespace (flashsale-system, the operator's default outside a pod). The operator only deploys
# the agents' DaemonSet there.
helm=$(bash tests/e2e/toolchain/build.sh 2>/dev/null | tail -1)/helm
{
  printf 'apiVersion: v1\nkind: Namespace\nmetadata: {name: flashsale-system}\n---\n'
  $helm template flashsale charts/flashsale-operator --namespace flashsale-system --show-only templates/agent-rbac.yaml
} | $kubectl apply --server-side --force-conflicts -f - >/dev/null
operator_log=$dir/operator.log
target/debug/flashsale-operator run --metrics-addr 127.0.0.1:0 >"$operator_log" 2>&1 &
operator=$!
trap 'kill $operator 2>/dev/null || true' EXIT

start=$(date -u -d '+60 seconds' +%Y-%m-%dT%H:%M:%SZ)
end=$(date -u -d '+120 seconds' +%Y-%m-%dT%H:%M:%SZ)
$kubectl create namespace shop --dry-run=client -o yaml | $kubectl apply --server-side -f - >/dev/null
$kubectl -n shop apply --server-side -f - >/dev/null <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: storefront}
spec:
  replicas: 2
  selector: {matchLabels: {app: storefront}}
  template:
    metadata: {labels: {app: storefront}}
    spec:
      containers:
      - name: app
        image: registry.example.com/shop/storefront:1
        resources: {requests: {cpu: 100m, memory: 128Mi}}
        readinessProbe: {httpGet: {path: /ready, port: 8080}, periodSeconds: 10, failureThreshold: 3}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: storefront}
spec:
  maxUnavailable: 1
  selector: {matchLabels: {app: storefront}}
YAML
# The example with its window a minute from now and its lead times in seconds.
demo_sale() {
  sed -e "s/start: .*/start: \"$start\"/" -e "s/end: .*/end: \"$end\"/" \
      -e "s/prepareBefore: .*/prepareBefore: 30s/" -e "s/cooldownAfter: .*/cooldownAfter: 20s/" \
      -e "s/startBefore: .*/startBefore: 20s/" examples/product-drop.yaml
}
demo_sale | $kubectl apply --server-side -f - >/dev/null

echo "FlashSale shop/sneaker-drop: window $start .. $end (operator log: $operator_log)"
echo
target/debug/flashsale-operator plan --kubeconfig "$KUBECONFIG" -f <(demo_sale)
echo
last=""
deadline=$((SECONDS + 300))
while ((SECONDS < deadline)); do
  table=$($kubectl -n shop get flashsale sneaker-drop -o wide 2>/dev/null || true)
  row=$($kubectl -n shop get flashsale sneaker-drop 2>/dev/null \
    -o jsonpath='{.status.phase} {.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].reason} {.status.nextTransitionTime}' || true)
  if [[ -n $table && $row != "$last" ]]; then
    [[ -z $last ]] && head -1 <<<"$table"
    tail -n +2 <<<"$table"
    last=$row
  fi
  phase=$($kubectl -n shop get flashsale sneaker-drop -o jsonpath='{.status.phase}' 2>/dev/null || true)
  if [[ $phase == Active && -z ${shown_active:-} ]]; then
    shown_active=1
    echo
    echo "during the sale: drain agents, the warm-up Job, and the published flag"
    $kubectl -n flashsale-system get daemonsets 2>/dev/null || true
    $kubectl -n shop get jobs 2>/dev/null || true
    $kubectl -n shop get configmap sneaker-drop-flags -o jsonpath='{.data.flags\.flagd\.json}' 2>/dev/null | head -c 600 || true
    echo
    echo
    echo "what on-call reads: flashsale-operator status"
    target/debug/flashsale-operator status sneaker-drop -n shop --kubeconfig "$KUBECONFIG" || true
    echo
  fi
  [[ $phase == Completed ]] && break
  sleep 1
done
echo
$kubectl -n shop get events --field-selector involvedObject.name=sneaker-drop --sort-by=.metadata.creationTimestamp
echo
echo "after the sale: no agents, Jobs or flags left"
$kubectl -n flashsale-system get daemonsets 2>&1 || true
$kubectl -n shop get jobs,configmaps 2>&1 | grep -v kube-root-ca || true
echo
echo "storefront after the sale (replicas, readiness probe period):"
$kubectl -n shop get deployment storefront -o jsonpath='{.spec.replicas} {.spec.template.spec.containers[0].readinessProbe.periodSeconds}{"\n"}' 
echo
echo "The cluster is still up: export KUBECONFIG=$KUBECONFIG; stop it with make cluster-down."
