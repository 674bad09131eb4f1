# shellcheck shell=bash disable=SC2154,SC2317,SC2016  # names from common.sh and state_load; functions called through wait_for; jq variables
# Scenario 6: deleting the RelayCache lets kube-controller-manager's garbage
# collector delete every child through the owner references: both Services,
# the ConfigMap, the StatefulSet, the PodDisruptionBudget and the pods.

scenario_6() {
  local selector="app.kubernetes.io/instance=$rc_name"
  local before
  before="$(kubectl get statefulset,service,configmap,poddisruptionbudget,pods -n "$ns_apps" -l "$selector" -o name)"
  [[ -n "$before" ]] || fail "no children of $rc_name to collect; scenario 2 left none"
  log "  children before: $(tr '\n' ' ' <<<"$before")"
  kubectl delete relaycaches.relaycache.io "$rc_name" -n "$ns_apps" --timeout=60s >&2
  # An apiserver error is not "gone": the listing itself must succeed.
  children_gone() {
    local left
    left="$(kubectl get statefulset,service,configmap,poddisruptionbudget,pods -n "$ns_apps" \
      -l "$selector" -o name)" || return 1
    [[ -z "$left" ]]
  }
  until_true "every child of $rc_name garbage-collected" children_gone
  # The label selector could miss a child that lost its labels: check by name too.
  local child
  for child in "statefulset/$rc_name" "service/$rc_name" "service/$rc_name-peers" \
    "configmap/$rc_name" "poddisruptionbudget/$rc_name"; do
    local found
    found="$(kubectl get "$child" -n "$ns_apps" --ignore-not-found -o name)" \
      || fail "could not check $child"
    [[ -z "$found" ]] || fail "$child survived the deletion of its RelayCache"
  done
  log "  ok: nothing named $rc_name or $rc_name-peers is left in $ns_apps"
}
