#!/usr/bin/env bash
# Keep the Helm chart's copy of the RelayCache CRD equal to the generated one.
#
#   scripts/sync-chart-crds.sh          copy crds/*.yaml into the chart
#   scripts/sync-chart-crds.sh --check  fail when the chart's copy is stale
#
# The generated CRD lives in crds/ at the repository root (`make crds`
# writes it from the operator's types); the chart renders its copy in
# files/crds/ as a template (see charts/relaycache-operator/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

src_dir=crds
dst_dir=charts/relaycache-operator/files/crds
placeholder_mark='relaycache.io/placeholder: "true"'

check=0
case "${1:-}" in
  --check) check=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

shopt -s nullglob
sources=("$src_dir"/*.yaml)
copies=("$dst_dir"/*.yaml)

if ((${#sources[@]} == 0)); then
  # Until the operator's generated CRD is in the repository the chart ships
  # a placeholder with the right names; anything else here is a mistake.
  for copy in "${copies[@]}"; do
    if ! grep -qF "$placeholder_mark" "$copy"; then
      echo "sync-chart-crds: $src_dir/ has no CRD but $copy is not the placeholder; run 'make crds' then $0" >&2
      exit 1
    fi
  done
  if ((check)); then
    echo "sync-chart-crds: WARNING: $src_dir/ has no generated CRD yet; the chart carries a placeholder CRD" >&2
    exit 0
  fi
  echo "sync-chart-crds: $src_dir/ has no CRD to copy; run 'make crds' first" >&2
  exit 1
fi

stale=0
for src in "${sources[@]}"; do
  dst="$dst_dir/$(basename "$src")"
  if cmp -s "$src" "$dst"; then
    continue
  fi
  if ((check)); then
    echo "sync-chart-crds: $dst differs from $src; run 'make chart-crds' and commit the result" >&2
    stale=1
  else
    mkdir -p "$dst_dir"
    cp "$src" "$dst"
    echo "sync-chart-crds: copied $src to $dst"
  fi
done
# A CRD removed from crds/ must leave the chart too.
for dst in "${copies[@]}"; do
  [[ -e "$src_dir/$(basename "$dst")" ]] && continue
  if ((check)); then
    echo "sync-chart-crds: $dst has no counterpart in $src_dir/; run 'make chart-crds'" >&2
    stale=1
  else
    rm -f "$dst"
    echo "sync-chart-crds: removed $dst (no longer in $src_dir/)"
  fi
done
exit "$stale"
