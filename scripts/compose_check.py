#!/usr/bin/env python3
"""Consistency checks of examples/docker-compose.yaml (no Docker engine needed).

    compose_check.py examples/docker-compose.yaml

`relaycache config validate` proves each member's file is a valid config on
its own; this proves the files and the compose services agree with each
other: every member runs its own file, advertises its own service name,
lists every member as a peer on the gRPC port, shares the token, and runs
as a non-root, read-only, capability-free container.
"""

import os
import sys

try:
    import yaml
except ImportError:
    sys.exit("compose_check.py needs PyYAML: python3 -m pip install pyyaml")

CONFIG_PATH = "/etc/relaycache/relaycache.yaml"
GRPC_PORT = 3320


def fail(msg):
    print(f"compose-check FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    compose_file = sys.argv[1]
    base = os.path.dirname(os.path.abspath(compose_file))
    with open(compose_file, encoding="utf-8") as f:
        compose = yaml.safe_load(f)  # resolves the x-relaycache anchor
    services = compose.get("services") or fail("no services")
    members = {name: s for name, s in services.items()
               if str(s.get("image", "")).startswith("relaycache/relaycache:")}
    if len(members) != 3:
        fail(f"expected three relaycache members, found {sorted(members)}")
    expected_peers = sorted(f"{name}:{GRPC_PORT}" for name in members)

    host_ports = set()
    for name, svc in members.items():
        if svc.get("command") != ["serve", "--config", CONFIG_PATH]:
            fail(f"{name}: command is {svc.get('command')}, expected serve --config {CONFIG_PATH}")
        mounts = [v.split(":") for v in svc.get("volumes", [])]
        sources = [m[0] for m in mounts if len(m) >= 2 and m[1] == CONFIG_PATH]
        if len(sources) != 1:
            fail(f"{name}: no single config file mounted at {CONFIG_PATH}")
        path = os.path.normpath(os.path.join(base, sources[0]))
        if not os.path.isfile(path):
            fail(f"{name}: {sources[0]} does not exist")
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
        cache = config.get("cache") or {}
        ha = cache.get("ha") or {}
        if cache.get("mode") != "ha" or ha.get("embedded", True) is not True:
            fail(f"{name}: {sources[0]} is not an embedded ha member")
        if ha.get("advertise_addr") != f"{name}:{GRPC_PORT}":
            fail(f"{name}: advertise_addr is {ha.get('advertise_addr')}, expected {name}:{GRPC_PORT}")
        if svc.get("hostname") not in (None, name):
            fail(f"{name}: hostname {svc.get('hostname')} differs from the service name")
        if sorted(ha.get("peers", [])) != expected_peers:
            fail(f"{name}: peers are {ha.get('peers')}, expected {expected_peers}")
        if not ha.get("bind_addr", "").endswith(f":{GRPC_PORT}"):
            fail(f"{name}: bind_addr {ha.get('bind_addr')} is not on {GRPC_PORT}")
        if ha.get("token") != "${RELAYCACHE_PEER_TOKEN}" or "RELAYCACHE_PEER_TOKEN" not in svc.get("environment", {}):
            fail(f"{name}: the peer token is not passed from RELAYCACHE_PEER_TOKEN")
        if not svc.get("read_only") or svc.get("cap_drop") != ["ALL"]:
            fail(f"{name}: not read-only with every capability dropped")
        if "no-new-privileges:true" not in svc.get("security_opt", []):
            fail(f"{name}: no-new-privileges is not set")
        uid = str(svc.get("user", "0")).split(":")[0]
        if uid in ("0", "root"):
            fail(f"{name}: runs as root")
        for port in svc.get("ports", []):
            host = port.rsplit(":", 1)[0]
            if not host.startswith("127.0.0.1:"):
                fail(f"{name}: port {port} is published beyond loopback")
            if host in host_ports:
                fail(f"{name}: host port {host} is published twice")
            host_ports.add(host)
        print(f"  ok: {name} runs {sources[0]}: ha member {name}:{GRPC_PORT}, peers {', '.join(expected_peers)}")
    print(f"  ok: {len(members)} members, host ports {', '.join(sorted(host_ports))}, non-root, read-only")


if __name__ == "__main__":
    main()
