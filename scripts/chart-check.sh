#!/usr/bin/env bash
# Checks of the Helm chart and the packaging examples, run by `make chart-check`
# (part of `make test`). No cluster needed: helm lints and renders the chart
# offline and scripts/chart_check.py asserts on what it rendered.
#
#   1. the chart's CRD copy matches crds/ (scripts/sync-chart-crds.sh --check)
#   2. helm lint --strict, default values and every optional part on
#   3. helm template in several configurations, asserted object by object
#   4. values the schema must reject are rejected, with the schema's message
#   5. the dashboard only queries metrics the proxy exports (a live scrape)
#   6. examples/app-deployment.yaml opts in to a RelayCache that
#      examples/relaycache.yaml defines, and passes the restricted profile
#   7. the docker-compose example's configs pass `relaycache config validate`
#      and agree with each other (scripts/compose_check.py)
#
# HELM (default .e2e-bin/helm) and RELAYCACHE (default target/debug/relaycache,
# brought up to date with cargo) can be overridden from the environment.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM="${HELM:-.e2e-bin/helm}"
RELAYCACHE_SET="${RELAYCACHE:-}"
RELAYCACHE="${RELAYCACHE:-target/debug/relaycache}"
CHART=charts/relaycache-operator
KUBE_VERSION=1.37.1
NS=relaycache-system
RELEASE=rc

[[ -x "$HELM" ]] || { echo "chart-check: $HELM not found; run 'e2e/build-binaries.sh helm'" >&2; exit 1; }
command -v python3 >/dev/null || { echo "chart-check: python3 is needed" >&2; exit 1; }
python3 -c 'import yaml' 2>/dev/null || { echo "chart-check: PyYAML is missing; run 'make test-deps'" >&2; exit 1; }

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }
check() { python3 scripts/chart_check.py "$@"; }
render() { # render OUT [helm args...]
  local out="$1"; shift
  "$HELM" template "$RELEASE" "$CHART" --namespace "$NS" --kube-version "$KUBE_VERSION" "$@" >"$out"
}

ALL_ON=(
  --set webhook.certManager.enabled=true
  --set networkPolicy.enabled=true
  --set 'networkPolicy.monitoringNamespaces={monitoring}'
  --set 'networkPolicy.cacheNamespaces={team-a,team-b}'
  --set 'networkPolicy.clientNamespaces={apps,team-a}'
  --set metrics.serviceMonitor.enabled=true
  --set metrics.podMonitor.enabled=true
  --set metrics.sidecarPodMonitor.enabled=true
  --set dashboard.enabled=true
)

step "CRD copy in the chart"
scripts/sync-chart-crds.sh --check
echo "  ok: chart CRD copy is current"

step "helm lint --strict"
"$HELM" lint --strict "$CHART" --kube-version "$KUBE_VERSION" >"$work/lint.txt" || { cat "$work/lint.txt"; exit 1; }
"$HELM" lint --strict "$CHART" --kube-version "$KUBE_VERSION" "${ALL_ON[@]}" >"$work/lint-all.txt" \
  || { cat "$work/lint-all.txt"; exit 1; }
echo "  ok: lint passes with defaults and with cert-manager, NetworkPolicy, monitors and dashboard on"

step "helm template: defaults (self-signed certificates)"
render "$work/default.yaml"
check manifests "$work/default.yaml" --namespace "$NS"

step "helm template: cert-manager, NetworkPolicy, ServiceMonitor, both PodMonitors, dashboard"
render "$work/all.yaml" "${ALL_ON[@]}"
check manifests "$work/all.yaml" --namespace "$NS" --cert-manager --network-policy \
  --monitoring-ns monitoring --cache-ns team-a team-b --client-ns apps team-a --service-monitor --pod-monitor \
  --sidecar-pod-monitor --dashboard

step "helm template: only the sidecar PodMonitor"
render "$work/sidecar-monitor.yaml" --set metrics.sidecarPodMonitor.enabled=true
check manifests "$work/sidecar-monitor.yaml" --namespace "$NS" --sidecar-pod-monitor

