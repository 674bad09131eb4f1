# shellcheck shell=bash disable=SC2154  # kubeconfig, repo_root, tmp, pids: set by the sourcing script
# The Helm chart on a real control plane: sourced by
# e2e/smoke-control-plane.sh (SMOKE_THEN=e2e/chart-install.sh, or
# `make e2e-chart`) once etcd, kube-apiserver and kube-controller-manager
# answer. Uses its kubectl, log, die and wait_for.
#
# No operator process runs here (its image cannot be pulled and there is no
# kubelet): this proves what the chart itself promises. The API server
# accepts every object; the operator's pods are admitted by Pod Security
# `restricted` (enforced on the namespace); the ServiceAccount can do what
# the operator needs and no more; a caBundle written by the operator
# survives `helm upgrade`; `helm uninstall` keeps the CRD and RelayCaches;
# a reinstall adopts the kept CRD.

helm() { "$BIN_DIR/helm" --kubeconfig "$kubeconfig" "$@"; }
chart="$repo_root/charts/relaycache-operator"
ns=relaycache-system
release=rc
fullname=rc-relaycache-operator
sa="system:serviceaccount:$ns:$fullname"

log "chart: install into $ns (Pod Security restricted enforced)"
kubectl create namespace "$ns" >&2
kubectl label namespace "$ns" pod-security.kubernetes.io/enforce=restricted \
  pod-security.kubernetes.io/enforce-version=latest >&2
# Enforcement is on: a pod without the restricted settings is refused.
if kubectl run not-restricted -n "$ns" --image=fake.invalid/none:0 --dry-run=server >/dev/null 2>&1; then
  die "chart: namespace $ns admits unrestricted pods; the Pod Security check below would prove nothing"
fi
helm install "$release" "$chart" -n "$ns" >"$tmp/helm-install.txt" \
  || die "chart: helm install failed: $(cat "$tmp/helm-install.txt")"

# The ReplicaSet's pods are created only if Pod Security admits them (no
# scheduler runs, so they stay Pending: admission is what is tested). A
# refusal shows up as an event on the ReplicaSet.
refusal() { kubectl get events -n "$ns" -o jsonpath='{.items[*].message}' | grep -o 'violates PodSecurity[^)]*)' | head -n 1; }
pods_settled() {
  [[ -n "$(refusal)" ]] \
    || [[ "$(kubectl get pods -n "$ns" -l app.kubernetes.io/component=operator --no-headers 2>/dev/null | wc -l)" -ge 2 ]]
}
wait_for "chart: the ReplicaSet created its pods or was refused" "${pids[-1]}" pods_settled
[[ -z "$(refusal)" ]] || die "chart: PodSecurity refused an operator pod: $(refusal)"
helm template "$release" "$chart" -n "$ns" --show-only templates/tests/test-readyz.yaml \
  | kubectl create --dry-run=server -n "$ns" -f - >/dev/null \
  || die "chart: the helm test pod is refused under restricted"
log "chart: operator pods and the helm test pod pass Pod Security restricted"

# What the operator's ServiceAccount may and may not do.
can() { kubectl auth can-i "$@" --as "$sa" 2>/dev/null || true; }
expect() { # expect yes|no VERB RESOURCE [-n NS]
  local want="$1"; shift
  [[ "$(can "$@")" == "$want" ]] || die "chart: RBAC: can-i $* should be $want"
}
expect yes patch "mutatingwebhookconfigurations/$fullname"
expect no patch mutatingwebhookconfigurations/someone-elses
expect yes watch relaycaches.relaycache.io -n team-a
expect yes patch relaycaches.relaycache.io/status -n team-a
expect no create relaycaches.relaycache.io -n team-a
expect yes create statefulsets.apps -n team-a
expect yes delete poddisruptionbudgets.policy -n team-a
expect yes create events.events.k8s.io -n team-a
expect no get pods -n team-a
# Token Secrets: generated (create, never update: a token is never
# overwritten) and copied into the namespaces a RelayCache serves.
expect yes create secrets -n team-a
expect yes delete secrets -n team-a
expect no update secrets -n team-a
expect yes list namespaces
expect no create namespaces
expect yes update "leases/$fullname" -n "$ns"
expect no update leases/other -n "$ns"
expect no create leases -n team-a
expect yes update "secrets/$fullname-webhook-tls" -n "$ns"
expect no update secrets/other -n "$ns"
expect no list nodes
log "chart: RBAC grants the operator's needs and refuses the rest"

# A RelayCache can be stored; "rc" would name ReplicationControllers, so
# always spell the plural.
kubectl create namespace team-a >&2
kubectl apply -f - >&2 <<'MANIFEST'
apiVersion: relaycache.io/v1alpha1
kind: RelayCache
metadata:
  name: demo
  namespace: team-a
spec:
  replicas: 3
MANIFEST

# The operator owns caBundle (self-signed mode); an upgrade must not wipe it.
kubectl patch mutatingwebhookconfiguration "$fullname" --type=json \
  -p '[{"op":"add","path":"/webhooks/0/clientConfig/caBundle","value":"Y2EtZnJvbS10aGUtb3BlcmF0b3I="}]' >&2
helm upgrade "$release" "$chart" -n "$ns" --set networkPolicy.enabled=true \
  --set 'networkPolicy.cacheNamespaces={team-a}' --set dashboard.enabled=true \
  --set webhook.failurePolicy=Fail >"$tmp/helm-upgrade.txt" \
  || die "chart: helm upgrade failed: $(cat "$tmp/helm-upgrade.txt")"
got="$(kubectl get mutatingwebhookconfiguration "$fullname" \
  -o jsonpath='{.webhooks[0].clientConfig.caBundle} {.webhooks[0].failurePolicy}')"
[[ "$got" == "Y2EtZnJvbS10aGUtb3BlcmF0b3I= Fail" ]] \
  || die "chart: after upgrade caBundle/failurePolicy are '$got'"
kubectl get networkpolicy -n team-a "$fullname-cache-members" >/dev/null \
  || die "chart: the cache-member NetworkPolicy is not in team-a"
log "chart: helm upgrade keeps the operator's caBundle and applies new values"

helm uninstall "$release" -n "$ns" >&2
kubectl get crd relaycaches.relaycache.io >/dev/null || die "chart: uninstall deleted the CRD"
kubectl get relaycaches.relaycache.io demo -n team-a >/dev/null || die "chart: uninstall deleted a RelayCache"
if kubectl get mutatingwebhookconfiguration "$fullname" >/dev/null 2>&1; then
  die "chart: uninstall left the webhook configuration"
fi
helm install "$release" "$chart" -n "$ns" >"$tmp/helm-reinstall.txt" \
  || die "chart: reinstall over the kept CRD failed: $(cat "$tmp/helm-reinstall.txt")"
log "chart: uninstall keeps the CRD and RelayCaches; a reinstall adopts the CRD"
