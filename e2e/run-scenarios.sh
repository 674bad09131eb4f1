#!/usr/bin/env bash
# RelayCache end to end: the chart, the operator, the webhook and the cache
# against a real kube-apiserver. `make e2e` builds what it needs and runs this.
#
#   e2e/run-scenarios.sh                        start a control plane on
#                                               loopback, run every scenario
#   E2E_SKIP="5 7" e2e/run-scenarios.sh         skip scenarios (space or comma
#                                               list); they print SKIPPED
#   E2E_KUBECONFIG=~/.kube/config e2e/run-scenarios.sh
#                                               use an existing cluster
#                                               (kind, ...) instead
#   KEEP_TMP=1 e2e/run-scenarios.sh             keep logs, certs, configs
#
# Local mode starts etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler and kwok (fake node; pods turn Ready without a kubelet) from
# .e2e-bin/. Existing-cluster mode starts none of them: the cluster's own
# nodes run the pods, so the images named by the chart and the RelayCache
# must be pullable there (see docs/testing.md). In both modes the operator
# runs as a local process with the chart's ServiceAccount token, and the
# cache processes of scenario 7 run locally.
#
# Each scenario runs in a subshell and prints PASS, FAIL, SKIPPED or NOT RUN
# (a scenario it needs failed or was skipped). A failure prints the last lines
# of the apiserver's, the operator's and the controller manager's logs. Every
# wait has a deadline (E2E_TIMEOUT seconds, default 120). Teardown always runs.
set -euo pipefail
shopt -s inherit_errexit

e2e_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=e2e/lib/control-plane.sh
source "$e2e_dir/lib/control-plane.sh"
READY_TIMEOUT="${E2E_TIMEOUT:-120}"
# The relaycache, relaycache-operator and mock-upstream binaries (cargo build).
RUST_BIN_DIR="${E2E_RUST_BIN_DIR:-${CARGO_TARGET_DIR:-$repo_root/target}/debug}"
E2E_KUBECONFIG="${E2E_KUBECONFIG:-}"
E2E_SKIP="${E2E_SKIP:-}"
# shellcheck source=e2e/lib/scenario-runner.sh
source "$e2e_dir/lib/scenario-runner.sh"

for b in relaycache relaycache-operator mock-upstream; do
  [[ -x "$RUST_BIN_DIR/$b" ]] \
    || die "$RUST_BIN_DIR/$b is missing; run: cargo build -p relaycache -p relaycache-operator -p mock-upstream (or make e2e)"
done
cp_require kubectl helm
for tool in python3 curl openssl; do
  command -v "$tool" >/dev/null || die "$tool is required"
done
python3 -c 'import yaml' 2>/dev/null || die "PyYAML is required: make test-deps (or pip install pyyaml)"

cp_init e2e
SECONDS=0
if [[ -n "$E2E_KUBECONFIG" ]]; then
  local_cluster=0
  cp_use_kubeconfig "$E2E_KUBECONFIG"
else
  local_cluster=1
  cp_start_control_plane
  cp_start_scheduler
  cp_start_kwok
fi

# The scenarios share these names and the helpers in scenarios/common.sh.
# shellcheck source=e2e/scenarios/common.sh
source "$e2e_dir/scenarios/common.sh"
for f in "$e2e_dir"/scenarios/[0-9]*.sh; do
  # shellcheck source=/dev/null
  source "$f"
done
if ((!local_cluster)); then
  teardown_hooks+=(uninstall_from_cluster)
  remove_leftovers
fi

scenario_failed() {
  TAIL_LINES=40 cp_tail_logs kube-apiserver relaycache-operator kube-controller-manager
}

scenario 1 "helm install: CRD established, the operator (chart's ServiceAccount) takes the lease"
scenario 2 "kubectl apply examples/relaycache.yaml: children with owner references, pods Ready, status" 1
scenario 3 "an invalid RelayCache is refused by the CRD's CEL rules" 1
scenario 4 "kubectl scale reaches the StatefulSet and the peer list; a config change rolls the config hash" 2
scenario 5 "a labelled pod gets the sidecar through the webhook; an unlabelled pod is untouched" 1
scenario 6 "deleting the RelayCache garbage-collects its children" 2
scenario 7 "relaycache processes from the rendered ConfigMap answer hits across members" 1

scenarios_finish "end-to-end scenarios"
