# shellcheck shell=bash disable=SC2154,SC2317,SC2016  # names from common.sh and state_load; functions called through wait_for; jq variables
# Scenario 2: `kubectl apply -f examples/relaycache.yaml`. The operator
# creates the headless and client Services, the ConfigMap, the StatefulSet
# and the PodDisruptionBudget, each owned by the RelayCache and labelled as
# docs/kubernetes.md says; the pods pass Pod Security "restricted" (enforced on
# the namespace), turn Ready (kwok, or real kubelets), and the RelayCache's
# status follows: readyReplicas, the Ready condition, observedGeneration.

# owned_child KIND NAME: the child exists, the RelayCache is its controller,
# and it carries the labels docs/kubernetes.md documents.
owned_child() {
  local kind="$1" name="$2" file="$tmp/child-$1-$2.json"
  until_true "$kind/$name created" kubectl get "$kind" "$name" -n "$ns_apps"
  get_json "$file" "$kind" "$name" -n "$ns_apps"
  jq_true "$file" '[.metadata.ownerReferences[]?
      | select(.apiVersion == "relaycache.io/v1alpha1" and .kind == "RelayCache"
               and .name == $name and .uid == $uid and .controller == true)] | length == 1' \
    --arg name "$rc_name" --arg uid "$rc_uid" \
    || fail "$kind/$name is not controlled by RelayCache $rc_name ($rc_uid): $(jq -c '.metadata.ownerReferences' "$file")"
  jq_true "$file" '.metadata.labels as $l | $want | to_entries | all($l[.key] == .value)' \
    --argjson want "$member_labels" \
    || fail "$kind/$name labels $(jq -c '.metadata.labels' "$file") lack $member_labels"
  log "  ok: $kind/$name is owned by the RelayCache and labelled"
}

scenario_2() {
  new_namespace "$ns_apps"
  apply_example "$ns_apps"
  rc_uid="$(kubectl get relaycaches.relaycache.io "$rc_name" -n "$ns_apps" -o jsonpath='{.metadata.uid}')"
  member_labels="$(jq -nc --arg name "$rc_name" '{
      "app.kubernetes.io/name": "relaycache", "app.kubernetes.io/instance": $name,
      "app.kubernetes.io/component": "cache", "app.kubernetes.io/managed-by": "relaycache-operator"}')"

  owned_child service "$rc_name-peers"
  owned_child service "$rc_name"
  owned_child configmap "$rc_name"
  owned_child statefulset "$rc_name"
  owned_child poddisruptionbudget "$rc_name"

  local peers_svc="$tmp/child-service-$rc_name-peers.json" client_svc="$tmp/child-service-$rc_name.json"
  expect_eq "headless Service clusterIP" "$(jq -r .spec.clusterIP "$peers_svc")" None
  expect_eq "headless Service publishNotReadyAddresses" "$(jq -r .spec.publishNotReadyAddresses "$peers_svc")" true
  expect_eq "headless Service ports" "$(jq -c '[.spec.ports[] | [.name, .port]]' "$peers_svc")" '[["grpc",3320]]'
  expect_eq "client Service ports" "$(jq -c '[.spec.ports[] | [.name, .port]] | sort' "$client_svc")" \
    '[["grpc",3320],["http",8787]]'
  local sts="$tmp/child-statefulset-$rc_name.json"
  expect_eq "StatefulSet serviceName" "$(jq -r .spec.serviceName "$sts")" "$rc_name-peers"
  expect_eq "StatefulSet replicas" "$(jq -r .spec.replicas "$sts")" 3
  expect_eq "peer list" "$(peers "$ns_apps")" "$(expected_peers "$ns_apps" 3)"
  expect_eq "pod template config hash" "$(config_hash "$ns_apps")" \
    "$(rendered_config "$ns_apps" | sha256sum | cut -d' ' -f1)"

  pods_ready() {
    [[ "$(kubectl get pods -n "$ns_apps" -l app.kubernetes.io/instance="$rc_name" \
      -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' \
      | grep -c True)" == 3 ]]
  }
  until_true "3 cache pods Ready (admitted under restricted)" pods_ready
  status_ready() {
    [[ "$(ready_replicas "$ns_apps")" == 3 ]] && kubectl wait --for=condition=Ready \
      "relaycaches.relaycache.io/$rc_name" -n "$ns_apps" --timeout=1s
  }
  until_true "RelayCache status.readyReplicas 3 and condition Ready" status_ready
  get_json "$tmp/rc.json" relaycaches.relaycache.io "$rc_name" -n "$ns_apps"
  expect_eq "status.observedGeneration" "$(jq -r .status.observedGeneration "$tmp/rc.json")" \
    "$(jq -r .metadata.generation "$tmp/rc.json")"
  expect_eq "status.replicas" "$(jq -r .status.replicas "$tmp/rc.json")" 3
}
