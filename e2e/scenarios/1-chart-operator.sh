# shellcheck shell=bash disable=SC2154,SC2317,SC2016  # names from common.sh and state_load; functions called through wait_for; jq variables
# Scenario 1: `helm install` the chart; the CRD is established and is the
# operator's (CEL rules, scale subresource), and the operator, run as a local
# process whose only credential is a token of the chart's ServiceAccount,
# takes the chart's Lease.
#
# The chart's Deployment is scaled to 0 after the install: under kwok its
# pods would be fake (Ready, running no code), and on a real cluster they
# would compete for the Lease; the local process takes their place with
# the same settings, read from the installed Deployment.

# operator_env NAME: the value the chart's Deployment gives env var NAME.
operator_env() {
  jq -r --arg name "$1" \
    '.spec.template.spec.containers[] | select(.name == "operator") | .env[] | select(.name == $name) | .value' \
    "$tmp/operator-deployment.json"
}

scenario_1() {
  new_namespace "$ns_system"
  helm install "$release" "$chart" -n "$ns_system" >"$tmp/helm-install.txt" 2>&1 \
    || fail "helm install failed: $(cat "$tmp/helm-install.txt")"
  log "  helm install $release: deployed"

  until_true "CRD $crd_name Established" \
    kubectl wait --for=condition=Established "crd/$crd_name" --timeout=5s
  get_json "$tmp/crd.json" crd "$crd_name"
  jq_true "$tmp/crd.json" '.metadata.annotations["relaycache.io/placeholder"] == null' \
    || fail "the chart installed its placeholder CRD, not the operator's (run make chart-crds)"
  expect_eq "CRD scale subresource spec path" \
    "$(jq -r '.spec.versions[] | select(.name == "v1alpha1") | .subresources.scale.specReplicasPath' "$tmp/crd.json")" \
    .spec.replicas
  jq_true "$tmp/crd.json" '[.. | objects | .["x-kubernetes-validations"]? // empty] | length > 0' \
    || fail "the installed CRD has no CEL rules"
  jq_true "$tmp/crd.json" '.spec.names.shortNames | index("rc") != null' \
    || fail "the CRD lacks the short name rc"

  # What the chart configures for its operator.
  local deploy
  deploy="$(kubectl get deployments -n "$ns_system" \
    -l app.kubernetes.io/instance="$release",app.kubernetes.io/component=operator -o name)"
  [[ "$deploy" == deployment.apps/* && "$deploy" != *$'\n'* ]] \
    || fail "expected one operator Deployment from the chart, found: '$deploy'"
  get_json "$tmp/operator-deployment.json" "$deploy" -n "$ns_system"
  local sa lease webhook_configuration
  sa="$(jq -r '.spec.template.spec.serviceAccountName' "$tmp/operator-deployment.json")"
  lease="$(operator_env LEASE_NAME)"
  webhook_configuration="$(operator_env WEBHOOK_CONFIGURATION)"
  [[ -n "$sa" && -n "$lease" && -n "$webhook_configuration" ]] \
    || fail "the chart's Deployment lacks serviceAccountName, LEASE_NAME or WEBHOOK_CONFIGURATION"
  kubectl scale "$deploy" -n "$ns_system" --replicas 0 >&2

  # A kubeconfig whose only credential is the ServiceAccount's token.
  local token
  token="$(kubectl create token "$sa" -n "$ns_system" --duration 2h)"
  kubectl config view --raw --minify --flatten -o json | jq --arg token "$token" --arg ns "$ns_system" '{
      apiVersion: "v1", kind: "Config", clusters: .clusters,
      users: [{name: "operator", user: {token: $token}}],
      contexts: [{name: "operator", context: {cluster: .clusters[0].name, user: "operator", namespace: $ns}}],
      "current-context": "operator"}' >"$tmp/operator.kubeconfig"
  expect_eq "the operator's kubeconfig authenticates as" \
    "$("$BIN_DIR/kubectl" --kubeconfig "$tmp/operator.kubeconfig" auth whoami -o jsonpath='{.status.userInfo.username}')" \
    "system:serviceaccount:$ns_system:$sa"

  local health_port="" webhook_port="" identity="e2e-local-operator-$$"
  free_port health_port
  free_port webhook_port
  local extra=()
  # The webhook's certificate must also name the loopback address the
  # apiserver is sent to (scenario 5); older operators lack the flag.
  if "$RUST_BIN_DIR/relaycache-operator" run --help | grep -q -- --webhook-extra-sans; then
    extra+=(--webhook-extra-sans "localhost,127.0.0.1")
  else
    log "  note: this operator has no --webhook-extra-sans; scenario 5 cannot pass"
  fi
  KUBECONFIG="$tmp/operator.kubeconfig" \
    POD_NAME="$identity" \
    POD_NAMESPACE="$ns_system" \
    HEALTH_ADDR="127.0.0.1:$health_port" \
    WEBHOOK_ADDR="127.0.0.1:$webhook_port" \
    WEBHOOK_CERT_MODE="$(operator_env WEBHOOK_CERT_MODE)" \
    WEBHOOK_SECRET="$(operator_env WEBHOOK_SECRET)" \
    WEBHOOK_SERVICE="$(operator_env WEBHOOK_SERVICE)" \
    WEBHOOK_CONFIGURATION="$webhook_configuration" \
    LEASE_NAME="$lease" \
    RELAYCACHE_IMAGE="$(operator_env RELAYCACHE_IMAGE)" \
    RUST_LOG="${E2E_OPERATOR_LOG:-info}" \
    "$RUST_BIN_DIR/relaycache-operator" run "${extra[@]}" \
    >"$tmp/relaycache-operator.log" 2>&1 &
  local pid=$!
  track_pid "$pid"
  state_set operator_pid "$pid"
  state_set operator_health "http://127.0.0.1:$health_port"
  state_set webhook_port "$webhook_port"
  state_set webhook_configuration "$webhook_configuration"
  log "  relaycache-operator pid $pid (health :$health_port, webhook :$webhook_port)"

  wait_for "operator /readyz" "$pid" curl -fsS "http://127.0.0.1:$health_port/readyz"
  lease_holder() {
    [[ "$(kubectl get lease "$lease" -n "$ns_system" -o jsonpath='{.spec.holderIdentity}')" == "$identity" ]]
  }
  wait_for "Lease $ns_system/$lease held by $identity" "$pid" lease_holder
  metric_leader() {
    curl -fsS "http://127.0.0.1:$health_port/metrics" | grep -qx 'relaycache_operator_leader 1'
  }
  wait_for "operator metric relaycache_operator_leader 1" "$pid" metric_leader
}
