#!/usr/bin/env bash
# Smoke test for the binaries built by e2e/build-binaries.sh: bring up a
# throw-away control plane on loopback (etcd + kube-apiserver +
# kube-controller-manager), talk to it with kubectl, let kwok run a fake
# node and a pod on it, then tear it all down.
#
#   e2e/smoke-control-plane.sh               run the smoke test
#   KEEP_TMP=1 e2e/smoke-control-plane.sh    keep the temp dir (logs, certs)
#   SMOKE_KWOK=0 e2e/smoke-control-plane.sh  skip the kwok part
#   SMOKE_THEN=FILE e2e/smoke-control-plane.sh
#                                            then source FILE against the same
#                                            control plane (kubectl, log, die,
#                                            wait_for and $kubeconfig are set)
#
# Everything lives in one temp dir: etcd data, generated keys and certs, the
# admin kubeconfig and the process logs.  An EXIT trap stops every process
# this script started and removes the temp dir, whatever the outcome.
# Nothing listens anywhere but 127.0.0.1.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="${E2E_BIN_DIR:-$repo_root/.e2e-bin}"
# Seconds to wait for each component to become ready.
READY_TIMEOUT="${READY_TIMEOUT:-120}"
# Only allocated from inside the apiserver; no traffic is ever sent there.
SERVICE_CIDR="${SERVICE_CIDR:-10.96.0.0/16}"

