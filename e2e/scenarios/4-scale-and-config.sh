# shellcheck shell=bash disable=SC2154,SC2317,SC2016  # names from common.sh and state_load; functions called through wait_for; jq variables
# Scenario 4: `kubectl scale` of the RelayCache (scale subresource) reaches
# the StatefulSet, the rendered peer list and the status; a config change
# changes the pod template's config hash (so the members roll), and the hash
# is the sha256 of the new ConfigMap text.
#
# `kubectl scale relaycache/NAME` is used, not `rc/NAME`: kubectl resolves
# the short name rc to the built-in ReplicationControllers first.

scenario_4() {
  local target="relaycache/$rc_name"
  kubectl scale "$target" -n "$ns_apps" --replicas 5 >&2
  sts_replicas() {
    [[ "$(kubectl get statefulset "$rc_name" -n "$ns_apps" -o jsonpath='{.spec.replicas}')" == 5 ]]
  }
  until_true "StatefulSet spec.replicas 5" sts_replicas
  peers_are_5() { [[ "$(peers "$ns_apps")" == "$(expected_peers "$ns_apps" 5)" ]]; }
  until_true "ConfigMap peer list of 5 members" peers_are_5
  ready_5() { [[ "$(ready_replicas "$ns_apps")" == 5 ]]; }
  until_true "RelayCache status.readyReplicas 5" ready_5
  local scale
  scale="$(kubectl get --raw "/apis/relaycache.io/v1alpha1/namespaces/$ns_apps/relaycaches/$rc_name/scale")"
  expect_eq "scale subresource spec/status replicas" \
    "$(jq -r '"\(.spec.replicas)/\(.status.replicas)"' <<<"$scale")" 5/5
  expect_eq "scale subresource selector" "$(jq -r .status.selector <<<"$scale")" \
    "$(kubectl get statefulset "$rc_name" -n "$ns_apps" -o json \
       | jq -r '.spec.selector.matchLabels | to_entries | map("\(.key)=\(.value)") | join(",")')"

  local old_hash new_hash
  old_hash="$(config_hash "$ns_apps")"
  [[ -n "$old_hash" ]] || fail "the pod template has no relaycache.io/config-hash"
  kubectl patch relaycaches.relaycache.io "$rc_name" -n "$ns_apps" --type merge \
    -p '{"spec":{"cache":{"ttl":"2h"}}}' >&2
  hash_changed() { [[ "$(config_hash "$ns_apps")" != "$old_hash" ]]; }
  until_true "config hash changed after spec.cache.ttl 1h -> 2h" hash_changed
  new_hash="$(config_hash "$ns_apps")"
  expect_eq "new config hash = sha256 of the ConfigMap" "$new_hash" \
    "$(rendered_config "$ns_apps" | sha256sum | cut -d' ' -f1)"
  expect_eq "rendered cache.ttl" \
    "$(rendered_config "$ns_apps" | python3 -c 'import sys, yaml; print(yaml.safe_load(sys.stdin)["cache"]["ttl"])')" \
    2h
  expect_eq "peer list kept by the config change" "$(peers "$ns_apps")" "$(expected_peers "$ns_apps" 5)"
}
