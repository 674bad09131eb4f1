#!/usr/bin/env bash
# Build the Kubernetes control-plane binaries that RelayCache's end-to-end
# tests run against, from their Go modules, into .e2e-bin/ at the repo root.
#
#   e2e/build-binaries.sh                  build whatever is missing or stale
#   e2e/build-binaries.sh kubectl etcd     only these binaries
#   e2e/build-binaries.sh --force [NAME..] rebuild even if up to date
#   e2e/build-binaries.sh --list           print the pinned versions and exit
#
# Every binary has a stamp file (.e2e-bin/.stamps/NAME) that records what it
# was built from (module, version, Go version, CGO setting, recipe revision).  When the binary
# exists and its stamp matches, it is skipped without compiling anything,
# so a rerun with everything in place finishes in well under a second.
#
# Only the Go module proxy is needed; see docs/testing.md for the details of
# why kube-* and etcd need a generated wrapper module.
set -euo pipefail
shopt -s inherit_errexit   # a failing $(...) inside a function still aborts

# ---------------------------------------------------------------------------
# Pinned versions (override through the environment).
# KUBE_VERSION drives kube-apiserver, kube-controller-manager, kube-scheduler
# and kubectl.
# ---------------------------------------------------------------------------
KUBE_VERSION="${KUBE_VERSION:-v1.37.1}"
ETCD_VERSION="${ETCD_VERSION:-v3.7.3}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
# The node of the real-pod scenarios: kubelet and kube-proxy come from
# KUBE_VERSION too; CoreDNS from its own module.
COREDNS_VERSION="${COREDNS_VERSION:-v1.15.0}"