step "helm template: one replica, Fail policy, no CRD, extra excluded namespace, own ServiceAccount"
render "$work/small.yaml" --set replicaCount=1 --set webhook.failurePolicy=Fail --set crds.install=false \
  --set 'webhook.excludeNamespaces={istio-system}' --set serviceAccount.name=relaycache-op \
  --set networkPolicy.enabled=true
check manifests "$work/small.yaml" --namespace "$NS" --replicas 1 --failure-policy Fail --no-crds \
  --excluded-ns istio-system --service-account relaycache-op --network-policy

step "helm template: cert-manager with an existing ClusterIssuer"
render "$work/issuer.yaml" --set webhook.certManager.enabled=true \
  --set webhook.certManager.issuerRef.name=corp-ca --set webhook.certManager.issuerRef.kind=ClusterIssuer
check manifests "$work/issuer.yaml" --namespace "$NS" --cert-manager --external-issuer
if grep -q '^kind: Issuer$' "$work/issuer.yaml"; then
  echo "chart-check FAILED: an Issuer is rendered although issuerRef names one" >&2; exit 1
fi
echo "  ok: no Issuer of our own when issuerRef is set"

step "NOTES.txt"
# helm template does not print NOTES.txt; render it as a ConfigMap from a
# scratch copy of the chart.
cp -r "$CHART" "$work/notes-chart"
{ echo '{{- define "notes-check.text" }}'; cat "$CHART/templates/NOTES.txt"; echo '{{- end }}'; } \
  >"$work/notes-chart/templates/_notes_check.tpl"
cat >"$work/notes-chart/templates/notes-check.yaml" <<'EOF'
apiVersion: v1
kind: ConfigMap
metadata:
  name: notes-check
data:
  notes: |
    {{- include "notes-check.text" . | nindent 4 }}
EOF
"$HELM" template "$RELEASE" "$work/notes-chart" --namespace "$NS" --kube-version "$KUBE_VERSION" \
  --show-only templates/notes-check.yaml >"$work/notes.yaml"
check notes "$work/notes.yaml" --namespace "$NS"

step "values the schema must reject"
reject() { # reject EXPECTED-MESSAGE helm-args...
  local want="$1"; shift
  if render "$work/rejected.yaml" "$@" 2>"$work/rejected.err"; then
    echo "chart-check FAILED: values $* were accepted" >&2; exit 1
  fi
  if ! grep -qF "$want" "$work/rejected.err"; then
    echo "chart-check FAILED: values $* were rejected without '$want':" >&2
    cat "$work/rejected.err" >&2; exit 1
  fi
  echo "  ok: $* -> $want"
}
reject "at '/replicaCount': minimum: got 0, want 1" --set replicaCount=0
reject "at '/webhook/failurePolicy': value must be one of 'Ignore', 'Fail'" --set webhook.failurePolicy=Maybe
reject "additional properties 'replicas' not allowed" --set replicas=3
reject "additional properties 'enable' not allowed" --set dashboard.enable=true
reject "at '/image/pullPolicy': value must be one of" --set image.pullPolicy=Sometimes
reject "at '/image/repository'" --set image.repository=Relaycache/Operator
reject "at '/webhook/timeoutSeconds': maximum: got 31, want 30" --set webhook.timeoutSeconds=31
reject "at '/webhook/nativeSidecars': value must be one of 'auto', 'always', 'never'" --set webhook.nativeSidecars=yes
reject "at '/webhook/certManager/issuerRef/kind': value must be one of 'Issuer', 'ClusterIssuer'" \
  --set webhook.certManager.issuerRef.name=x --set webhook.certManager.issuerRef.kind=CA
reject "at '/metrics/serviceMonitor/interval'" --set metrics.serviceMonitor.interval=often
reject "at '/metrics/sidecarPodMonitor/interval'" --set metrics.sidecarPodMonitor.interval=often
reject "additional properties 'enable' not allowed" --set metrics.sidecarPodMonitor.enable=true
reject "at '/networkPolicy/cacheNamespaces/0'" --set 'networkPolicy.cacheNamespaces={Team_A}'
reject "at '/podAntiAffinity': value must be one of 'soft', 'hard', 'none'" --set podAntiAffinity=always
reject "podDisruptionBudget.minAvailable (2) must be below replicaCount (2)" --set podDisruptionBudget.minAvailable=2

