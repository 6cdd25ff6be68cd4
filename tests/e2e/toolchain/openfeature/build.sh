#!/usr/bin/env bash
# Installs (once) and caches the OpenFeature clients the flag tests read published flags with:
#   python  a venv with the OpenFeature SDK and its flagd provider (requirements.txt, pinned),
#           which evaluate.py uses in file (offline, in-process) mode, as an app would;
#   node    @openfeature/flagd-core (package-lock.json, pinned), whose compiled copy of flagd's
#           flag and targeting schemas validate.cjs checks flag files against.
#
# Output: progress on stderr; the install directory as the LAST line on stdout:
#   DIR=$(tests/e2e/toolchain/openfeature/build.sh | tail -1)
#   "$DIR/venv/bin/python" tests/e2e/toolchain/openfeature/evaluate.py flags.json my-flag
#   NODE_PATH="$DIR/node_modules" node tests/e2e/toolchain/openfeature/validate.cjs flags.json
# The directory is named after a hash of the pinned versions, so changing a pin installs
# afresh; a warm cache returns at once. Needs python3 (3.9+) with venv, and node with npm.
#
# Env: FLASHSALE_TOOLCHAIN_DIR  cache root
#                               (default: $HOME/.cache/flashsale-operator/toolchain)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
hash=$(cd "$here" && cat requirements.txt package.json package-lock.json | sha256sum | cut -c1-12)

cache_root=${FLASHSALE_TOOLCHAIN_DIR:-$HOME/.cache/flashsale-operator/toolchain}
dir=$cache_root/openfeature-$hash
log=$dir/install.log

ready() { [[ -f $dir/.done ]]; }

if ready; then
  echo "$dir"
  exit 0
fi
mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
if ready; then
  echo "$dir"
  exit 0
fi

echo "toolchain: installing the OpenFeature clients $hash (cold: ~30 s; log: $log)" >&2
start=$SECONDS
fail() {
  echo "toolchain: OpenFeature clients FAILED after $((SECONDS - start))s ($1); last lines of $log:" >&2
  tail -n 40 "$log" >&2
  exit 1
}
rm -rf "$dir/venv" "$dir/node_modules"
{
  python3 -m venv "$dir/venv" &&
    "$dir/venv/bin/pip" install --disable-pip-version-check --no-input -q -r "$here/requirements.txt"
} >>"$log" 2>&1 || fail "pip"
cp "$here/package.json" "$here/package-lock.json" "$dir/"
(cd "$dir" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error) >>"$log" 2>&1 || fail "npm"
touch "$dir/.done"
echo "toolchain: OpenFeature clients installed in $((SECONDS - start))s" >&2

echo "$dir"
