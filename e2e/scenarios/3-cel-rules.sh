# shellcheck shell=bash disable=SC2154,SC2317,SC2016  # names from common.sh and state_load; functions called through wait_for; jq variables
# Scenario 3: the CRD's CEL rules refuse an invalid RelayCache, `kubectl
# apply` fails and prints the rule's message, and nothing is stored.

# refused NAME MESSAGE SPEC-YAML: applying the RelayCache fails with MESSAGE.
refused() {
  local name="$1" message="$2" spec="$3" out
  if out="$(kubectl apply -n "$ns_apps" -f - 2>&1 <<MANIFEST
apiVersion: relaycache.io/v1alpha1
kind: RelayCache
metadata:
  name: $name
spec:
$spec
MANIFEST
)"; then
    fail "kubectl apply accepted the invalid RelayCache $name: $out"
  fi
  grep -qF -- "$message" <<<"$out" \
    || fail "kubectl apply refused $name without the rule's message '$message'; it printed: $out"
  if kubectl get relaycaches.relaycache.io "$name" -n "$ns_apps" >/dev/null 2>&1; then
    fail "the refused RelayCache $name was stored"
  fi
  log "  ok: refused with: $(grep -oF -- "$message" <<<"$out")"
}

scenario_3() {
  kubectl get namespace "$ns_apps" >/dev/null 2>&1 || new_namespace "$ns_apps"
  refused quorum-too-large \
    "replication.readQuorum must not exceed replication.replicaCount" \
    "  replicas: 3
  mode: ha
  replication:
    replicaCount: 2
    readQuorum: 3"
  refused member-quorum-too-large \
    "replication.memberCountQuorum must not exceed replicas" \
    "  replicas: 2
  mode: ha
  replication:
    memberCountQuorum: 3"
  # 53 characters: one more than NAME-<revision hash> leaves room for.
  refused "a$(printf 'b%.0s' {1..52})" \
    "metadata.name must be at most 52 characters" \
    "  replicas: 1"
  refused reserve-relative \
    "a file:// reserve.url needs an absolute path" \
    "  reserve:
    url: file://relative/dir"
  refused not-http \
    "upstreams[].url must be an http:// or https:// URL" \
    "  upstreams:
    - name: anthropic
      url: ftp://api.anthropic.com"
}