log() { printf '[smoke] %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

SMOKE_KWOK="${SMOKE_KWOK:-1}"
needed=(etcd kube-apiserver kube-controller-manager kubectl)
[[ "$SMOKE_KWOK" == 0 ]] || needed+=(kwok)
for b in "${needed[@]}"; do
  [[ -x "$BIN_DIR/$b" ]] || die "$BIN_DIR/$b is missing; run e2e/build-binaries.sh first"
done
command -v openssl >/dev/null || die "openssl is required"
command -v curl >/dev/null || die "curl is required"

# ---------------------------------------------------------------------------
# Cleanup: stop our own processes (by PID), then remove the temp dir.
# ---------------------------------------------------------------------------
tmp="$(mktemp -d "${TMPDIR:-/tmp}/relaycache-smoke.XXXXXX")"
pids=()
cleanup() {
  local rc=$? pid
  # Stop in reverse start order so the apiserver goes before etcd.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid="${pids[i]}"
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if ((rc != 0)); then
    for f in "$tmp"/*.log; do
      [[ -f "$f" ]] || continue
      log "---- last lines of $(basename "$f") ----"
      tail -n 25 "$f" >&2 || true
    done
  fi
  if [[ "${KEEP_TMP:-0}" == 1 ]]; then
    log "kept $tmp"
  else
    rm -rf "$tmp"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port VAR: set VAR to a random loopback TCP port nobody answers on and
# that this script has not handed out yet.  (Another process could still
# grab it before we bind; the component would then fail loudly.)
used_ports=" "
free_port() {
  local port
  for _ in $(seq 1 100); do
    port=$((20000 + RANDOM % 30000))
    [[ "$used_ports" == *" $port "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      used_ports+="$port "
      printf -v "$1" '%s' "$port"
      return 0
    fi
  done
  die "no free port found"
}

# wait_for DESCRIPTION PID COMMAND...: retry COMMAND until it succeeds, the
# process PID dies, or READY_TIMEOUT passes.
wait_for() {
  local what="$1" pid="$2"; shift 2
  local deadline=$((SECONDS + READY_TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || die "$what exited early"
    ((SECONDS < deadline)) || die "$what not ready after ${READY_TIMEOUT}s"
    sleep 0.5
  done
  log "$what: ok (t=${SECONDS}s)"
}

SECONDS=0
log "binaries:"
"$BIN_DIR/etcd" --version >&2
"$BIN_DIR/kube-apiserver" --version >&2
"$BIN_DIR/kube-controller-manager" --version >&2
"$BIN_DIR/kubectl" version --client >&2
[[ "$SMOKE_KWOK" == 0 ]] || "$BIN_DIR/kwok" --version >&2
[[ ! -x "$BIN_DIR/helm" ]] || "$BIN_DIR/helm" version --short >&2

# ---------------------------------------------------------------------------
# Keys and certificates
# ---------------------------------------------------------------------------
pki="$tmp/pki"
mkdir -p "$pki"
# openssl chatters on stderr; keep it, and show it only if a step fails.
ossl() {
  openssl "$@" 2>>"$tmp/openssl.out" || { cat "$tmp/openssl.out" >&2; return 1; }
}

# A CA that signs both the serving cert and the admin client cert.
ossl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=relaycache-smoke-ca" \
  -keyout "$pki/ca.key" -out "$pki/ca.crt"

# sign NAME SUBJECT [EXTENSIONS]: key + CSR + certificate signed by the CA.
sign() {
  local name="$1" subj="$2" ext="${3:-}"
  ossl req -newkey rsa:2048 -nodes -subj "$subj" \
    -keyout "$pki/$name.key" -out "$pki/$name.csr"
  local args=(-req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key"
              -CAcreateserial -days 1 -out "$pki/$name.crt")
  if [[ -n "$ext" ]]; then
    printf '%s\n' "$ext" >"$pki/$name.ext"
    args+=(-extfile "$pki/$name.ext")
  fi
  ossl x509 "${args[@]}"
}
sign apiserver "/CN=kube-apiserver" \
  "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
extendedKeyUsage=serverAuth
keyUsage=critical,digitalSignature,keyEncipherment"
# O=system:masters is bound to cluster-admin by the default RBAC policy.
sign admin "/O=system:masters/CN=relaycache-admin" \
  "extendedKeyUsage=clientAuth
keyUsage=critical,digitalSignature,keyEncipherment"

# Service-account token signing key pair.
ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key"
ossl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"

# ---------------------------------------------------------------------------
# etcd
# ---------------------------------------------------------------------------
etcd_client_port=""
free_port etcd_client_port
etcd_peer_port=""
free_port etcd_peer_port
etcd_url="http://127.0.0.1:$etcd_client_port"
"$BIN_DIR/etcd" \
  --name smoke \
  --data-dir "$tmp/etcd" \
  --listen-client-urls "$etcd_url" \
  --advertise-client-urls "$etcd_url" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
  --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
  --initial-cluster "smoke=http://127.0.0.1:$etcd_peer_port" \
  --unsafe-no-fsync \
  --log-level warn \
  >"$tmp/etcd.log" 2>&1 &
pids+=($!)
log "etcd pid $! on $etcd_url"
wait_for etcd "${pids[-1]}" curl -fsS "$etcd_url/health"

# ---------------------------------------------------------------------------
# kube-apiserver
# ---------------------------------------------------------------------------
api_port=""
free_port api_port
api_url="https://127.0.0.1:$api_port"
"$BIN_DIR/kube-apiserver" \
  --etcd-servers "$etcd_url" \
  --bind-address 127.0.0.1 \
  --advertise-address 127.0.0.1 \
  --endpoint-reconciler-type none \
  --secure-port "$api_port" \
  --cert-dir "$tmp/apiserver-certs" \
  --tls-cert-file "$pki/apiserver.crt" \
  --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" \
  --service-account-issuer https://kubernetes.default.svc \
  --service-account-key-file "$pki/sa.pub" \
  --service-account-signing-key-file "$pki/sa.key" \
  --service-cluster-ip-range "$SERVICE_CIDR" \
  --authorization-mode RBAC \
  >"$tmp/kube-apiserver.log" 2>&1 &
pids+=($!)
log "kube-apiserver pid $! on $api_url"

kubeconfig="$tmp/admin.kubeconfig"
cat >"$kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: smoke
  cluster:
    server: $api_url
    certificate-authority: $pki/ca.crt
users:
- name: admin
  user:
    client-certificate: $pki/admin.crt
    client-key: $pki/admin.key
contexts:
- name: smoke
  context:
    cluster: smoke
    user: admin
current-context: smoke
EOF
kubectl() { "$BIN_DIR/kubectl" --kubeconfig "$kubeconfig" "$@"; }
wait_for kube-apiserver "${pids[-1]}" kubectl get --raw /readyz

# ---------------------------------------------------------------------------
# kube-controller-manager (proves it runs against this apiserver: its
# service-account controller creates the "default" ServiceAccount)
# ---------------------------------------------------------------------------
kcm_port=""
free_port kcm_port
"$BIN_DIR/kube-controller-manager" \
  --kubeconfig "$kubeconfig" \
  --bind-address 127.0.0.1 \
  --secure-port "$kcm_port" \
  --cert-dir "$tmp/kcm-certs" \
  --leader-elect=false \
  --service-account-private-key-file "$pki/sa.key" \
  --root-ca-file "$pki/ca.crt" \
  --use-service-account-credentials \
  >"$tmp/kube-controller-manager.log" 2>&1 &
pids+=($!)
log "kube-controller-manager pid $!"

# ---------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------
run() { log "\$ kubectl $*"; kubectl "$@"; }
run get --raw /version
echo
run get ns
# Captured first: piping kubectl straight into head could SIGPIPE it.
resources="$(run api-resources)"
head -n 10 <<<"$resources"
wait_for "default ServiceAccount (kube-controller-manager)" "${pids[-1]}" \
  kubectl get serviceaccount default --namespace default
run get serviceaccounts --namespace default

# ---------------------------------------------------------------------------
# kwok: a fake node and a pod bound to it (no scheduler, no kubelet).
# ---------------------------------------------------------------------------
if [[ "$SMOKE_KWOK" != 0 ]]; then
  # The standalone kwok binary ships no default behaviour ("no stages
  # found"); these two minimal stages are all this test needs: a new node
  # becomes Ready, a pending pod on it becomes Running and Ready.  No IPs
  # are filled in on purpose.
  cat >"$tmp/kwok.yaml" <<'STAGES'
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: smoke-node-ready
spec:
  resourceRef:
    apiGroup: v1
    kind: Node
  selector:
    matchExpressions:
    - key: .status.phase
      operator: DoesNotExist
  next:
    patches:
    - subresource: status
      root: status
      type: merge
      template: |
        phase: Running
        conditions:
        - type: Ready
          status: "True"
          reason: SmokeReady
          message: marked ready by kwok (smoke test)
          lastHeartbeatTime: {{ Now | Quote }}
          lastTransitionTime: {{ Now | Quote }}
        capacity: {cpu: "4", memory: 8Gi, pods: "110"}
        allocatable: {cpu: "4", memory: 8Gi, pods: "110"}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: smoke-pod-running
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: .metadata.deletionTimestamp
      operator: DoesNotExist
    - key: .status.phase
      operator: In
      values: [Pending]
  next:
    patches:
    - subresource: status
      root: status
      type: merge
      template: |
        phase: Running
        startTime: {{ Now | Quote }}
        conditions:
        - type: Ready
          status: "True"
          lastTransitionTime: {{ Now | Quote }}
        containerStatuses:
        {{- range .spec.containers }}
        - name: {{ .name | Quote }}
          image: {{ .image | Quote }}
          imageID: ""
          ready: true
          started: true
          restartCount: 0
          state:
            running:
              startedAt: {{ Now | Quote }}
        {{- end }}
STAGES
  # --config also keeps kwok away from a ~/.kwok/kwok.yaml of the caller's;
  # the node lease keeps kube-controller-manager from declaring the node lost.
  "$BIN_DIR/kwok" \
    --kubeconfig "$kubeconfig" \
    --config "$tmp/kwok.yaml" \
    --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --node-lease-duration-seconds 40 \
    >"$tmp/kwok.log" 2>&1 &
  pids+=($!)
  log "kwok pid $!"
  kubectl apply -f - >&2 <<'MANIFEST'
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-0
  annotations:
    kwok.x-k8s.io/node: fake
  labels:
    type: kwok
---
apiVersion: v1
kind: Pod
metadata:
  name: smoke
  namespace: default
spec:
  nodeName: kwok-node-0
  containers:
  - name: fake
    image: fake.invalid/none:0
MANIFEST
  wait_for "kwok node Ready" "${pids[-1]}" \
    kubectl wait --for=condition=Ready node/kwok-node-0 --timeout=2s
  wait_for "pod on the kwok node Ready" "${pids[-1]}" \
    kubectl wait --for=condition=Ready pod/smoke --namespace default --timeout=2s
  run get nodes -o wide
  run get pods --namespace default -o wide
fi

if [[ -n "${SMOKE_THEN:-}" ]]; then
  # shellcheck source=/dev/null
  source "$SMOKE_THEN"
fi

log "OK: control plane smoke test passed in ${SECONDS}s"
