# shellcheck shell=bash disable=SC2119,SC2120  # cp_tail_logs: no arguments means every log
# A throw-away Kubernetes control plane on loopback, for the scripts in e2e/
# (smoke-control-plane.sh, run-scenarios.sh, and chart-install.sh through
# the smoke script). Source it, then:
#
#   cp_init TAG                  temp dir, logging prefix, teardown trap
#   cp_start_control_plane       PKI, etcd, kube-apiserver (admin kubeconfig),
#                                kube-controller-manager
#   cp_start_scheduler           kube-scheduler (binds pods to nodes)
#   cp_start_kwok                kwok with minimal stages and one fake node
#   cp_use_kubeconfig FILE       talk to an existing cluster instead
#
# It defines kubectl (bound to $kubeconfig), log, die, free_port, wait_for
# and track_pid, and sets repo_root, BIN_DIR, tmp and kubeconfig.
#
# Everything lives in one temp dir: etcd data, keys and certificates, the
# admin kubeconfig and one log file per process. The EXIT trap stops every
# process registered with track_pid (TERM, then KILL after 10 s; in reverse
# start order so the apiserver goes before etcd), prints the last lines of
# each log when the script failed, and removes the temp dir (KEEP_TMP=1
# keeps it). Process ids are kept in a file as well as in the pids array, so
# processes started from a subshell are stopped too. Nothing listens on
# anything but 127.0.0.1.

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN_DIR="${E2E_BIN_DIR:-$repo_root/.e2e-bin}"
# Seconds each wait may take before the script gives up.
READY_TIMEOUT="${READY_TIMEOUT:-120}"
# Only allocated from inside the apiserver; no traffic is ever sent there.
SERVICE_CIDR="${SERVICE_CIDR:-10.96.0.0/16}"
# Where kube-apiserver listens (and where kubeconfigs point) and what it
# advertises. The real-pod node (lib/node.sh) sets both to its bridge's
# address so pods reach the apiserver through the "kubernetes" Service;
# loopback otherwise.
CP_BIND_ADDRESS="${CP_BIND_ADDRESS:-127.0.0.1}"
CP_ADVERTISE_ADDRESS="${CP_ADVERTISE_ADDRESS:-127.0.0.1}"
# Extra subjectAltName entries for the apiserver's certificate (",IP:..."),
# and extra kube-apiserver flags (an array the caller may fill).
CP_EXTRA_SANS="${CP_EXTRA_SANS:-}"
cp_apiserver_extra_args=()
# Name of the fake node cp_start_kwok creates.
KWOK_NODE="${KWOK_NODE:-kwok-node-0}"

LOG_TAG="${LOG_TAG:-e2e}"
log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

tmp=""
pids=()
kubeconfig=""

# cp_require NAME...: every named binary is in BIN_DIR.
cp_require() {
  local b
  for b in "$@"; do
    [[ -x "$BIN_DIR/$b" ]] || die "$BIN_DIR/$b is missing; run e2e/build-binaries.sh (or make e2e-bin) first"
  done
}

# cp_init TAG: log prefix, temp dir and the teardown trap.
cp_init() {
  LOG_TAG="$1"
  tmp="$(mktemp -d "${TMPDIR:-/tmp}/relaycache-$LOG_TAG.XXXXXX")"
  : >"$tmp/pids"
  : >"$tmp/ports"
  trap cp_teardown EXIT
  trap 'exit 130' INT TERM
}

# track_pid PID: stop this process at teardown.
track_pid() {
  pids+=("$1")
  printf '%s\n' "$1" >>"$tmp/pids"
}

