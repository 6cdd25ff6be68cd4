#!/usr/bin/env bash
# Builds the operator's container image without a container daemon, as an OCI image archive
# (an OCI image layout in a tar file), from the release binaries and this machine's files:
#
#   /usr/local/bin/flashsale-operator, /usr/local/bin/flashsale-drain-agent
#   the shared libraries they link (glibc, libgcc_s, libm, the dynamic loader)
#   /etc/ssl/certs/ca-certificates.crt, /etc/passwd and /etc/group with nonroot (65532)
#   /tmp (1777) and /home/nonroot
#
# which are the files the Dockerfile's runtime stage (distroless/cc, nonroot) provides, so the
# two images run the same way: user 65532, no shell, entrypoint flashsale-operator, command run.
# The layer is reproducible (sorted, numeric owners, fixed times).
#
# Usage: scripts/image.sh [OUT]   (default OUT: target/image/flashsale-operator-<version>.oci.tar)
# Env:   FLASHSALE_IMAGE_SKIP_BUILD=1  use the release binaries already in target/release
# Load it with e.g. `skopeo copy oci-archive:OUT docker://registry.example.com/flashsale-operator:<version>`
# or `crane push OUT registry.example.com/flashsale-operator:<version>`.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)
out=${1:-$repo/target/image/flashsale-operator-$version.oci.tar}
bins=(flashsale-operator flashsale-drain-agent)
uid=65532

if [[ ${FLASHSALE_IMAGE_SKIP_BUILD:-} != 1 ]]; then
  (cd "$repo" && cargo build --release --locked --bins --quiet)
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp" "$root/home/nonroot"

for bin in "${bins[@]}"; do
  install -m 0755 "$repo/target/release/$bin" "$root/usr/local/bin/$bin"
done

# The libraries the binaries link, at the paths the dynamic loader looks for them.
libs=$(for bin in "${bins[@]}"; do ldd "$root/usr/local/bin/$bin"; done |
  awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)
for lib in $libs; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
for bin in "${bins[@]}"; do
  if ldd "$root/usr/local/bin/$bin" | grep -q 'not found'; then
    echo "image: $bin links a library this machine does not have" >&2
    exit 1
  fi
done

cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
cat >"$root/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:$uid:$uid:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$root/etc/group" <<EOF
root:x:0:
nonroot:x:$uid:
EOF
chmod 1777 "$root/tmp"
chown "$uid:$uid" "$root/home/nonroot"

layout=$work/layout
mkdir -p "$layout/blobs/sha256"
tar --sort=name --numeric-owner --mtime=@0 --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "$root" -cf "$work/layer.tar" .
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
gzip -n -6 -c "$work/layer.tar" >"$work/layer.tar.gz"

# Writes stdin as a blob; prints "<digest> <size>".
blob() {
  local file=$work/blob digest
  cat >"$file"
  digest=$(sha256sum "$file" | cut -d' ' -f1)
  mv "$file" "$layout/blobs/sha256/$digest"
  echo "$digest $(stat -c %s "$layout/blobs/sha256/$digest")"
}

read -r layer_digest layer_size < <(blob <"$work/layer.tar.gz")
read -r config_digest config_size < <(blob <<EOF
{"architecture":"amd64","os":"linux","config":{"User":"$uid:$uid","Env":["PATH=/usr/local/bin:/usr/bin:/bin","SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],"Entrypoint":["/usr/local/bin/flashsale-operator"],"Cmd":["run"],"WorkingDir":"/","Labels":{"org.opencontainers.image.title":"flashsale-operator","org.opencontainers.image.version":"$version","org.opencontainers.image.licenses":"Apache-2.0"}},"rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]},"history":[{"created_by":"scripts/image.sh: flashsale-operator $version binaries, their libraries, CA certificates, nonroot user"}]}
EOF
)
read -r manifest_digest manifest_size < <(blob <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config_digest","size":$config_size},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:$layer_digest","size":$layer_size}]}
EOF
)
cat >"$layout/index.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest_digest","size":$manifest_size,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"org.opencontainers.image.ref.name":"$version"}}]}
EOF
echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"

mkdir -p "$(dirname "$out")"
tar --sort=name --numeric-owner --owner=0 --group=0 --mtime=@0 -C "$layout" -cf "$out" .
echo "image: $out (manifest sha256:$manifest_digest, layer $((layer_size / 1024)) KiB)" >&2
echo "$out"
