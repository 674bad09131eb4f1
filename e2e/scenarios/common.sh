# shellcheck shell=bash disable=SC2034,SC2154  # names used by the scenario files; set by lib/control-plane.sh
# Names and helpers shared by the scenarios (sourced by run-scenarios.sh,
# after lib/control-plane.sh). Scenarios run in subshells; what one of them
# learns for the next (the operator's ports, names read from the chart) goes
# through state_set/state_load, a file in the temp dir.

chart="$repo_root/charts/relaycache-operator"
release=relaycache-operator          # fullname = release (it contains the chart name)
ns_system=relaycache-e2e-system      # the chart's release namespace
ns_apps=relaycache-e2e-apps          # scenarios 2, 3, 4, 6
ns_inject=relaycache-e2e-inject      # scenario 5
ns_cluster=relaycache-e2e-cluster    # scenario 7
rc_name=llm-cache                    # metadata.name in examples/relaycache.yaml
example="$repo_root/examples/relaycache.yaml"
crd_name=relaycaches.relaycache.io

helm() { "$BIN_DIR/helm" --kubeconfig "$kubeconfig" "$@"; }
fail() { die "$*"; }

command -v jq >/dev/null || die "jq is required (Debian: apt-get install jq)"

state_file="$tmp/state.sh"
: >"$state_file"
state_set() { printf '%s=%q\n' "$1" "$2" >>"$state_file"; }
state_load() {
  # shellcheck source=/dev/null
  source "$state_file"
}

# until_true DESCRIPTION COMMAND...: wait_for without a process to watch.
until_true() { local what="$1"; shift; wait_for "$what" - "$@"; }

# expect_eq WHAT GOT WANT
expect_eq() {
  [[ "$2" == "$3" ]] || fail "$1: got '$2', want '$3'"
  log "  ok: $1 = $3"
}

# jq_true FILE FILTER [jq args...]: the filter yields true for the JSON in FILE.
jq_true() {
  local file="$1" filter="$2"; shift 2
  [[ "$(jq -r "$@" "$filter" "$file")" == true ]]
}

# get_json FILE KUBECTL-GET-ARGS...: save an object as JSON.
get_json() {
  local file="$1"; shift
  kubectl get "$@" -o json >"$file"
}

# new_namespace NS: a fresh namespace where Pod Security "restricted" is
# enforced, so every pod the product creates in it must pass it.
new_namespace() {
  kubectl create namespace "$1" >&2
  kubectl label namespace "$1" pod-security.kubernetes.io/enforce=restricted \
    pod-security.kubernetes.io/enforce-version=latest >&2
}

# apply_example NS: the example RelayCache, as its comment says to (no
# Secret: the operator generates both tokens).
apply_example() {
  kubectl apply -f "$example" -n "$1" >&2
}

# token_of NS SECRET: the token a generated Secret holds, read through the
# apiserver as a pod's secretKeyRef would.
token_of() {
  kubectl get secret "$2" -n "$1" -o jsonpath='{.data.token}' | base64 -d
}

# rendered_config NS: the proxy configuration the operator put in the ConfigMap.
rendered_config() {
  kubectl get configmap "$rc_name" -n "$1" -o jsonpath='{.data.relaycache\.yaml}'
}

# config_hash NS: the pod template's relaycache.io/config-hash.
config_hash() {
  kubectl get statefulset "$rc_name" -n "$1" \
    -o jsonpath='{.spec.template.metadata.annotations.relaycache\.io/config-hash}'
}

# peers NS: the rendered cache.ha.peers, one a line.
peers() {
  rendered_config "$1" | python3 -c '
import sys, yaml
for peer in yaml.safe_load(sys.stdin)["cache"]["ha"]["peers"]:
    print(peer)'
}

# expected_peers NS N: the peer list docs/kubernetes.md documents for N members.
expected_peers() {
  local i
  for ((i = 0; i < $2; i++)); do
    printf '%s-%d.%s-peers.%s.svc:3320\n' "$rc_name" "$i" "$rc_name" "$1"
  done
}

# ready_replicas NS: status.readyReplicas of the RelayCache (0 when unset).
ready_replicas() {
  local n
  n="$(kubectl get relaycaches.relaycache.io "$rc_name" -n "$1" -o jsonpath='{.status.readyReplicas}')"
  printf '%s\n' "${n:-0}"
}

# Existing-cluster mode: remove what the scenarios installed.
uninstall_from_cluster() {
  log "teardown: uninstalling the release and deleting the test namespaces"
  helm uninstall "$release" -n "$ns_system" --wait --timeout 60s >&2 || true
  kubectl delete namespace "$ns_apps" "$ns_inject" "$ns_cluster" "$ns_system" \
    --ignore-not-found --wait=false >&2 || true
}

# Existing-cluster mode, before the scenarios: what an interrupted or
# immediately repeated run left behind (teardown deletes namespaces without
# waiting) would make `kubectl create namespace` fail, so remove it and wait
# until the namespaces are really gone.
remove_leftovers() {
  local left
  left="$(kubectl get namespace "$ns_apps" "$ns_inject" "$ns_cluster" "$ns_system"     --ignore-not-found -o name 2>/dev/null || true)"
  [[ -n "$left" ]] || return 0
  log "removing what an earlier run left: $(tr '\n' ' ' <<<"$left")"
  helm uninstall "$release" -n "$ns_system" --wait --timeout 60s >&2 2>/dev/null || true
  # shellcheck disable=SC2086  # one word per namespace
  kubectl delete $left --ignore-not-found --wait=false >&2
  until_true "namespaces of an earlier run deleted" no_test_namespaces
}

no_test_namespaces() {
  [[ -z "$(kubectl get namespace "$ns_apps" "$ns_inject" "$ns_cluster" "$ns_system" \
    --ignore-not-found -o name)" ]]
}

