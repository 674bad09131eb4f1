#!/usr/bin/env bash
# RelayCache end to end in real pods: the control plane of run-scenarios.sh
# plus a real node (lib/node.sh: containerd, runc, CNI bridge, kubelet,
# kube-proxy, CoreDNS) running the images of e2e/build-images.sh. `make e2e`
# runs it after the kwok scenarios.
#
#   e2e/run-real-pods.sh                  every real-pod scenario
#   E2E_SKIP="R4 R5" e2e/run-real-pods.sh skip some (they print SKIPPED)
#   KEEP_TMP=1 e2e/run-real-pods.sh       keep logs and configs
#
# A machine that cannot run a node (not root, no bridge, iptables refused,
# no images) prints SKIPPED for every scenario with the reason, never PASS.
# Teardown (every exit path) removes pods, containers, mounts, network
# namespaces, iptables rules, the bridge and restores the sysctls it set.
set -euo pipefail
shopt -s inherit_errexit

e2e_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=e2e/lib/control-plane.sh
source "$e2e_dir/lib/control-plane.sh"
# shellcheck source=e2e/lib/node.sh
source "$e2e_dir/lib/node.sh"
READY_TIMEOUT="${E2E_TIMEOUT:-180}"
E2E_SKIP="${E2E_SKIP:-}"
LOG_TAG=real-pods

titles=(
  "R1 helm install: the operator runs in its pod, takes the Lease, serves the webhook through its Service"
  "R2 examples/relaycache.yaml against mock-upstream in the cluster: members Ready under restricted, peers through CoreDNS"
  "R3 an injected app pod: miss then hit; a second app pod: peer hit; the mock answered once"
  "R4 scale 5, scale 2, delete llm-cache-0, rollout restart under a reader of 200 answers: hit ratio >= 95% each step"
  "R5 a reserve on s3 (moto) outlives every member pod: new members warm their memory from it before they are Ready"
)

# shellcheck source=e2e/lib/scenario-runner.sh
source "$e2e_dir/lib/scenario-runner.sh"
# Not a limit of the machine: a run going on, or one killed without teardown.
if ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
  die "link $NODE_BRIDGE exists already: another run is going on, or one was killed (ip link del $NODE_BRIDGE)"
fi
if ! node_preflight; then
  for t in "${titles[@]}"; do log "SKIPPED  ${t%% *}: ${t#* } ($node_skip_reason)"; done
  log "SKIPPED: no real node on this machine: $node_skip_reason"
  exit 0
fi
cp_require etcd kube-apiserver kube-controller-manager kube-scheduler kubectl helm kubelet kube-proxy coredns
command -v jq >/dev/null || die "jq is required"
command -v moto_server >/dev/null || die "moto_server is required (make test-deps)"

cp_init real-pods
SECONDS=0
node_configure_apiserver
node_start
cp_start_control_plane
cp_start_scheduler
node_start_services
log "control plane and node up in ${SECONDS}s"

# shellcheck source=e2e/real-pods/scenarios.sh
source "$e2e_dir/real-pods/scenarios.sh"

scenario_failed() {
  TAIL_LINES=30 cp_tail_logs kubelet kube-apiserver containerd
  rp_pod_logs
}
scenarios_summary_extra() {
  [[ -f "$tmp/hit-ratios.txt" ]] || return 0
  log "hit ratios:"
  local line
  while read -r line; do log "  $line"; done <"$tmp/hit-ratios.txt"
}

for t in "${titles[@]}"; do
  n="${t%% *}"
  case "$n" in
    R1) scenario R1 "${t#* }" ;;
    R2) scenario R2 "${t#* }" R1 ;;
    R3) scenario R3 "${t#* }" R2 ;;
    R4) scenario R4 "${t#* }" R2 ;;
    R5) scenario R5 "${t#* }" R2 ;;
  esac
done

scenarios_finish "real-pod scenarios"
