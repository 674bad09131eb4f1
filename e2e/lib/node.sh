# shellcheck shell=bash disable=SC2154,SC2034  # tmp, kubeconfig, BIN_DIR... from control-plane.sh; CP_* and node_skip_reason are read there and by the runner
# A real node next to the control plane of lib/control-plane.sh: containerd
# (Debian's package) with runc and the CNI bridge plugin, kubelet and
# kube-proxy (built from k8s.io/kubernetes), and CoreDNS (its Go module) on
# the host serving cluster.local to the pods. Source it after
# control-plane.sh, then:
#
#   node_preflight         why this machine cannot run it (non-zero, reason
#                          in $node_skip_reason) or nothing
#   node_configure_apiserver  before cp_start_control_plane: the apiserver
#                          listens where pods reach it
#   node_start             containerd, the images, CoreDNS, kube-proxy,
#                          kubelet; the node turns Ready
#   node_teardown          every pod, container, mount, network namespace,
#                          iptables rule, link and sysctl it made (a
#                          teardown hook of cp_teardown; safe to call twice)
#
# Everything the node writes lives under $tmp/node. The pods live in
# NODE_POD_CIDR on bridge $NODE_BRIDGE, whose address is also where the
# apiserver, CoreDNS and the kubelet listen. A FORWARD rule drops whatever
# a pod sends outside the pod network, so no test traffic leaves the machine.

NODE_NAME="${NODE_NAME:-e2e-node}"
NODE_BRIDGE="${NODE_BRIDGE:-rce2e0}"
NODE_POD_CIDR="${NODE_POD_CIDR:-10.244.0.0/24}"
NODE_IP="${NODE_IP:-10.244.0.1}"
NODE_IMAGE_DIR="${E2E_IMAGE_DIR:-$repo_root/.e2e-images}"
node_skip_reason=""
node_dir=""
node_sock=""
node_started=0
node_rule_comment="relaycache-e2e-$$"

node_log() { log "node: $*"; }

# node_preflight: is this machine able to run a node at all?
node_preflight() {
  local missing="" tool
  if ((EUID != 0)); then node_skip_reason="not root (containerd and kubelet need root)"; return 1; fi
  for tool in containerd ctr runc iptables ip mount umount; do
    command -v "$tool" >/dev/null || missing+=" $tool"
  done
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] \
    || missing+=" containernetworking-plugins"
  if [[ -n "$missing" ]]; then
    node_skip_reason="missing:$missing (make test-deps installs them)"; return 1
  fi
  local b
  for b in kubelet kube-proxy coredns; do
    [[ -x "$BIN_DIR/$b" ]] || { node_skip_reason="$BIN_DIR/$b is missing (e2e/build-binaries.sh)"; return 1; }
  done
  [[ -f "$NODE_IMAGE_DIR/relaycache.tar" ]] \
    || { node_skip_reason="no images in $NODE_IMAGE_DIR (make e2e-images)"; return 1; }
  local err
  if ! err="$(ip link add rce2e-probe type bridge 2>&1)"; then
    node_skip_reason="cannot create a bridge: $err"; return 1
  fi
  ip link del rce2e-probe
  if ! err="$(iptables -w -t nat -S 2>&1 >/dev/null)"; then
    node_skip_reason="iptables refused: $err"; return 1
  fi
  return 0
}

node_configure_apiserver() {
  # Only the bridge's address: nothing listens on the machine's own interfaces.
  CP_BIND_ADDRESS="$NODE_IP"
  CP_ADVERTISE_ADDRESS="$NODE_IP"
  CP_EXTRA_SANS=",IP:$NODE_IP,IP:${SERVICE_CIDR%.*/*}.1"
  # Webhooks are called at the Service's endpoints, not its ClusterIP; logs
  # and exec go to the node's address (its name resolves nowhere).
  cp_apiserver_extra_args+=(--enable-aggregator-routing=true --kubelet-preferred-address-types InternalIP)
}

