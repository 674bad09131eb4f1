#!/usr/bin/env bash
# Smoke test for the binaries built by e2e/build-binaries.sh: bring up a
# throw-away control plane on loopback (etcd + kube-apiserver +
# kube-controller-manager + kube-scheduler), talk to it with kubectl, let
# kwok run a fake node and a pod on it, then tear it all down.
#
#   e2e/smoke-control-plane.sh               run the smoke test
#   KEEP_TMP=1 e2e/smoke-control-plane.sh    keep the temp dir (logs, certs)
#   SMOKE_KWOK=0 e2e/smoke-control-plane.sh  skip the kwok part
#   SMOKE_THEN=FILE e2e/smoke-control-plane.sh
#                                            then source FILE against the same
#                                            control plane (kubectl, log, die,
#                                            wait_for and $kubeconfig are set)
#
# The control plane itself comes from e2e/lib/control-plane.sh (shared with
# e2e/run-scenarios.sh); its EXIT trap stops every process and removes the
# temp dir, whatever the outcome.
set -euo pipefail

# shellcheck source=e2e/lib/control-plane.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/control-plane.sh"

SMOKE_KWOK="${SMOKE_KWOK:-1}"
cp_require etcd kube-apiserver kube-controller-manager kube-scheduler kubectl
[[ "$SMOKE_KWOK" == 0 ]] || cp_require kwok
cp_init smoke

SECONDS=0
log "binaries:"
"$BIN_DIR/etcd" --version >&2
"$BIN_DIR/kube-apiserver" --version >&2
"$BIN_DIR/kube-controller-manager" --version >&2
"$BIN_DIR/kube-scheduler" --version >&2
"$BIN_DIR/kubectl" version --client >&2
[[ "$SMOKE_KWOK" == 0 ]] || "$BIN_DIR/kwok" --version >&2
[[ ! -x "$BIN_DIR/helm" ]] || "$BIN_DIR/helm" version --short >&2

cp_start_control_plane
kcm_pid="${pids[-1]}"
cp_start_scheduler

# ---------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------
run() { log "\$ kubectl $*"; kubectl "$@"; }
run get --raw /version
echo
run get ns
# Captured first: piping kubectl straight into head could SIGPIPE it.
resources="$(run api-resources)"
head -n 10 <<<"$resources"
wait_for "default ServiceAccount (kube-controller-manager)" "$kcm_pid" \
  kubectl get serviceaccount default --namespace default
run get serviceaccounts --namespace default

# ---------------------------------------------------------------------------
# kwok: a fake node, and a pod that names no node: kube-scheduler binds it,
# kwok runs it.
# ---------------------------------------------------------------------------
if [[ "$SMOKE_KWOK" != 0 ]]; then
  cp_start_kwok
  kubectl apply -f - >&2 <<'MANIFEST'
apiVersion: v1
kind: Pod
metadata:
  name: smoke
  namespace: default
spec:
  containers:
  - name: fake
    image: fake.invalid/none:0
MANIFEST
  wait_for "pod scheduled and Ready on the kwok node" "${pids[-1]}" \
    kubectl wait --for=condition=Ready pod/smoke --namespace default --timeout=2s
  node="$(kubectl get pod smoke -n default -o jsonpath='{.spec.nodeName}')"
  [[ "$node" == "$KWOK_NODE" ]] || die "pod smoke is on node '$node', not $KWOK_NODE"
  run get nodes -o wide
  run get pods --namespace default -o wide
fi

if [[ -n "${SMOKE_THEN:-}" ]]; then
  # shellcheck source=/dev/null
  source "$SMOKE_THEN"
fi

log "OK: control plane smoke test passed in ${SECONDS}s"
