#!/usr/bin/env bash
# Checks the OCI image archive `make image` builds, as a container runtime would use it: every
# blob matches its digest, the config names the non-root user and the entrypoint, and both
# binaries run from the image's root filesystem alone (chroot) as that user, reading a sale,
# the bundled time zones and the CA certificates. It also checks that the image has no shell.
#
# Last, the image is pushed to a registry served on loopback (go-containerregistry's `crane`,
# built once from the Go module proxy into the toolchain cache) and validated by that registry
# client: what a user's `crane push` / `skopeo copy` of the archive does.
#
# Usage: tests/image/check.sh ARCHIVE   (needs root for chroot; prints "image: N passed, 0 failed")
set -euo pipefail

archive=${1:?usage: check.sh ARCHIVE}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
fail() { echo "image check failed: $*" >&2; exit 1; }
pass() { passed=$((passed + 1)); echo "ok: $*"; }

mkdir "$work/layout" "$work/rootfs"
tar -xf "$archive" -C "$work/layout"
[[ $(<"$work/layout/oci-layout") == *'"imageLayoutVersion":"1.0.0"'* ]] || fail "no oci-layout 1.0.0"
for blob in "$work/layout"/blobs/sha256/*; do
  [[ $(sha256sum "$blob" | cut -d' ' -f1) == "$(basename "$blob")" ]] || fail "blob $(basename "$blob") does not match its digest"
done
pass "every blob matches its digest"

# index -> manifest -> config and layer, as a runtime reads them.
json() { /usr/bin/python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {'d': d}))" "$@"; }
blob_path() { echo "$work/layout/blobs/sha256/${1#sha256:}"; }
manifest=$(blob_path "$(json "$work/layout/index.json" "d['manifests'][0]['digest']")")
config=$(blob_path "$(json "$manifest" "d['config']['digest']")")
layer=$(blob_path "$(json "$manifest" "d['layers'][0]['digest']")")
[[ $(json "$config" "d['config']['User']") == 65532:65532 ]] || fail "the image does not run as 65532:65532"
[[ $(json "$config" "d['config']['Entrypoint'][0]") == /usr/local/bin/flashsale-operator ]] || fail "wrong entrypoint"
diff_id=$(gzip -dc "$layer" | sha256sum | cut -d' ' -f1)
[[ "sha256:$diff_id" == "$(json "$config" "d['rootfs']['diff_ids'][0]")" ]] || fail "the layer's diff_id does not match the config"
pass "config: user 65532:65532, entrypoint flashsale-operator, layer diff_id matches"

tar -xzf "$layer" -C "$work/rootfs"
for sh in bin/sh bin/bash usr/bin/sh usr/bin/bash bin/busybox; do
  [[ ! -e $work/rootfs/$sh ]] || fail "the image has a shell: /$sh"
done
pass "no shell in the image"
[[ $(stat -c %a "$work/rootfs/tmp") == 1777 ]] || fail "/tmp is not 1777"

run() { chroot --userspec=65532:65532 "$work/rootfs" "$@"; }
want=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)
[[ $(run /usr/local/bin/flashsale-operator version) == "flashsale-operator $want" ]] || fail "flashsale-operator version"
[[ $(run /usr/local/bin/flashsale-drain-agent --version) == "flashsale-drain-agent $want" ]] || fail "flashsale-drain-agent --version"
pass "both binaries run from the image alone as 65532"

cp "$repo/examples/double-11.yaml" "$work/rootfs/tmp/sale.yaml"
plan=$(run /usr/local/bin/flashsale-operator plan -f /tmp/sale.yaml --now 2026-11-01T00:00:00Z)
[[ $plan == *Preparing* ]] || fail "plan inside the image printed no timeline: $plan"
pass "plan reads a sale inside the image (bundled time zones)"

run /usr/local/bin/flashsale-operator crd >"$work/crd.yaml"
cmp -s "$work/crd.yaml" "$repo/crds/flashsale.dev_flashsales.yaml" || fail "the image's binary prints another CRD than crds/"
pass "the image's binary generates the checked-in CRD"

# The CA bundle is where rustls' native roots (and SSL_CERT_FILE) look.
out=$(run /usr/local/bin/flashsale-drain-agent --help)
[[ $out == *--metadata-endpoint* ]] || fail "drain agent help"
[[ -s $work/rootfs/etc/ssl/certs/ca-certificates.crt ]] || fail "no CA certificates"
pass "CA certificates in place; the drain agent's flags are the documented ones"

crane_version=v0.22.1
crane_dir=${FLASHSALE_TOOLCHAIN_DIR:-$HOME/.cache/flashsale-operator/toolchain}/crane-$crane_version
if [[ ! -x $crane_dir/crane ]]; then
  echo "image: building crane $crane_version (once)" >&2
  GOBIN=$crane_dir GOFLAGS=-mod=mod go install "github.com/google/go-containerregistry/cmd/crane@$crane_version" >&2
fi
crane=$crane_dir/crane
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$crane" registry serve --address "127.0.0.1:$port" >"$work/registry.log" 2>&1 &
registry=$!
trap 'kill $registry 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
ref=127.0.0.1:$port/flashsale-operator:$want
"$crane" push --insecure "$work/layout" "$ref" >/dev/null 2>"$work/push.log" || fail "crane push: $(cat "$work/push.log")"
"$crane" validate --insecure --remote "$ref" >/dev/null 2>"$work/validate.log" || fail "crane validate: $(cat "$work/validate.log")"
pushed=$("$crane" digest --insecure "$ref")
[[ $pushed == "sha256:$(basename "$manifest")" ]] || fail "the registry holds $pushed, not the archive's manifest"
[[ $("$crane" config --insecure "$ref") == *'"User":"65532:65532"'* ]] || fail "the pushed config lost its user"
pass "pushed to a loopback registry and validated there (digest $pushed)"

echo "image: $passed passed, 0 failed"