# ---------------------------------------------------------------------------
# Build settings (override through the environment).
# ---------------------------------------------------------------------------
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="${E2E_BIN_DIR:-$repo_root/.e2e-bin}"
[[ "$BIN_DIR" == /* ]] || BIN_DIR="$PWD/$BIN_DIR"   # the build cd's around
# Packages compiled at once; 2 keeps a 2-core machine usable for others.
GO_BUILD_JOBS="${GO_BUILD_JOBS:-2}"
# Static binaries like the upstream release builds; no C toolchain needed.
export CGO_ENABLED="${CGO_ENABLED:-0}"
# Never let a go.mod "toolchain" line trigger a toolchain download, and
# keep any go.work of the caller out of the generated wrapper modules.
export GOTOOLCHAIN=local GOWORK=off

ALL_BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm
              kubelet kube-proxy coredns)

log() { printf '[build-binaries] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

usage() {
  sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

force=0
requested=()
while (($#)); do
  case "$1" in
    -f|--force) force=1 ;;
    -l|--list)
      printf 'kube-apiserver          k8s.io/kubernetes %s\n' "$KUBE_VERSION"
      printf 'kube-controller-manager k8s.io/kubernetes %s\n' "$KUBE_VERSION"
      printf 'kube-scheduler          k8s.io/kubernetes %s\n' "$KUBE_VERSION"
      printf 'kubectl                 k8s.io/kubernetes %s\n' "$KUBE_VERSION"
      printf 'kubelet                 k8s.io/kubernetes %s\n' "$KUBE_VERSION"
      printf 'kube-proxy              k8s.io/kubernetes %s\n' "$KUBE_VERSION"
      printf 'coredns                 github.com/coredns/coredns %s\n' "$COREDNS_VERSION"
      printf 'etcd                    go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION"
      printf 'kwok                    sigs.k8s.io/kwok %s\n' "$KWOK_VERSION"
      printf 'helm                    helm.sh/helm/v3 %s\n' "$HELM_VERSION"
      exit 0 ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *)
      case " ${ALL_BINARIES[*]} " in
        *" $1 "*) requested+=("$1") ;;
        *) die "unknown binary '$1'; choose from: ${ALL_BINARIES[*]}" ;;
      esac ;;
  esac
  shift
done
((${#requested[@]})) || requested=("${ALL_BINARIES[@]}")

command -v go >/dev/null || die "go is not on PATH"

# ---------------------------------------------------------------------------
# Stamps
# ---------------------------------------------------------------------------
STAMP_DIR="$BIN_DIR/.stamps"
# Bump when the way binaries are built changes (flags, ldflags, wrappers),
# so existing binaries get rebuilt with the new recipe.
RECIPE_REV=1
GO_VERSION="$(go env GOVERSION)"   # e.g. go1.26.8

# The text a binary's stamp must contain to count as up to date.
stamp_for() {
  local name="$1" source
  case "$name" in
    kube-apiserver|kube-controller-manager|kube-scheduler|kubectl|kubelet|kube-proxy) source="k8s.io/kubernetes@$KUBE_VERSION" ;;
    coredns) source="github.com/coredns/coredns@$COREDNS_VERSION plugins=${COREDNS_PLUGINS[*]}" ;;
    etcd) source="go.etcd.io/etcd/server/v3@$ETCD_VERSION" ;;
    kwok) source="sigs.k8s.io/kwok@$KWOK_VERSION" ;;
    helm) source="helm.sh/helm/v3@$HELM_VERSION" ;;
  esac
  printf '%s %s %s cgo=%s recipe=%s\n' "$name" "$source" "$GO_VERSION" "$CGO_ENABLED" "$RECIPE_REV"
}

up_to_date() {
  local name="$1"
  [[ -x "$BIN_DIR/$name" && -f "$STAMP_DIR/$name" ]] || return 1
  [[ "$(cat "$STAMP_DIR/$name")" == "$(stamp_for "$name" | tr -d '\n')" ]]
}

# Put a freshly built binary in place (copy next to it, then rename, so the
# old one is replaced atomically), then record its stamp.  The stamp is
# written last so an interrupted build never looks finished.
install_binary() {
  local name="$1" built="$2"
  cp "$built" "$BIN_DIR/.$name.partial"
  mv -f "$BIN_DIR/.$name.partial" "$BIN_DIR/$name"
  stamp_for "$name" >"$STAMP_DIR/$name"
}

# ---------------------------------------------------------------------------
# Scratch space for wrapper modules and partial outputs
# ---------------------------------------------------------------------------
# Created by make_work_dir() only when something needs building.  It is a
# temp dir outside the repository on purpose: the `go list -m mod@version`
# queries below run from it and must not see a go.mod of the caller's (the
# repository may grow Go code of its own, e.g. the operator).
work_dir=""
cleanup() { [[ -z "$work_dir" ]] || rm -rf "$work_dir"; }
trap cleanup EXIT
make_work_dir() {
  [[ -z "$work_dir" ]] || return 0
  mkdir -p "$BIN_DIR" "$STAMP_DIR"
  work_dir="$(mktemp -d "${TMPDIR:-/tmp}/relaycache-e2e-build.XXXXXX")"
  cd "$work_dir"
}

common_build_flags=(-trimpath -p "$GO_BUILD_JOBS")

# Version of a module's go.mod "go" line, e.g. 1.26.0.
module_go_line() {
  go list -m -f '{{.GoVersion}}' "$1"
}

# Fail early and clearly when the local Go is older than a module needs
# (GOTOOLCHAIN=local forbids switching toolchains).
check_go_line() {
  local module="$1" want have
  want="$(module_go_line "$module")"
  have="${GO_VERSION#go}"
  if [[ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | head -n1)" != "$want" ]]; then
    die "$module needs Go >= $want but the local Go is $have; pick an older version or upgrade Go"
  fi
}

# wrapper_module DIR NAME MODULE VERSION: in DIR, a go.mod of a module
# (relaycache.invalid/e2e/NAME) that requires MODULE at VERSION, with the
# go line MODULE asks for. As a plain requirement, MODULE's own replace
# directives are ignored and the published modules they name are used.
wrapper_module() {
  local dir="$1" name="$2" module="$3" version="$4"
  check_go_line "$module@$version"
  mkdir -p "$dir"
  {
    printf 'module relaycache.invalid/e2e/%s\n\n' "$name"
    printf 'go %s\n\n' "$(module_go_line "$module@$version")"
    printf 'require %s %s\n' "$module" "$version"
  } >"$dir/go.mod"
}

# ---------------------------------------------------------------------------
# Kubernetes: kube-apiserver, kube-controller-manager, kubectl
# ---------------------------------------------------------------------------
# k8s.io/kubernetes requires each of its staging modules (k8s.io/api,
# k8s.io/client-go, ...) at the placeholder version v0.0.0 and points them at
# ./staging/... with replace directives, which only work inside its own
# repository.  The wrapper module below requires k8s.io/kubernetes and
# replaces every such placeholder with the published release of the same
# module (Kubernetes v1.X.Y ships its staging modules as v0.X.Y).
kube_wrapper=""
kube_ldflags=""
prepare_kube_wrapper() {
  [[ -z "$kube_wrapper" ]] || return 0
  local module="k8s.io/kubernetes@$KUBE_VERSION"
  local staging_version="v0.${KUBE_VERSION#v1.}"
  local gomod go_line

  check_go_line "$module"
  gomod="$(go list -m -f '{{.GoMod}}' "$module")"
  [[ -f "$gomod" ]] || die "could not fetch the go.mod of $module"
  go_line="$(module_go_line "$module")"

  kube_wrapper="$work_dir/kube-wrapper"
  mkdir -p "$kube_wrapper"
  {
    printf 'module relaycache.invalid/e2e/kube-binaries\n\n'
    printf 'go %s\n\n' "$go_line"
    # Keep the runtime behaviour Kubernetes asked for (GODEBUG defaults
    # follow the main module, which is now this wrapper).
    grep -E '^godebug[[:space:]]' "$gomod" || true
    printf '\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$KUBE_VERSION"
    # A staging module = replaced with ./staging/... AND required at v0.0.0.
    awk -v ver="$staging_version" '
      $2 == "=>" && $3 ~ /^\.\/staging\// { staged[$1] = 1; next }
      $2 == "v0.0.0" { placeholder[$1] = 1 }
      END {
        for (m in staged) if (m in placeholder)
          printf "\t%s => %s %s\n", m, m, ver
      }' "$gomod" | sort
    printf ')\n'
  } >"$kube_wrapper/go.mod"

  local count
  count="$(grep -c '=>' "$kube_wrapper/go.mod" || true)"
  ((count > 0)) || die "found no staging modules in $gomod; has its layout changed?"
  log "kubernetes wrapper: $count staging modules pinned to $staging_version"
  set_kube_ldflags
}

set_kube_ldflags() {
  local rest="${KUBE_VERSION#v}" major minor build_date
  major="${rest%%.*}"; rest="${rest#*.}"; minor="${rest%%.*}"
  # The release's publication time from the proxy: reproducible, and more
  # telling than the 1970 default.  (The proxy does not know the commit, so
  # gitCommit is left empty rather than at its "$Format:%H$" placeholder.)
  build_date="$(cd "$work_dir" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' \
                  "k8s.io/kubernetes@$KUBE_VERSION")"
  local pkg
  kube_ldflags="-s -w"
  # kubectl reports its client version from client-go; servers from
  # component-base.  Without these every binary calls itself v0.0.0.
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kube_ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION"
    kube_ldflags+=" -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    kube_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit="
    kube_ldflags+=" -X $pkg.buildDate=$build_date"
  done
}

build_kube() {
  local name="$1"
  prepare_kube_wrapper
  local out; out="$work_dir/$name"
  # -mod=mod lets the go command fill in go.sum (and the indirect
  # requirements) for exactly the packages this binary imports.
  (cd "$kube_wrapper" && go build -mod=mod "${common_build_flags[@]}" \
      -ldflags "$kube_ldflags" -o "$out" "k8s.io/kubernetes/cmd/$name")
  install_binary "$name" "$out"
}

# ---------------------------------------------------------------------------
# etcd
# ---------------------------------------------------------------------------
# go.etcd.io/etcd/server/v3 points its sibling modules at ../api etc. with
# replace directives, so `go install ...@version` refuses it.  As a plain
# dependency of a wrapper module those replaces are ignored and the
# published sibling modules of the same release are used.
build_etcd() {
  local module="go.etcd.io/etcd/server/v3"
  local wrapper; wrapper="$work_dir/etcd-wrapper"
  wrapper_module "$wrapper" etcd-binary "$module" "$ETCD_VERSION"
  local out; out="$work_dir/etcd"
  (cd "$wrapper" && go build -mod=mod "${common_build_flags[@]}" \
      -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=module-$ETCD_VERSION" \
      -o "$out" "$module")
  install_binary etcd "$out"
}

# ---------------------------------------------------------------------------
# kwok and helm: `go install module/cmd@version` works as is.
# ---------------------------------------------------------------------------
go_install() {
  local name="$1" pkg="$2" ldflags="$3"
  local gobin; gobin="$work_dir/gobin-$name"
  mkdir -p "$gobin"
  GOBIN="$gobin" go install "${common_build_flags[@]}" -ldflags "$ldflags" "$pkg"
  install_binary "$name" "$gobin/$name"
}

build_kwok() {
  # kwok's own default version string is the release it ships in, so only
  # strip the binary.
  check_go_line "sigs.k8s.io/kwok@$KWOK_VERSION"
  go_install kwok "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" "-s -w"
}

build_helm() {
  local module="helm.sh/helm/v3@$HELM_VERSION"
  check_go_line "$module"
  # Like helm's own release build: report the full version, and default the
  # Kubernetes version used by `helm template`/lint (when no cluster is
  # asked) to the one matching the client-go helm was built with.
  local client_go major minor rest
  client_go="$(awk '$1 == "k8s.io/client-go" { print $2; exit }' \
                 "$(go list -m -f '{{.GoMod}}' "$module")")"
  rest="${client_go#v}"; major="$(( ${rest%%.*} + 1 ))"
  rest="${rest#*.}"; minor="${rest%%.*}"
  local ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$major"
  ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
  ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$major"
  ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
  go_install helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" "$ldflags"
}

# ---------------------------------------------------------------------------
# CoreDNS: a wrapper main with only the plugins the real-pod node's Corefile
# uses. The module's own main links every plugin (the cloud providers' SDKs
# among them) and takes about four times as long to compile cold; plugins
# register themselves when imported, and coremain.Run is CoreDNS's main.
# ---------------------------------------------------------------------------
COREDNS_PLUGINS=(bind errors kubernetes template log health)
build_coredns() {
  local module="github.com/coredns/coredns"
  local wrapper; wrapper="$work_dir/coredns-wrapper"
  wrapper_module "$wrapper" coredns "$module" "$COREDNS_VERSION"
  {
    printf 'package main\n\nimport (\n\t"%s/coremain"\n' "$module"
    local plugin
    for plugin in "${COREDNS_PLUGINS[@]}"; do printf '\t_ "%s/plugin/%s"\n' "$module" "$plugin"; done
    printf ')\n\nfunc main() { coremain.Run() }\n'
  } >"$wrapper/main.go"
  local out; out="$work_dir/coredns"
  (cd "$wrapper" && go build -mod=mod "${common_build_flags[@]}" \
      -ldflags "-s -w -X $module/coremain.GitCommit=module-$COREDNS_VERSION" -o "$out" .)
  install_binary coredns "$out"
}

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
total_start=$(date +%s)
built=0
for name in "${requested[@]}"; do
  if ((!force)) && up_to_date "$name"; then
    log "$name: up to date ($(cut -d' ' -f2 "$STAMP_DIR/$name"))"
    continue
  fi
  log "$name: building..."
  make_work_dir
  start=$(date +%s)
  case "$name" in
    kube-apiserver|kube-controller-manager|kube-scheduler|kubectl|kubelet|kube-proxy) build_kube "$name" ;;
    coredns) build_coredns ;;
    etcd) build_etcd ;;
    kwok) build_kwok ;;
    helm) build_helm ;;
  esac
  log "$name: built in $(( $(date +%s) - start ))s -> $BIN_DIR/$name"
  built=$((built + 1))
done
if ((built)); then
  log "built $built binar$( ((built == 1)) && echo y || echo ies) in $(( $(date +%s) - total_start ))s"
fi
