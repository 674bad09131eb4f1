#!/usr/bin/env python3
"""Turns the proxy config the operator rendered for a RelayCache's pods into
one config per member for processes on this machine.

Only what ties a config to a pod changes: each peer name
NAME-<i>.NAME-peers.NS.svc:PORT becomes 127.0.0.1:<grpc port of member i>,
the member's bind_addr and advertise_addr become that address, server.listen
and server.admin_listen get loopback ports, and every upstream URL points at
the mock upstream. Everything else is written back exactly as rendered.

With `client:NAME:HTTP:ADMIN` among the arguments it also writes
OUT_DIR/client-NAME.yaml: the configuration an injected sidecar runs, a
client of member 0 (`embedded: false`) that presents the clients' token
from RELAYCACHE_CLIENT_TOKEN and holds no members' token.

usage: loopback-config.py RENDERED OUT_DIR MOCK_URL I:GRPC:HTTP:ADMIN... [client:NAME:HTTP:ADMIN...]
writes OUT_DIR/member-I.yaml for each member, OUT_DIR/client-NAME.yaml for each client.
"""

import copy
import re
import sys

import yaml

class Yaml12Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where `off`, `on`, `yes` and `no` are
    booleans; the proxy's YAML parser follows 1.2, where they are strings
    (`cache.replay: off`). Only `true` and `false` are booleans here, so a
    value is written back as the proxy reads it."""


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)

PEER = re.compile(r"^(?P<name>[a-z0-9-]+)-(?P<i>\d+)\.(?P=name)-peers\.[a-z0-9-]+\.svc:\d+$")


def main(argv):
    if len(argv) < 5:
        sys.exit(__doc__)
    rendered_path, out_dir, mock_url = argv[1:4]
    ports = {}
    clients = {}
    for spec in argv[4:]:
        if spec.startswith("client:"):
            _, name, http, admin = spec.split(":")
            clients[name] = (http, admin)
            continue
        i, grpc, http, admin = spec.split(":")
        ports[int(i)] = (grpc, http, admin)
    with open(rendered_path, encoding="utf-8") as f:
        rendered = yaml.load(f, Loader=Yaml12Loader)

    ha = rendered["cache"]["ha"]
    members = {}
    for peer in ha["peers"]:
        match = PEER.match(peer)
        if not match:
            sys.exit(f"peer {peer!r} is not NAME-<i>.NAME-peers.NS.svc:PORT")
        members[int(match["i"])] = peer
    if sorted(members) != sorted(ports):
        sys.exit(f"the rendered peers are members {sorted(members)}, ports were given for {sorted(ports)}")
    if not str(ha["advertise_addr"]).startswith("${POD_NAME}."):
        sys.exit(f"advertise_addr {ha['advertise_addr']!r} does not start with ${{POD_NAME}}.")

    loopback = {peer: f"127.0.0.1:{ports[i][0]}" for i, peer in members.items()}
    for i, (grpc, http, admin) in ports.items():
        config = copy.deepcopy(rendered)
        config["server"]["listen"] = f"127.0.0.1:{http}"
        config["server"]["admin_listen"] = f"127.0.0.1:{admin}"
        for upstream in config["upstreams"]:
            upstream["url"] = mock_url
        member_ha = config["cache"]["ha"]
        member_ha["peers"] = [loopback[peer] for peer in ha["peers"]]
        member_ha["bind_addr"] = f"127.0.0.1:{grpc}"
        member_ha["advertise_addr"] = f"127.0.0.1:{grpc}"
        with open(f"{out_dir}/member-{i}.yaml", "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f, sort_keys=False)

    for name, (http, admin) in clients.items():
        config = copy.deepcopy(rendered)
        config["server"]["listen"] = f"127.0.0.1:{http}"
        config["server"]["admin_listen"] = f"127.0.0.1:{admin}"
        for upstream in config["upstreams"]:
            upstream["url"] = mock_url
        client_ha = config["cache"]["ha"]
        client_ha["embedded"] = False
        client_ha["addresses"] = [f"127.0.0.1:{ports[min(ports)][0]}"]
        client_ha["peers"] = []
        for key in ("bind_addr", "advertise_addr", "token"):
            client_ha.pop(key, None)
        # Members' admin token is the members' token, which a sidecar never
        # holds: the operator's injection clears it too.
        config["server"].pop("admin_token", None)
        client_ha["client_token"] = "${RELAYCACHE_CLIENT_TOKEN}"
        with open(f"{out_dir}/client-{name}.yaml", "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f, sort_keys=False)


if __name__ == "__main__":
    main(sys.argv)