step "dashboard metric names against a live relaycache /metrics"
if [[ -z "${RELAYCACHE_SET:-}" ]]; then
  # Up to date after `make unit`, so this is a no-op inside `make test`;
  # run alone it keeps the binary from lagging behind the sources.
  # All targets: the feature set of make unit's test build, so nothing recompiles.
  cargo build -q --workspace --all-targets
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
listen_port="$(free_port)"
admin_port="$(free_port)"
cat >"$work/metrics.yaml" <<EOF
server:
  listen: "127.0.0.1:$listen_port"
  admin_listen: "127.0.0.1:$admin_port"
upstreams:
  - name: unused
    url: "http://127.0.0.1:9"
EOF
"$RELAYCACHE" serve --config "$work/metrics.yaml" >"$work/relaycache.log" 2>&1 &
pids+=($!)
scraped=0
for _ in $(seq 300); do
  if curl -fsS -o "$work/metrics.txt" "http://127.0.0.1:$admin_port/metrics" 2>/dev/null; then
    scraped=1; break
  fi
  sleep 0.1
done
if ((!scraped)); then
  echo "chart-check FAILED: relaycache did not serve /metrics; its log:" >&2
  cat "$work/relaycache.log" >&2; exit 1
fi
check dashboard-metrics "$CHART/dashboards/relaycache.json" "$work/metrics.txt"
# A query that only sees cache members (filtered on their job) is caught.
python3 - "$CHART/dashboards/relaycache.json" >"$work/members-only.json" <<'PY'
import json, sys
dash = json.load(open(sys.argv[1]))
panels = [p for top in dash["panels"] for p in [top] + top.get("panels", [])]
target = next(t for p in panels for t in p.get("targets", []))
target["expr"] = target["expr"].replace('relaycache_role=~"$role"', 'job="relaycache-members"', 1)
json.dump(dash, sys.stdout)
PY
if check dashboard-metrics "$work/members-only.json" "$work/metrics.txt" 2>"$work/members-only.err" >/dev/null; then
  echo "chart-check FAILED: a dashboard query without the role filter was accepted" >&2; exit 1
fi
grep -qF 'relaycache_role' "$work/members-only.err" \
  || { echo "chart-check FAILED: role-filter rejection without the reason:" >&2; cat "$work/members-only.err" >&2; exit 1; }
echo "  ok: a query that would hide the sidecars (or the members) is rejected"

step "examples/app-deployment.yaml"
check app-example examples/app-deployment.yaml --relaycaches examples/relaycache.yaml
# The cross-reference must be able to fail: a label naming another
# RelayCache (the bug this check was written for) is caught.
sed 's|relaycache.io/inject: .*|relaycache.io/inject: no-such-cache|' examples/app-deployment.yaml \
  >"$work/app-wrong-label.yaml"
if check app-example "$work/app-wrong-label.yaml" --relaycaches examples/relaycache.yaml \
  2>"$work/app-wrong-label.err" >/dev/null; then
  echo "chart-check FAILED: an inject label naming no example RelayCache was accepted" >&2; exit 1
fi
grep -qF "names no RelayCache" "$work/app-wrong-label.err" \
  || { echo "chart-check FAILED: wrong-label rejection without the reason:" >&2; cat "$work/app-wrong-label.err" >&2; exit 1; }
echo "  ok: a label naming no example RelayCache is rejected"

step "docker-compose example"
for f in examples/compose/*.yaml; do
  # The members read the peer token from the environment; any value proves the file.
  RELAYCACHE_PEER_TOKEN=chart-check "$RELAYCACHE" config validate "$f" >/dev/null
  echo "  ok: relaycache config validate $f"
done
python3 scripts/compose_check.py examples/docker-compose.yaml

printf '\nchart-check: all checks passed\n'
