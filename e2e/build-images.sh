#!/usr/bin/env bash
# Build the images of the real-pod scenarios as OCI archives, without a
# Docker engine or a registry, into .e2e-images/ (make e2e-images):
#
#   relaycache/relaycache:0.1.0           the proxy (chart's proxyImage, operator default)
#   relaycache/relaycache-operator:0.1.0  the operator (chart's image)
#   relaycache/mock-upstream:0.1.0        the mock LLM API the scenarios call
#   relaycache/e2e-client:0.1.0           busybox-static (sh, wget) for app pods
#   relaycache/e2e-pause:0.1.0            the pod sandbox (e2e/images/pause.c)
#
# Tags follow the chart's appVersion, so `helm install` needs no overrides.
# Each image is one layer: the binary, the shared libraries it links (from
# this machine, like distroless "cc"), CA certificates, /etc/passwd with
# nonroot (65532) and /tmp; the user is 65532:65532.
#
#   e2e/build-images.sh                 archives from target/release
#   e2e/build-images.sh --import SOCK   ... then `ctr -n k8s.io images import`
#                                       each into the containerd at SOCK
#   e2e/build-images.sh --import-only SOCK   import the archives already built
#
# docker/*.Dockerfile build the same images with a Docker engine (make image).
set -euo pipefail
shopt -s inherit_errexit

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUST_BIN_DIR="${E2E_IMAGE_BIN_DIR:-${CARGO_TARGET_DIR:-$repo_root/target}/release}"
OUT_DIR="${E2E_IMAGE_DIR:-$repo_root/.e2e-images}"
[[ "$RUST_BIN_DIR" == /* ]] || RUST_BIN_DIR="$PWD/$RUST_BIN_DIR"
[[ "$OUT_DIR" == /* ]] || OUT_DIR="$PWD/$OUT_DIR"

import_sock=""
import_only=0
case "${1:-}" in
  --import) import_sock="${2:?--import needs the socket of containerd}" ;;
  --import-only) import_sock="${2:?--import-only needs the socket of containerd}"; import_only=1 ;;
esac
log() { printf '[build-images] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# import_all: every archive into the containerd at $import_sock.
import_all() {
  local archive start=$SECONDS
  for archive in "$OUT_DIR"/*.tar; do
    ctr --address "$import_sock" -n k8s.io images import "$archive" >/dev/null \
      || die "ctr images import $archive failed"
  done
  log "imported into the containerd at $import_sock ($((SECONDS - start))s)"
}
if ((import_only)); then
  [[ -f "$OUT_DIR/relaycache.tar" ]] || die "no archives in $OUT_DIR; run make e2e-images"
  import_all
  exit 0
fi

version="$(awk '$1 == "appVersion:" { gsub(/"/, "", $2); print $2 }' "$repo_root/charts/relaycache-operator/Chart.yaml")"
[[ -n "$version" ]] || die "no appVersion in the chart"
for b in relaycache relaycache-operator mock-upstream; do
  [[ -x "$RUST_BIN_DIR/$b" ]] || die "$RUST_BIN_DIR/$b is missing; run make release"
done
busybox="$(command -v busybox || true)"
if [[ -z "$busybox" ]] || ldd "$busybox" >/dev/null 2>&1; then
  die "a static busybox is required (Debian: apt-get install busybox-static)"
fi
command -v gcc >/dev/null || die "gcc is required for the pause image"
ca_bundle=/etc/ssl/certs/ca-certificates.crt
[[ -f "$ca_bundle" ]] || die "$ca_bundle is missing (Debian: apt-get install ca-certificates)"

mkdir -p "$OUT_DIR"
work="$(mktemp -d "${TMPDIR:-/tmp}/relaycache-images.XXXXXX")"
trap 'rm -rf "$work"' EXIT
start=$SECONDS

printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$work/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$work/group"
base=(--file "$work/passwd:/etc/passwd" --file "$work/group:/etc/group"
      --file "$ca_bundle:/etc/ssl/certs/ca-certificates.crt"
      --dir /tmp:1777 --dir /home/nonroot:755
      --env PATH=/usr/local/bin:/usr/bin:/bin
      --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt)

# libs BINARY: --file arguments for the shared libraries it loads.
libs() {
  ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u |
    while read -r lib; do printf -- '--file\n%s:%s:0755\n' "$lib" "$lib"; done
}

# image NAME BINARY ENTRYPOINT [CMD...]
image() {
  local name="$1" bin="$2" entry="$3"; shift 3
  local args=() lib_args=() c
  mapfile -t lib_args < <(libs "$bin")
  for c in "$@"; do args+=("--cmd=$c"); done
  python3 "$repo_root/e2e/lib/oci-image.py" --name "docker.io/relaycache/$name:$version" \
    --out "$OUT_DIR/$name.tar" "${base[@]}" "${lib_args[@]}" \
    --file "$bin:$entry:0755" --entrypoint "$entry" "${args[@]}" >&2
}

image relaycache "$RUST_BIN_DIR/relaycache" /usr/local/bin/relaycache serve
image relaycache-operator "$RUST_BIN_DIR/relaycache-operator" /usr/local/bin/relaycache-operator run
image mock-upstream "$RUST_BIN_DIR/mock-upstream" /usr/local/bin/mock-upstream --listen 0.0.0.0:8080

gcc -static -Os -s -o "$work/pause" "$repo_root/e2e/images/pause.c"
python3 "$repo_root/e2e/lib/oci-image.py" --name "docker.io/relaycache/e2e-pause:$version" \
  --out "$OUT_DIR/e2e-pause.tar" --user 65535:65535 \
  --file "$work/pause:/pause:0755" --entrypoint /pause >&2

client_links=()
for applet in sh wget sleep cat grep awk sed seq date tr head tail wc printf echo env timeout cut; do
  client_links+=(--link "busybox:/bin/$applet")
done
python3 "$repo_root/e2e/lib/oci-image.py" --name "docker.io/relaycache/e2e-client:$version" \
  --out "$OUT_DIR/e2e-client.tar" "${base[@]}" --file "$busybox:/bin/busybox:0755" \
  "${client_links[@]}" --entrypoint /bin/sh >&2
log "archives in $OUT_DIR ($((SECONDS - start))s)"

[[ -z "$import_sock" ]] || import_all
