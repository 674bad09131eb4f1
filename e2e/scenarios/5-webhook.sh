# shellcheck shell=bash disable=SC2154,SC2317,SC2016  # names from common.sh and state_load; functions called through wait_for; jq variables
# Scenario 5: a pod labelled relaycache.io/inject, created through the
# apiserver, comes back with the relaycache sidecar: the apiserver calls the
# local operator's webhook over TLS, trusting the caBundle the operator
# patched into the chart's MutatingWebhookConfiguration. An unlabelled pod
# is untouched.
#
# The operator runs outside the cluster, so the chart's clientConfig.service
# is replaced by url: https://localhost:PORT/mutate-pods, and failurePolicy is
# set to Fail so that an unreachable or broken webhook refuses the pod
# instead of admitting it without a sidecar (Ignore, the chart's default,
# would hide the failure). The namespace enforces Pod Security "restricted",
# which runs after mutation: the injected container must pass it too.

# app_pod NAME [LABELS-YAML]: a restricted-compliant pod manifest.
app_pod() {
  cat <<MANIFEST
apiVersion: v1
kind: Pod
metadata:
  name: $1
  labels:
    app: e2e-client
${2:-}
spec:
  securityContext:
    runAsNonRoot: true
    runAsUser: 10001
    seccompProfile: {type: RuntimeDefault}
  containers:
  - name: app
    image: fake.invalid/app:1
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL]}
MANIFEST
}

scenario_5() {
  state_load
  new_namespace "$ns_inject"
  apply_example "$ns_inject"
  until_true "ConfigMap $ns_inject/$rc_name rendered" kubectl get configmap "$rc_name" -n "$ns_inject"

  kubectl patch mutatingwebhookconfiguration "$webhook_configuration" --type json -p "[
      {\"op\": \"remove\", \"path\": \"/webhooks/0/clientConfig/service\"},
      {\"op\": \"add\", \"path\": \"/webhooks/0/clientConfig/url\", \"value\": \"https://localhost:$webhook_port/mutate-pods\"},
      {\"op\": \"replace\", \"path\": \"/webhooks/0/failurePolicy\", \"value\": \"Fail\"}]" >&2
  ca_bundle() {
    [[ -n "$(kubectl get mutatingwebhookconfiguration "$webhook_configuration" \
      -o jsonpath='{.webhooks[0].clientConfig.caBundle}')" ]]
  }
  until_true "caBundle patched by the operator" ca_bundle

  # A server-side dry run goes through admission; retried until the webhook
  # answers (the operator may still be writing its certificate).
  local labels="    relaycache.io/inject: $rc_name"
  injected_dry_run() {
    app_pod injected "$labels" | kubectl create -n "$ns_inject" --dry-run=server -o json -f - \
      >"$tmp/injected-dry-run.json"
  }
  until_true "the apiserver admits a labelled pod through the webhook" injected_dry_run

  app_pod injected "$labels" | kubectl create -n "$ns_inject" -f - >&2
  app_pod plain | kubectl create -n "$ns_inject" -f - >&2
  get_json "$tmp/injected.json" pod injected -n "$ns_inject"
  get_json "$tmp/plain.json" pod plain -n "$ns_inject"

  local sidecar
  sidecar="$(jq -c '[.spec.initContainers[]? | select(.name == "relaycache")] | first // empty' "$tmp/injected.json")"
  [[ -n "$sidecar" ]] \
    || fail "the labelled pod has no relaycache init container: $(jq -c '.spec | {initContainers, containers}' "$tmp/injected.json")"
  expect_eq "sidecar restartPolicy (native sidecar)" "$(jq -r .restartPolicy <<<"$sidecar")" Always
  jq_true "$tmp/injected.json" '.metadata.annotations["relaycache.io/injected"] != null' \
    || fail "the labelled pod lacks the relaycache.io/injected annotation"
  local base_url
  base_url="$(jq -r '.spec.containers[] | select(.name == "app") | .env[]? | select(.name == "ANTHROPIC_BASE_URL") | .value' \
    "$tmp/injected.json")"
  [[ "$base_url" == *127.0.0.1:8787* ]] \
    || fail "the app container's ANTHROPIC_BASE_URL is '$base_url', not the sidecar on 127.0.0.1:8787"
  log "  ok: app container ANTHROPIC_BASE_URL=$base_url"

  expect_eq "unlabelled pod init containers" "$(jq -c '.spec.initContainers // []' "$tmp/plain.json")" '[]'
  expect_eq "unlabelled pod annotation relaycache.io/injected" \
    "$(jq -r '.metadata.annotations["relaycache.io/injected"] // "none"' "$tmp/plain.json")" none
  expect_eq "unlabelled pod containers" "$(jq -c '[.spec.containers[] | {name, env}]' "$tmp/plain.json")" \
    '[{"name":"app","env":null}]'
}