# cp_stop_pid PID: TERM, up to 10 s of grace, then KILL.
cp_stop_pid() {
  local pid="$1"
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# cp_tail_logs [NAME...]: the last lines of the named logs ($tmp/NAME.log),
# or of every log.
cp_tail_logs() {
  local lines="${TAIL_LINES:-25}" f name
  local files=()
  if (($#)); then
    for name in "$@"; do files+=("$tmp/$name.log"); done
  else
    files=("$tmp"/*.log)
  fi
  for f in "${files[@]}"; do
    if [[ -f "$f" ]]; then
      log "---- last $lines lines of $(basename "$f") ----"
      tail -n "$lines" "$f" >&2 || true
    else
      log "---- no $(basename "$f") (not started by this script) ----"
    fi
  done
}

# Hooks run at teardown before the processes stop (e.g. uninstalling from an
# existing cluster); each is a command name.
teardown_hooks=()

cp_teardown() {
  local rc=$? hook pid
  trap - EXIT
  for hook in "${teardown_hooks[@]}"; do "$hook" || true; done
  if [[ -n "$tmp" && -f "$tmp/pids" ]]; then
    # Reverse start order; the file also holds ids registered by subshells.
    while read -r pid; do
      [[ -n "$pid" ]] && cp_stop_pid "$pid"
    done < <(tac "$tmp/pids")
    ((rc == 0)) || cp_tail_logs
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then
      log "kept $tmp"
    else
      rm -rf "$tmp"
    fi
  fi
  exit "$rc"
}

# free_port VAR: set VAR to a random loopback TCP port nobody answers on and
# that this script has not handed out yet. The ports come from 10000-29999,
# below Linux's ephemeral range (32768-60999 by default), so an outgoing
# connection's local port cannot take one between here and the bind. (Another
# process could still bind it first; the component would then fail loudly.)
# (The local has an odd name so it cannot shadow the caller's VAR.)
free_port() {
  local _free_port_candidate
  for _ in $(seq 1 100); do
    _free_port_candidate=$((10000 + RANDOM % 20000))
    grep -qx "$_free_port_candidate" "$tmp/ports" && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$_free_port_candidate") 2>/dev/null; then
      printf '%s\n' "$_free_port_candidate" >>"$tmp/ports"
      printf -v "$1" '%s' "$_free_port_candidate"
      return 0
    fi
  done
  die "no free port found"
}

# wait_for DESCRIPTION PIDS COMMAND...: retry COMMAND until it succeeds, one
# of the processes PIDS (comma-separated) dies, or READY_TIMEOUT passes.
# PIDS "-" watches no process.
wait_for() {
  local what="$1" pid_list="$2"; shift 2
  local deadline=$((SECONDS + READY_TIMEOUT)) pid
  local watched=()
  [[ "$pid_list" == - ]] || IFS=, read -ra watched <<<"$pid_list"
  until "$@" >/dev/null 2>&1; do
    for pid in "${watched[@]}"; do
      kill -0 "$pid" 2>/dev/null || die "$what: process $pid exited early"
    done
    ((SECONDS < deadline)) || die "$what: not reached after ${READY_TIMEOUT}s"
    sleep 0.5
  done
  log "$what: ok (t=${SECONDS}s)"
}

# Every request and every curl has its own deadline, so a call that hangs
# cannot stall a wait_for loop past READY_TIMEOUT (wait_for only checks its
# deadline between attempts).
E2E_REQUEST_TIMEOUT="${E2E_REQUEST_TIMEOUT:-30s}"
E2E_CURL_TIMEOUT="${E2E_CURL_TIMEOUT:-15}"
kubectl() { "$BIN_DIR/kubectl" --kubeconfig "$kubeconfig" --request-timeout "$E2E_REQUEST_TIMEOUT" "$@"; }
curl() { command curl --connect-timeout 5 --max-time "$E2E_CURL_TIMEOUT" "$@"; }

# cp_use_kubeconfig FILE: run against an existing cluster.
cp_use_kubeconfig() {
  [[ -f "$1" ]] || die "kubeconfig $1 does not exist"
  kubeconfig="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
  kubectl get --raw /readyz >/dev/null || die "the cluster of $kubeconfig does not answer /readyz"
  log "using the existing cluster of $kubeconfig ($(kubectl config current-context))"
}

# ---------------------------------------------------------------------------
# Keys and certificates
# ---------------------------------------------------------------------------
pki=""
# openssl chatters on stderr; keep it, and show it only if a step fails.
ossl() {
  openssl "$@" 2>>"$tmp/openssl.out" || { cat "$tmp/openssl.out" >&2; return 1; }
}

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

cp_pki() {
  command -v openssl >/dev/null || die "openssl is required"
  pki="$tmp/pki"
  mkdir -p "$pki"
  # A CA that signs both the serving cert and the admin client cert.
  ossl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=relaycache-$LOG_TAG-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt"
  sign apiserver "/CN=kube-apiserver" \
    "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc$CP_EXTRA_SANS
extendedKeyUsage=serverAuth
keyUsage=critical,digitalSignature,keyEncipherment"
  # O=system:masters is bound to cluster-admin by the default RBAC policy.
  sign admin "/O=system:masters/CN=relaycache-admin" \
    "extendedKeyUsage=clientAuth
keyUsage=critical,digitalSignature,keyEncipherment"
  # Service-account token signing key pair.
  ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key"
  ossl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
}

# ---------------------------------------------------------------------------
# etcd, kube-apiserver, kube-controller-manager
# ---------------------------------------------------------------------------
cp_start_etcd() {
  command -v curl >/dev/null || die "curl is required"
  local client_port="" peer_port=""
  free_port client_port
  free_port peer_port
  etcd_url="http://127.0.0.1:$client_port"
  "$BIN_DIR/etcd" \
    --name "$LOG_TAG" \
    --data-dir "$tmp/etcd" \
    --listen-client-urls "$etcd_url" \
    --advertise-client-urls "$etcd_url" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "$LOG_TAG=http://127.0.0.1:$peer_port" \
    --unsafe-no-fsync \
    --log-level warn \
    >"$tmp/etcd.log" 2>&1 &
  track_pid $!
  log "etcd pid $! on $etcd_url"
  wait_for etcd "$!" curl -fsS "$etcd_url/health"
}

cp_start_apiserver() {
  local port=""
  free_port port
  local host="$CP_BIND_ADDRESS"
  [[ "$host" != 0.0.0.0 ]] || host=127.0.0.1
  api_url="https://$host:$port"
  # A loopback advertise address is no use to anybody as the "kubernetes"
  # Service's endpoint; a real address is kept there by the apiserver.
  local reconciler=(--endpoint-reconciler-type none)
  [[ "$CP_ADVERTISE_ADDRESS" == 127.* ]] || reconciler=(--endpoint-reconciler-type lease)
  "$BIN_DIR/kube-apiserver" \
    --etcd-servers "$etcd_url" \
    --bind-address "$CP_BIND_ADDRESS" \
    --advertise-address "$CP_ADVERTISE_ADDRESS" \
    "${reconciler[@]}" \
    --secure-port "$port" \
    --cert-dir "$tmp/apiserver-certs" \
    --tls-cert-file "$pki/apiserver.crt" \
    --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$pki/sa.pub" \
    --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --authorization-mode RBAC \
    "${cp_apiserver_extra_args[@]}" \
    >"$tmp/kube-apiserver.log" 2>&1 &
  track_pid $!
  log "kube-apiserver pid $! on $api_url"

  kubeconfig="$tmp/admin.kubeconfig"
  cat >"$kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: $LOG_TAG
  cluster:
    server: $api_url
    certificate-authority: $pki/ca.crt
users:
- name: admin
  user:
    client-certificate: $pki/admin.crt
    client-key: $pki/admin.key
contexts:
- name: $LOG_TAG
  context:
    cluster: $LOG_TAG
    user: admin
current-context: $LOG_TAG
EOF
  wait_for kube-apiserver "$!" kubectl get --raw /readyz
}

# kube-controller-manager: StatefulSets make pods, the garbage collector
# follows owner references, the service-account controller makes "default".
cp_start_controller_manager() {
  local port=""
  free_port port
  "$BIN_DIR/kube-controller-manager" \
    --kubeconfig "$kubeconfig" \
    --bind-address 127.0.0.1 \
    --secure-port "$port" \
    --cert-dir "$tmp/kcm-certs" \
    --leader-elect=false \
    --service-account-private-key-file "$pki/sa.key" \
    --root-ca-file "$pki/ca.crt" \
    --use-service-account-credentials \
    >"$tmp/kube-controller-manager.log" 2>&1 &
  track_pid $!
  log "kube-controller-manager pid $!"
}

# cp_start_control_plane: PKI, etcd, kube-apiserver, kube-controller-manager.
cp_start_control_plane() {
  cp_require etcd kube-apiserver kube-controller-manager kubectl
  cp_pki
  cp_start_etcd
  cp_start_apiserver
  cp_start_controller_manager
}

# kube-scheduler: without it a pod that names no node (every StatefulSet
# pod) stays Pending and kwok never marks it Ready.
cp_start_scheduler() {
  cp_require kube-scheduler
  local port=""
  free_port port
  "$BIN_DIR/kube-scheduler" \
    --kubeconfig "$kubeconfig" \
    --authentication-kubeconfig "$kubeconfig" \
    --authorization-kubeconfig "$kubeconfig" \
    --bind-address 127.0.0.1 \
    --secure-port "$port" \
    --cert-dir "$tmp/scheduler-certs" \
    --leader-elect=false \
    >"$tmp/kube-scheduler.log" 2>&1 &
  track_pid $!
  log "kube-scheduler pid $!"
}

# ---------------------------------------------------------------------------
# kwok: fake nodes and pods (no kubelet).
# ---------------------------------------------------------------------------
# The standalone kwok binary ships no default behaviour ("no stages found");
# these two minimal stages are all the tests need: a new node becomes Ready,
# a pending pod on a kwok node becomes Running and Ready, and a deleted pod
# goes away (no kubelet confirms a graceful deletion). No IPs are filled in
# on purpose.
cp_write_kwok_stages() {
  cat >"$1" <<'STAGES'
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: e2e-node-ready
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
          reason: KwokReady
          message: marked ready by kwok (e2e)
          lastHeartbeatTime: {{ Now | Quote }}
          lastTransitionTime: {{ Now | Quote }}
        capacity: {cpu: "32", memory: 64Gi, pods: "110"}
        allocatable: {cpu: "32", memory: 64Gi, pods: "110"}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: e2e-pod-running
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
        - type: PodScheduled
          status: "True"
          lastTransitionTime: {{ Now | Quote }}
        - type: Initialized
          status: "True"
          lastTransitionTime: {{ Now | Quote }}
        - type: ContainersReady
          status: "True"
          lastTransitionTime: {{ Now | Quote }}
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
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: e2e-pod-delete
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: .metadata.deletionTimestamp
      operator: Exists
    - key: .metadata.finalizers
      operator: DoesNotExist
  next:
    delete: true
STAGES
}

# cp_start_kwok: kwok plus node $KWOK_NODE, Ready.
cp_start_kwok() {
  cp_require kwok
  cp_write_kwok_stages "$tmp/kwok.yaml"
  # --config also keeps kwok away from a ~/.kwok/kwok.yaml of the caller's;
  # the node lease keeps kube-controller-manager from declaring the node lost.
  "$BIN_DIR/kwok" \
    --kubeconfig "$kubeconfig" \
    --config "$tmp/kwok.yaml" \
    --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --node-lease-duration-seconds 40 \
    >"$tmp/kwok.log" 2>&1 &
  track_pid $!
  log "kwok pid $!"
  kubectl apply -f - >&2 <<MANIFEST
apiVersion: v1
kind: Node
metadata:
  name: $KWOK_NODE
  annotations:
    kwok.x-k8s.io/node: fake
  labels:
    type: kwok
    kubernetes.io/hostname: $KWOK_NODE
MANIFEST
  wait_for "kwok node Ready" "$!" \
    kubectl wait --for=condition=Ready "node/$KWOK_NODE" --timeout=2s
}