# node_sysctl KEY VALUE: set it, remembering the old value for teardown.
node_sysctl() {
  local key="$1" value="$2" file="/proc/sys/${1//.//}" old
  old="$(cat "$file")"
  [[ "$old" == "$value" ]] && return 0
  printf '%s %s\n' "$key" "$old" >>"$node_dir/sysctls"
  printf '%s\n' "$value" >"$file"
}

node_write_configs() {
  # Bit 24 of CapEff is CAP_SYS_RESOURCE.
  local capeff
  capeff="$(awk '$1 == "CapEff:" { print $2 }' /proc/self/status)"
  node_restrict_oom=false
  (( (16#$capeff >> 24) & 1 )) || node_restrict_oom=true
  mkdir -p "$node_dir/cni" "$node_dir/kubelet" "$node_dir/ipam"
  node_sock="$node_dir/containerd.sock"
  cat >"$node_dir/containerd.toml" <<EOF
version = 2
root = "$node_dir/containerd"
state = "$node_dir/containerd-state"
[grpc]
  address = "$node_sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/relaycache/e2e-pause:$image_version"
  # Without CAP_SYS_RESOURCE (as in some sandboxes) runc cannot lower a
  # process's oom_score_adj, and the kubelet asks -998 for every sandbox.
  restrict_oom_score_adj = $node_restrict_oom
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$node_dir/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
EOF
  cat >"$node_dir/cni/10-relaycache-e2e.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "relaycache-e2e",
  "plugins": [{
    "type": "bridge", "bridge": "$NODE_BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {"type": "host-local", "dataDir": "$node_dir/ipam",
             "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "$NODE_IP"}]],
             "routes": [{"dst": "0.0.0.0/0"}]}
  }]
}
EOF
  : >"$node_dir/resolv.conf"
  local healthz=""
  free_port healthz
  cat >"$node_dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$node_sock
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
clusterDomain: cluster.local
clusterDNS: [$NODE_IP]
resolvConf: $node_dir/resolv.conf
failSwapOn: false
evictionHard: {memory.available: 100Mi, nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
localStorageCapacityIsolation: false
volumePluginDir: $node_dir/kubelet/volume-plugins
podLogsDir: $node_dir/pod-logs
shutdownGracePeriod: 0s
EOF
}

node_start() {
  node_dir="$tmp/node"
  mkdir -p "$node_dir"
  : >"$node_dir/sysctls"
  node_netns | sort >"$node_dir/netns-before"
  node_chains >"$node_dir/chains-before"
  # containerd 1.6 keeps its shims' sockets and runc's state under
  # /run/containerd whatever its config says; teardown removes what of it
  # this run created.
  [[ ! -e /run/containerd ]] || : >"$node_dir/run-containerd-existed"
  image_version="$(awk '$1 == "appVersion:" { gsub(/"/, "", $2); print $2 }' "$repo_root/charts/relaycache-operator/Chart.yaml")"
  teardown_hooks+=(node_teardown)
  node_started=1
  node_write_configs

  # The bridge exists (with its address) before the apiserver, the kubelet
  # and CoreDNS bind to it; the CNI plugin adopts it.
  ip link add "$NODE_BRIDGE" type bridge
  ip addr add "$NODE_IP/${NODE_POD_CIDR#*/}" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  node_sysctl net.ipv4.ip_forward 1
  [[ ! -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] || node_sysctl net.bridge.bridge-nf-call-iptables 1
  iptables -w -I FORWARD 1 -s "$NODE_POD_CIDR" ! -d "$NODE_POD_CIDR" \
    -m comment --comment "$node_rule_comment" -j DROP
}

# node_start_services: after the control plane is up.
node_start_services() {
  containerd --config "$node_dir/containerd.toml" >"$tmp/containerd.log" 2>&1 &
  track_pid $!
  local cpid=$!
  wait_for containerd "$cpid" ctr --address "$node_sock" version
  local start=$SECONDS
  "$repo_root/e2e/build-images.sh" --import-only "$node_sock" >"$tmp/images-import.log" 2>&1 \
    || { cat "$tmp/images-import.log" >&2; die "importing the images failed"; }
  node_log "images imported in $((SECONDS - start))s"

  # CoreDNS reads the cluster through the admin kubeconfig (known only now).
  cat >"$node_dir/Corefile" <<EOF
cluster.local:53 {
  bind $NODE_IP
  errors
  kubernetes cluster.local {
    kubeconfig $kubeconfig
  }
}
.:53 {
  bind $NODE_IP
  template ANY ANY {
    rcode NXDOMAIN
  }
}
EOF
  "$BIN_DIR/coredns" -conf "$node_dir/Corefile" >"$tmp/coredns.log" 2>&1 &
  track_pid $!
  local dns_pid=$!
  node_log "coredns pid $dns_pid"

  local hz="" metrics=""
  free_port hz
  free_port metrics
  "$BIN_DIR/kube-proxy" \
    --kubeconfig "$kubeconfig" \
    --hostname-override "$NODE_NAME" \
    --proxy-mode iptables \
    --masquerade-all \
    --cluster-cidr "$NODE_POD_CIDR" \
    --conntrack-max-per-core 0 \
    --conntrack-tcp-timeout-established 0 --conntrack-tcp-timeout-close-wait 0 \
    --healthz-bind-address "127.0.0.1:$hz" \
    --metrics-bind-address "127.0.0.1:$metrics" \
    >"$tmp/kube-proxy.log" 2>&1 &
  track_pid $!
  node_log "kube-proxy pid $!"

  "$BIN_DIR/kubelet" \
    --config "$node_dir/kubelet.yaml" \
    --kubeconfig "$kubeconfig" \
    --root-dir "$node_dir/kubelet" \
    --cert-dir "$node_dir/kubelet/pki" \
    --hostname-override "$NODE_NAME" \
    --node-ip "$NODE_IP" \
    >"$tmp/kubelet.log" 2>&1 &
  track_pid $!
  local kpid=$!
  node_log "kubelet pid $kpid"
  wait_for "node $NODE_NAME Ready" "$kpid" \
    kubectl wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s
  wait_for "CoreDNS answers kubernetes.default.svc.cluster.local" "$dns_pid" node_dns_ok
}

node_dns_ok() {
  getent_out="$(timeout 3 busybox nslookup kubernetes.default.svc.cluster.local "$NODE_IP" 2>&1)" || return 1
  grep -q "${SERVICE_CIDR%.*/*}.1" <<<"$getent_out"
}

# node_teardown: remove the pods first (the kubelet tears down their
# sandboxes, network namespaces and mounts), then whatever is left.
node_teardown() {
  ((node_started)) || return 0
  node_started=0
  node_log "teardown"
  if [[ -n "$kubeconfig" ]] && [[ -S "$node_sock" ]]; then
    kubectl delete pods --all-namespaces --all --grace-period 1 --wait=false >/dev/null 2>&1 || true
    local deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)); do
      [[ -z "$(ctr --address "$node_sock" -n k8s.io tasks ls -q 2>/dev/null)" ]] && break
      sleep 1
    done
  fi
  # Stop the node's processes before the control plane (cp_teardown stops
  # the rest in reverse start order; stopping twice is harmless).
  local pid
  while read -r pid; do
    [[ -n "$pid" ]] || continue
    case "$(cat "/proc/$pid/comm" 2>/dev/null)" in
      kubelet|kube-proxy) cp_stop_pid "$pid" ;;
    esac
  done <"$tmp/pids"
  if [[ -S "$node_sock" ]]; then
    local id
    for id in $(ctr --address "$node_sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$node_sock" -n k8s.io tasks kill -s KILL "$id" >/dev/null 2>&1 || true
    done
    sleep 1
    for id in $(ctr --address "$node_sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$node_sock" -n k8s.io tasks delete -f "$id" >/dev/null 2>&1 || true
    done
  fi
  # containerd and its shims: the shims carry this node's socket path.
  for pid in $(node_pids_with_arg "$node_sock"); do cp_stop_pid "$pid"; done
  while read -r pid; do
    [[ -n "$pid" && "$(cat "/proc/$pid/comm" 2>/dev/null)" == containerd ]] && cp_stop_pid "$pid"
  done <"$tmp/pids"
  for pid in $(node_pids_with_arg "$node_dir"); do kill -KILL "$pid" 2>/dev/null || true; done
  # Mounts under the node's directory, deepest first.
  local m
  while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done < <(awk -v d="$node_dir" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
  # Network namespaces the runtime made for this run's pods.
  local ns
  for ns in $(comm -13 "$node_dir/netns-before" <(node_netns | sort)); do
    [[ "$ns" == cni-* ]] || continue
    umount "/var/run/netns/$ns" 2>/dev/null || true
    rm -f "/var/run/netns/$ns"
  done
  # The pods' cgroups.
  local c
  for c in /sys/fs/cgroup/*/kubepods; do
    if [[ -d "$c" ]]; then find "$c" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
  done
  # kube-proxy's chains, the kubelet's (KUBE-FIREWALL, the canaries) and
  # our rule; links; sysctls.
  "$BIN_DIR/kube-proxy" --cleanup >/dev/null 2>&1 || true
  node_remove_new_chains
  while iptables -w -D FORWARD -s "$NODE_POD_CIDR" ! -d "$NODE_POD_CIDR" \
      -m comment --comment "$node_rule_comment" -j DROP 2>/dev/null; do :; done
  ip link del "$NODE_BRIDGE" 2>/dev/null || true
  for m in $(ip -o link show type veth 2>/dev/null | awk -F': ' '{ print $2 }' | cut -d@ -f1); do
    if [[ "$(cat "/sys/class/net/$m/master/uevent" 2>/dev/null)" == *"INTERFACE=$NODE_BRIDGE"* ]]; then
      ip link del "$m" 2>/dev/null || true
    fi
  done
  if [[ ! -e "$node_dir/run-containerd-existed" && -d /run/containerd ]]; then
    find /run/containerd -depth -type d -empty -delete 2>/dev/null || true
  fi
  local key old
  if [[ -f "$node_dir/sysctls" ]]; then
    while read -r key old; do printf '%s\n' "$old" >"/proc/sys/${key//.//}" || true; done \
      < <(tac "$node_dir/sysctls")
  fi
  node_log "teardown done"
}

# node_chains: "COMMAND TABLE CHAIN" for every iptables/ip6tables chain.
node_chains() {
  local cmd table
  for cmd in iptables ip6tables; do
    command -v "$cmd" >/dev/null || continue
    for table in filter nat mangle; do
      "$cmd" -w -t "$table" -S 2>/dev/null | awk -v c="$cmd" -v t="$table" '$1 == "-N" { print c, t, $2 }'
    done
  done | sort
}

# node_remove_new_chains: chains that appeared during the run (the kubelet's
# and kube-proxy's), with the rules that jump to them.
node_remove_new_chains() {
  [[ -f "$node_dir/chains-before" ]] || return 0
  local cmd table chain rule
  while read -r cmd table chain; do
    while read -r rule; do
      # shellcheck disable=SC2086  # a rule as iptables -S prints it
      eval "$cmd -w -t $table ${rule/#-A/-D}" 2>/dev/null || true
    done < <("$cmd" -w -t "$table" -S 2>/dev/null | grep -E -- "^-A .* -j $chain( |$)" || true)
  done < <(comm -13 "$node_dir/chains-before" <(node_chains))
  while read -r cmd table chain; do
    "$cmd" -w -t "$table" -F "$chain" 2>/dev/null || true
  done < <(comm -13 "$node_dir/chains-before" <(node_chains))
  while read -r cmd table chain; do
    "$cmd" -w -t "$table" -X "$chain" 2>/dev/null || true
  done < <(comm -13 "$node_dir/chains-before" <(node_chains))
}

# node_netns: the names in /var/run/netns.
node_netns() {
  [[ -d /var/run/netns ]] || return 0
  find /var/run/netns -mindepth 1 -maxdepth 1 -printf '%f\n'
}

# node_pids_with_arg TEXT: containerd's processes (the daemon, its shims)
# whose command line contains TEXT.
node_pids_with_arg() {
  local p
  for p in /proc/[0-9]*; do
    [[ "$(cat "$p/comm" 2>/dev/null)" == containerd* ]] || continue
    tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF -- "$1" && printf '%s\n' "${p#/proc/}"
  done
  return 0
}
