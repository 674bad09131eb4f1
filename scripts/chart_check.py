#!/usr/bin/env python3
"""Assertions on the relaycache-operator chart's rendered manifests.

scripts/chart-check.sh renders the chart with `helm template` and calls

    chart_check.py manifests FILE --namespace NS --release NAME [--cert-manager]
        [--network-policy] [--monitoring-ns NS ...] [--cache-ns NS ...]
        [--dashboard] [--service-monitor] [--pod-monitor] [--sidecar-pod-monitor]
    chart_check.py notes FILE --namespace NS
    chart_check.py dashboard-metrics DASHBOARD_JSON METRICS_TEXT [--pending NAME ...]
    chart_check.py app-example examples/app-deployment.yaml --relaycaches examples/relaycache.yaml

Each check prints what it proved; the first failure stops with a message
naming the object and the rule it broke.
"""

import argparse
import glob
import json
import re
import sys

try:
    import yaml
except ImportError:  # the Makefile's test-deps installs it
    sys.exit("chart_check.py needs PyYAML: python3 -m pip install pyyaml")

CRD_NAME = "relaycaches.relaycache.io"
OPERATOR_IMAGE = "relaycache/relaycache-operator:0.1.0"
PROXY_IMAGE = "relaycache/relaycache:0.1.0"
TLS_DIR = "/etc/relaycache-operator/tls"
INJECT_LABEL = "relaycache.io/inject"
INJECTED_SELECTOR = [{"key": INJECT_LABEL, "operator": "Exists"}]
CACHE_LABELS = {"app.kubernetes.io/name": "relaycache", "app.kubernetes.io/component": "cache"}
# The label both PodMonitors set (member / sidecar) and the dashboard's
# Role variable filters on.
ROLE_LABEL = "relaycache_role"
# Where the webhook names the injected sidecar's admin port; the sidecar
# PodMonitor must scrape that name.
INJECT_SOURCE = "operator/src/webhook/inject.rs"

# The operator's permissions: (apiGroup, resource) -> verbs, each one a call
# that operator/src makes (see the comments in templates/rbac.yaml for
# which). Anything granted beyond this, or missing from it, fails the check;
# a new API call in the operator needs its verb added here and in the chart.
# delete on the children and update on relaycaches/finalizers are for the
# OwnerReferencesPermissionEnforcement admission plugin, which checks them
# when the operator sets ownerReferences / blockOwnerDeletion.
# get: before writing, the reconciler reads each child's name (metadata) to
# check that the object there is its own.
CHILD_VERBS = {"get", "list", "watch", "create", "patch", "delete"}
CLUSTER_RBAC = {
    # patch: the finalizer that removes the clients' token copies.
    ("relaycache.io", "relaycaches"): {"get", "list", "watch", "patch"},
    ("relaycache.io", "relaycaches/status"): {"patch"},
    ("relaycache.io", "relaycaches/finalizers"): {"update"},
    ("", "services"): CHILD_VERBS,
    ("", "configmaps"): CHILD_VERBS,
    # The StatefulSet is read in full, to compare its volume claim templates.
    ("apps", "statefulsets"): CHILD_VERBS,
    ("policy", "poddisruptionbudgets"): CHILD_VERBS,
    ("events.k8s.io", "events"): {"create", "patch"},
    # The generated token Secrets (get, create; watched so a deleted one is
    # generated again) and the copies of the clients' one in the namespaces
    # spec.clients allows (patch, list by label, delete).
    ("", "secrets"): {"get", "list", "watch", "create", "patch", "delete"},
    # get: the webhook reads a pod's namespace for spec.clients.namespaceSelector;
    # list, watch: the controller follows namespaces as they come and go.
    ("", "namespaces"): {"get", "list", "watch"},
}
# Self-signed mode only: the caBundle of the chart's own configuration.
WEBHOOK_RBAC = {("admissionregistration.k8s.io", "mutatingwebhookconfigurations"): {"get", "patch"}}
NAMESPACED_RBAC = {
    ("coordination.k8s.io", "leases"): {"get", "create", "update"},
}
SECRET_RBAC = {("", "secrets"): {"get", "create", "update"}}
# Verbs that can be narrowed to one object by resourceNames.
NAMEABLE_VERBS = {"get", "patch", "update", "delete"}


class CheckError(Exception):
    """A rendered manifest broke a rule."""


def fail(msg):
    raise CheckError(msg)


def ok(msg):
    print(f"  ok: {msg}")


def load_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def one(docs, kind):
    found = by_kind(docs, kind)
    if len(found) != 1:
        fail(f"expected exactly one {kind}, rendered {len(found)}")
    return found[0]


def ident(doc):
    meta = doc.get("metadata", {})
    return f"{doc.get('kind')} {meta.get('namespace', '')}/{meta.get('name')}"


def subset(small, big):
    return all(big.get(k) == v for k, v in small.items())


# ---------------------------------------------------------------------------
# Pod Security `restricted`
# ---------------------------------------------------------------------------

def pod_specs(docs):
    """(owner, pod spec, pod labels) of everything that makes pods."""
    for d in docs:
        kind = d.get("kind")
        if kind == "Pod":
            yield ident(d), d["spec"], d["metadata"].get("labels", {})
        elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            tpl = d["spec"]["template"]
            yield ident(d), tpl["spec"], tpl["metadata"].get("labels", {})
        elif kind == "CronJob":
            tpl = d["spec"]["jobTemplate"]["spec"]["template"]
            yield ident(d), tpl["spec"], tpl["metadata"].get("labels", {})


def check_restricted(owner, spec):
    psc = spec.get("securityContext") or {}
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(host):
            fail(f"{owner}: {host} is set")
    for vol in spec.get("volumes", []):
        if "hostPath" in vol:
            fail(f"{owner}: volume {vol['name']} is a hostPath")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        fail(f"{owner}: pod seccompProfile is not RuntimeDefault")
    if psc.get("runAsUser") == 0:
        fail(f"{owner}: pod runs as UID 0")
    containers = spec.get("initContainers", []) + spec.get("containers", [])
    if not containers:
        fail(f"{owner}: no containers")
    for c in containers:
        where = f"{owner} container {c['name']}"
        sc = c.get("securityContext")
        if not sc:
            fail(f"{where}: no securityContext")
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            fail(f"{where}: privileged")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            fail(f"{where}: capabilities do not drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            fail(f"{where}: adds capabilities {caps['add']}")
        if sc.get("readOnlyRootFilesystem") is not True:
            fail(f"{where}: root filesystem is writable")
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            fail(f"{where}: runAsNonRoot is not true")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            fail(f"{where}: runs as UID 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            fail(f"{where}: seccompProfile is {seccomp}")
        res = c.get("resources") or {}
        if not res.get("requests") or not (res.get("limits") or {}).get("memory"):
            fail(f"{where}: no resource requests or memory limit")
    return len(containers)


# ---------------------------------------------------------------------------
# The manifests
# ---------------------------------------------------------------------------

def env_of(container):
    env = {}
    for e in container.get("env", []):
        env[e["name"]] = e.get("value", e.get("valueFrom"))
    return env


def resolve_port(container, port):
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    fail(f"container {container['name']} has no port named {port}")


def check_crd_copy(rendered, files):
    """The template turns the CRD file into a value and back (fromYaml,
    toYaml); the result must say exactly what the file says."""
    source = [d for f in files for d in load_docs(f)]
    if sorted(d["metadata"]["name"] for d in source) != sorted(d["metadata"]["name"] for d in rendered):
        fail(f"rendered CRDs {[d['metadata']['name'] for d in rendered]} differ from files {files}")
    for want in source:
        (got,) = [d for d in rendered if d["metadata"]["name"] == want["metadata"]["name"]]
        if {k: v for k, v in got.items() if k != "metadata"} != {k: v for k, v in want.items() if k != "metadata"}:
            fail(f"CRD {want['metadata']['name']}: the rendered spec differs from its file")
        for field in ("annotations", "labels"):
            if not subset(want["metadata"].get(field, {}), got["metadata"].get(field, {})):
                fail(f"CRD {want['metadata']['name']}: rendering lost {field} of the file")
    ok(f"rendered CRD spec equals {', '.join(files)} field for field")


def check_rbac(docs, args, fullname, webhook_name, lease, secret):
    granted = {}
    for kind in ("ClusterRole", "Role"):
        for role in by_kind(docs, kind):
            scope = "cluster" if kind == "ClusterRole" else "namespaced"
            if kind == "Role" and role["metadata"].get("namespace") != args.namespace:
                fail(f"{ident(role)}: a Role outside the release namespace")
            for rule in role.get("rules", []):
                for field in ("verbs", "resources", "apiGroups", "resourceNames"):
                    if "*" in (rule.get(field) or []):
                        fail(f"{ident(role)}: wildcard in {field}: {rule}")
                if rule.get("nonResourceURLs"):
                    fail(f"{ident(role)}: grants nonResourceURLs")
                names = rule.get("resourceNames")
                for group in rule["apiGroups"]:
                    for res in rule["resources"]:
                        for verb in rule["verbs"]:
                            if names and verb not in NAMEABLE_VERBS | {"list", "watch"}:
                                fail(f"{ident(role)}: resourceNames cannot narrow '{verb}' on {res}")
                            granted.setdefault((scope, group, res), {}).setdefault(verb, set())
                            slot = granted[(scope, group, res)][verb]
                            slot.add(tuple(names) if names else None)

    def verbs(scope):
        return {(g, r): set(v) for (s, g, r), v in granted.items() if s == scope}

    expected_cluster = dict(CLUSTER_RBAC)
    if not args.cert_manager:
        expected_cluster.update(WEBHOOK_RBAC)
    got = verbs("cluster")
    if got != expected_cluster:
        extra = {k: sorted(got.get(k, set()) - expected_cluster.get(k, set())) for k in got}
        missing = {k: sorted(expected_cluster.get(k, set()) - got.get(k, set())) for k in expected_cluster}
        fail(f"ClusterRole differs from what the operator calls; extra {dict((k, v) for k, v in extra.items() if v)}, "
             f"missing {dict((k, v) for k, v in missing.items() if v)}")
    ok("ClusterRole grants exactly the verbs the operator calls, no wildcards, no pods"
       f"{', no webhook configurations (cert-manager injects the CA)' if args.cert_manager else ''}")

    expected_ns = dict(NAMESPACED_RBAC)
    if not args.cert_manager:
        expected_ns.update(SECRET_RBAC)
    namespaced = verbs("namespaced")
    if namespaced != expected_ns:
        fail(f"Role grants {namespaced}, expected {expected_ns}")
    ok(f"Role grants leases{'' if args.cert_manager else ' and secrets'} in {args.namespace} only")

    def names_for(scope, group, res, verb):
        return granted[(scope, group, res)][verb]

    if not args.cert_manager:
        hook = ("cluster", "admissionregistration.k8s.io", "mutatingwebhookconfigurations")
        for verb in WEBHOOK_RBAC[hook[1:]]:
            if names_for(*hook, verb) != {(webhook_name,)}:
                fail(f"{verb} on mutatingwebhookconfigurations is not limited to {webhook_name}")
        ok(f"webhook configuration get/patch limited to resourceNames [{webhook_name}]")
    for verb in ("get", "update"):
        if names_for("namespaced", "coordination.k8s.io", "leases", verb) != {(lease,)}:
            fail(f"{verb} on leases is not limited to the Lease {lease}")
        if not args.cert_manager and names_for("namespaced", "", "secrets", verb) != {(secret,)}:
            fail(f"{verb} on secrets is not limited to the Secret {secret}")
    ok("Lease and webhook Secret access limited to their names")

    sa = args.service_account or fullname
    for kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        binding = one(docs, kind)
        if binding["roleRef"] != {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": fullname}:
            fail(f"{ident(binding)} binds {binding['roleRef']}")
        if binding["subjects"] != [{"kind": "ServiceAccount", "name": sa, "namespace": args.namespace}]:
            fail(f"{ident(binding)} subjects are {binding['subjects']}")
    ok(f"bindings tie both roles to ServiceAccount {args.namespace}/{sa}")


def check_webhook(docs, args, service):
    mwc = one(docs, "MutatingWebhookConfiguration")
    name = mwc["metadata"]["name"]
    hooks = mwc["webhooks"]
    if len(hooks) != 1 or hooks[0]["name"] != "inject.relaycache.io":
        fail(f"{ident(mwc)}: expected the single webhook inject.relaycache.io, got {[h['name'] for h in hooks]}")
    h = hooks[0]
    expect = {
        "failurePolicy": args.failure_policy,
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": 5,
        "reinvocationPolicy": "IfNeeded",
    }
    for key, want in expect.items():
        if h.get(key) != want:
            fail(f"{ident(mwc)}: {key} is {h.get(key)!r}, expected {want!r}")
    svc = h["clientConfig"].get("service") or fail("webhook clientConfig has no service")
    if (svc["name"], svc["namespace"], svc.get("path"), svc.get("port")) != (
            service["metadata"]["name"], args.namespace, "/mutate-pods", 443):
        fail(f"webhook clientConfig.service is {svc}")
    if h["rules"] != [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["pods"], "scope": "Namespaced"}]:
        fail(f"webhook rules are {h['rules']}; expected CREATE pods only")
    if h.get("objectSelector") != {"matchExpressions": [{"key": INJECT_LABEL, "operator": "Exists"}]}:
        fail(f"webhook objectSelector is {h.get('objectSelector')}")
    exprs = (h.get("namespaceSelector") or {}).get("matchExpressions") or []
    excluded = {v for e in exprs if e["key"] == "kubernetes.io/metadata.name" and e["operator"] == "NotIn"
                for v in e["values"]}
    for ns in ["kube-system", args.namespace] + args.excluded_ns:
        if ns not in excluded:
            fail(f"webhook namespaceSelector does not exclude {ns} (excludes {sorted(excluded)})")
    if "caBundle" in h["clientConfig"]:
        fail("the chart sets caBundle; the operator or cert-manager owns it")
    ok(f"webhook {name}: CREATE pods with {INJECT_LABEL}, excludes {sorted(excluded)}, "
       f"failurePolicy {h['failurePolicy']}, timeout 5s, IfNeeded, /mutate-pods via {svc['name']}:443")
    return mwc


def check_manifests(args):
    docs = load_docs(args.file)
    ns = args.namespace
    for d in docs:
        kind = d.get("kind")
        if kind in ("CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
                    "MutatingWebhookConfiguration"):
            if "namespace" in d["metadata"]:
                fail(f"{ident(d)}: cluster-scoped object with a namespace")
        elif kind in ("NetworkPolicy", "ConfigMap"):
            if not d["metadata"].get("namespace"):
                fail(f"{ident(d)}: no namespace")
        elif d["metadata"].get("namespace") != ns:
            fail(f"{ident(d)}: rendered outside the release namespace {ns}")
    ok(f"{len(docs)} objects, each namespaced to {ns} or cluster-scoped as its kind requires")

    # The CRD: the names docs/kubernetes.md documents, and kept on uninstall.
    crds = by_kind(docs, "CustomResourceDefinition")
    if args.no_crds:
        if crds:
            fail("crds.install=false still renders the CRD")
        ok("crds.install=false renders no CRD")
    else:
        crd = one(docs, "CustomResourceDefinition")
        spec = crd["spec"]
        names = spec["names"]
        # The documented short name is rc; the operator adds rcache because
        # kubectl resolves rc to ReplicationControllers first.
        got = (crd["metadata"]["name"], spec["group"], names["kind"], names["plural"],
               "rc" in names.get("shortNames", []), spec["scope"])
        if got != (CRD_NAME, "relaycache.io", "RelayCache", "relaycaches", True, "Namespaced"):
            fail(f"CRD names are {got}")
        v1a1 = [v for v in spec["versions"] if v["name"] == "v1alpha1"]
        if not v1a1 or set(v1a1[0].get("subresources", {})) != {"status", "scale"}:
            fail("CRD v1alpha1 lacks the status and scale subresources")
        if crd["metadata"].get("annotations", {}).get("helm.sh/resource-policy") != "keep":
            fail("CRD lacks helm.sh/resource-policy: keep; uninstall would delete every RelayCache")
        ok("CRD relaycaches.relaycache.io (v1alpha1, rc, status+scale) rendered with resource-policy keep")
        check_crd_copy(crds, args.crd_files)

    deploy = one(docs, "Deployment")
    fullname = deploy["metadata"]["name"]
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    if not subset(deploy["spec"]["selector"]["matchLabels"], pod_labels):
        fail("Deployment selector does not match its pod labels")
    if deploy["spec"]["replicas"] != args.replicas:
        fail(f"Deployment replicas {deploy['spec']['replicas']}, expected {args.replicas}")
    pod = deploy["spec"]["template"]["spec"]
    (c,) = [c for c in pod["containers"] if c["name"] == "operator"]
    if c["image"] != OPERATOR_IMAGE:
        fail(f"operator image is {c['image']}, expected {OPERATOR_IMAGE}")
    if c.get("args") != ["run"]:
        fail(f"operator args are {c.get('args')}, expected ['run']")
    env = env_of(c)
    if env.get("POD_NAMESPACE") != {"fieldRef": {"fieldPath": "metadata.namespace"}}:
        fail("POD_NAMESPACE does not come from the downward API")
    mode = "files" if args.cert_manager else "self-signed"
    expect_env = {
        "HEALTH_ADDR": "0.0.0.0:8081",
        "WEBHOOK_ADDR": "0.0.0.0:9443",
        "WEBHOOK_CERT_MODE": mode,
        "WEBHOOK_CERT_DIR": TLS_DIR,
        "RELAYCACHE_IMAGE": PROXY_IMAGE,
    }
    for key, want in expect_env.items():
        if env.get(key) != want:
            fail(f"operator env {key}={env.get(key)!r}, expected {want!r}")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c[probe]["httpGet"]
        if get["path"] != path or resolve_port(c, get["port"]) != 8081:
            fail(f"{probe} is {get}, expected {path} on 8081")
    if resolve_port(c, "webhook") != 9443:
        fail("the webhook container port is not 9443")
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    secret = env["WEBHOOK_SECRET"]
    if args.cert_manager:
        mount = mounts.get(TLS_DIR) or fail(f"cert-manager mode: nothing mounted at {TLS_DIR}")
        (vol,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        if vol.get("secret", {}).get("secretName") != secret:
            fail(f"the TLS volume is {vol}, expected Secret {secret}")
    elif TLS_DIR in mounts:
        fail(f"self-signed mode mounts {TLS_DIR}; the operator keeps its certificate in a Secret")
    ok(f"Deployment {fullname}: replicas {args.replicas}, image {OPERATOR_IMAGE}, "
       f"cert mode {mode}, probes /healthz /readyz on 8081, webhook on 9443")

    service = one(docs, "Service")
    if service["metadata"]["name"] != env["WEBHOOK_SERVICE"]:
        fail(f"WEBHOOK_SERVICE={env['WEBHOOK_SERVICE']} but the Service is {service['metadata']['name']}")
    if not subset(service["spec"]["selector"], pod_labels):
        fail("the Service selector does not match the operator pods")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    if ports.get("webhook", {}).get("port") != 443 or resolve_port(c, ports["webhook"]["targetPort"]) != 9443:
        fail(f"Service webhook port is {ports.get('webhook')}, expected 443 -> 9443")
    if resolve_port(c, ports.get("http-metrics", {}).get("targetPort", 0)) != 8081:
        fail("Service http-metrics port does not reach 8081")
    ok("Service selects the operator pods: 443 -> 9443 (webhook), 8081 (health, metrics)")

    mwc = check_webhook(docs, args, service)
    if env["WEBHOOK_CONFIGURATION"] != mwc["metadata"]["name"]:
        fail(f"WEBHOOK_CONFIGURATION={env['WEBHOOK_CONFIGURATION']} but the configuration is "
             f"{mwc['metadata']['name']}")
    if mwc["metadata"]["name"] != fullname:
        fail("the webhook configuration is not named after the release's fullname")

    certs = by_kind(docs, "Certificate")
    annotation = mwc["metadata"].get("annotations", {}).get("cert-manager.io/inject-ca-from")
    if args.cert_manager:
        cert = one(docs, "Certificate")
        if annotation != f"{ns}/{cert['metadata']['name']}":
            fail(f"inject-ca-from is {annotation}, the Certificate is {ns}/{cert['metadata']['name']}")
        if cert["spec"]["secretName"] != secret:
            fail(f"the Certificate writes {cert['spec']['secretName']}, the operator reads {secret}")
        svc = service["metadata"]["name"]
        if f"{svc}.{ns}.svc" not in cert["spec"]["dnsNames"]:
            fail(f"the Certificate does not name {svc}.{ns}.svc")
        issuer = cert["spec"]["issuerRef"]
        if issuer.get("kind", "Issuer") == "Issuer":
            names = [i["metadata"]["name"] for i in by_kind(docs, "Issuer")]
            if issuer["name"] not in names and not args.external_issuer:
                fail(f"the Certificate's Issuer {issuer['name']} is not rendered")
        ok(f"cert-manager: Certificate -> Secret {secret} for {svc}.{ns}.svc, CA injected from it")
    else:
        if certs or annotation:
            fail("self-signed mode renders cert-manager objects")
        ok("self-signed mode: no cert-manager objects; the operator patches caBundle")

    check_rbac(docs, args, fullname, mwc["metadata"]["name"], env["LEASE_NAME"], secret)

    pdbs = by_kind(docs, "PodDisruptionBudget")
    if args.replicas > 1:
        pdb = one(docs, "PodDisruptionBudget")
        if not subset(pdb["spec"]["selector"]["matchLabels"], pod_labels):
            fail("the PDB does not select the operator pods")
        if pdb["spec"].get("minAvailable", 0) >= args.replicas:
            fail("the PDB would block every eviction")
        ok(f"PDB minAvailable {pdb['spec']['minAvailable']} of {args.replicas}")
    elif pdbs:
        fail("a PDB with one replica blocks node drains")
    else:
        ok("one replica: no PDB")

    count = 0
    owners = []
    for owner, spec, _ in pod_specs(docs):
        count += check_restricted(owner, spec)
        owners.append(owner)
    tests = [p for p in by_kind(docs, "Pod")
             if p["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    if not tests:
        fail("no helm test hook Pod")
    if not any(service["metadata"]["name"] in " ".join(map(str, ct.get("args", []) + ct.get("command", [])))
               and "/readyz" in " ".join(map(str, ct.get("args", [])))
               for t in tests for ct in t["spec"]["containers"]):
        fail("the helm test Pod does not call /readyz through the operator Service")
    ok(f"restricted Pod Security on {count} containers of {', '.join(owners)}; helm test calls /readyz")

    check_optional(docs, args, service, pod_labels)


def check_optional(docs, args, service, pod_labels):
    ns = args.namespace
    sms = by_kind(docs, "ServiceMonitor")
    if args.service_monitor:
        sm = one(docs, "ServiceMonitor")
        svc_ports = {p["name"] for p in service["spec"]["ports"]}
        if not subset(sm["spec"]["selector"]["matchLabels"], service["metadata"]["labels"]):
            fail("the ServiceMonitor does not select the operator Service")
        if [e["port"] for e in sm["spec"]["endpoints"]] != ["http-metrics"] or "http-metrics" not in svc_ports:
            fail("the ServiceMonitor does not scrape the Service's http-metrics port")
        ok("ServiceMonitor scrapes the operator's http-metrics port")
    elif sms:
        fail("ServiceMonitor rendered while disabled")
    pms = by_kind(docs, "PodMonitor")
    members = [p for p in pms if p["spec"]["selector"].get("matchLabels") == CACHE_LABELS]
    injected = [p for p in pms if p["spec"]["selector"].get("matchExpressions") == INJECTED_SELECTOR]
    if len(members) + len(injected) != len(pms):
        fail(f"a PodMonitor selects neither the cache members nor the injected pods: {[ident(p) for p in pms]}")
    for wanted, found, what, port, role in (
            (args.pod_monitor, members, "cache members", "admin", "member"),
            (args.sidecar_pod_monitor, injected, "injected sidecars", sidecar_admin_port(), "sidecar")):
        if not wanted:
            if found:
                fail(f"the PodMonitor for {what} is rendered while disabled")
            continue
        if len(found) != 1:
            fail(f"expected one PodMonitor for {what}, rendered {len(found)}")
        pm = found[0]
        if pm["spec"].get("namespaceSelector") != {"any": True}:
            fail(f"{ident(pm)} does not look in every namespace")
        endpoints = pm["spec"]["podMetricsEndpoints"]
        if [(e["port"], e.get("path")) for e in endpoints] != [(port, "/metrics")]:
            fail(f"{ident(pm)} scrapes {endpoints}, expected port {port} path /metrics")
        if not any(r.get("targetLabel") == ROLE_LABEL and r.get("replacement") == role
                   for r in endpoints[0].get("relabelings", [])):
            fail(f"{ident(pm)} does not set {ROLE_LABEL}={role}, which the dashboard filters on")
        ok(f"PodMonitor {pm['metadata']['name']}: {what}' port {port} /metrics in every namespace, "
           f"{ROLE_LABEL}={role}")

    cms = [d for d in by_kind(docs, "ConfigMap") if "relaycache.json" in d.get("data", {})]
    if args.dashboard:
        if len(cms) != 1:
            fail("dashboard enabled but no ConfigMap with relaycache.json")
        cm = cms[0]
        if cm["metadata"]["labels"].get("grafana_dashboard") != "1":
            fail("the dashboard ConfigMap lacks grafana_dashboard: \"1\"")
        dash = json.loads(cm["data"]["relaycache.json"])
        titles = " | ".join(p.get("title", "") for p in dash_panels(dash)).lower()
        for needle in ("hit ratio", "tier", "latency", "tokens saved"):
            if needle not in titles:
                fail(f"the dashboard has no panel about {needle!r} (panels: {titles})")
        ok(f"dashboard ConfigMap: valid JSON, {len(list(dash_panels(dash)))} panels incl. hit ratio, "
           "tier mix, latency, tokens saved")
    elif cms:
        fail("dashboard ConfigMap rendered while disabled")

    pols = by_kind(docs, "NetworkPolicy")
    if not args.network_policy:
        if pols:
            fail("NetworkPolicy rendered while disabled")
        return
    op = [p for p in pols if p["metadata"]["namespace"] == ns and subset(p["spec"]["podSelector"]["matchLabels"], pod_labels)]
    if len(op) != 1:
        fail("no NetworkPolicy for the operator pods")
    rules = op[0]["spec"]["ingress"]
    webhook_rules = [r for r in rules if any(p["port"] in ("webhook", 9443) for p in r["ports"])]
    if len(webhook_rules) != 1 or webhook_rules[0].get("from"):
        fail("the operator's webhook port must be open to the API server (any source)")
    health = [r for r in rules if any(p["port"] in ("http-health", 8081) for p in r["ports"])]
    sources = [f for r in health for f in r.get("from", [])]
    if not health or not all(r.get("from") for r in health):
        fail("the operator's health/metrics port is open to everyone")
    mon = {f["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
           for f in sources if "namespaceSelector" in f}
    if mon != set(args.monitoring_ns):
        fail(f"8081 open to namespaces {sorted(mon)}, expected {sorted(args.monitoring_ns)}")
    ok(f"operator NetworkPolicy: 9443 from the API server, 8081 from {sorted(mon) or 'nobody'} and helm test")

    cache_pols = [p for p in pols if p["spec"]["podSelector"].get("matchLabels") == CACHE_LABELS]
    got_ns = sorted(p["metadata"]["namespace"] for p in cache_pols)
    if got_ns != sorted(args.cache_ns or [ns]):
        fail(f"cache-member NetworkPolicies in {got_ns}, expected {sorted(args.cache_ns or [ns])}")
    for p in cache_pols:
        peer = [r for r in p["spec"]["ingress"] if any(pt["port"] == 3320 for pt in r["ports"])]
        if len(peer) != 1:
            fail(f"{ident(p)}: expected one rule for the peer port")
        allowed = peer[0].get("from") or fail(f"{ident(p)}: peer port open to everyone")
        want_ns = sorted({p["metadata"]["namespace"], *args.client_ns})
        members = namespaces = 0
        for src in allowed:
            if "ipBlock" in src:
                fail(f"{ident(p)}: peer port open to {src}")
            if INJECT_LABEL in json.dumps(src):
                fail(f"{ident(p)}: the inject label is no credential, yet it opens the peer port: {src}")
            if src.get("podSelector", {}).get("matchLabels") == CACHE_LABELS and "namespaceSelector" not in src:
                members += 1
                continue
            sel = src.get("namespaceSelector") or fail(f"{ident(p)}: peer port source {src}")
            if "podSelector" in src or sel.get("matchExpressions") != [
                    {"key": "kubernetes.io/metadata.name", "operator": "In", "values": want_ns}]:
                fail(f"{ident(p)}: peer port open to {src}, expected the namespaces {want_ns}")
            namespaces += 1
        if (members, namespaces) != (1, 1):
            fail(f"{ident(p)}: the peer port must admit the members and the namespaces {want_ns}, got {allowed}")
    ok(f"cache-member NetworkPolicies in {got_ns}: 3320 only from members and the client namespaces"
       f" (own{', ' + ', '.join(args.client_ns) if args.client_ns else ''}); no label opens it")


def sidecar_admin_port():
    """ADMIN_PORT_NAME from the webhook's source, so the chart and the
    injected container cannot drift apart."""
    try:
        with open(INJECT_SOURCE, encoding="utf-8") as f:
            source = f.read()
    except OSError as e:
        fail(f"cannot read {INJECT_SOURCE} for the sidecar's admin port name: {e}")
    found = re.findall(r'pub const ADMIN_PORT_NAME: &str = "([a-z0-9-]+)";', source)
    if len(found) != 1:
        fail(f"{INJECT_SOURCE} does not define ADMIN_PORT_NAME once")
    name = found[0]
    # IANA_SVC_NAME: Kubernetes refuses longer port names.
    if len(name) > 15 or not re.search(r"[a-z]", name) or "--" in name:
        fail(f"ADMIN_PORT_NAME {name!r} is not a valid port name (15 characters at most)")
    return name


def dash_panels(dash):
    for p in dash.get("panels", []):
        yield p
        yield from p.get("panels", [])


# ---------------------------------------------------------------------------
# NOTES.txt and the dashboard's metric names
# ---------------------------------------------------------------------------

def check_notes(args):
    docs = load_docs(args.file)
    text = docs[0]["data"]["notes"]
    for needle in ("relaycache.io/inject", "helm test", f"namespace {args.namespace}"):
        if needle not in text:
            fail(f"NOTES.txt does not mention {needle!r}")
    if "<no value>" in text:
        fail("NOTES.txt renders <no value>: a value it reads does not exist")
    ok(f"NOTES.txt renders ({len(text.splitlines())} lines), no missing values")


def check_dashboard_metrics(args):
    with open(args.dashboard, encoding="utf-8") as f:
        dash = json.load(f)
    with open(args.metrics, encoding="utf-8") as f:
        exposition = f.read()
    # Names the proxy exports: the TYPE lines list every registered metric,
    # including families that have no series before the first request.
    families = dict(re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.M))
    if not families:
        fail(f"{args.metrics} has no metric TYPE lines; is it a /metrics scrape?")
    exported = set()
    for name, kind in families.items():
        if kind == "counter":
            exported.add(name + "_total")
        elif kind == "histogram":
            exported.update(name + s for s in ("_bucket", "_sum", "_count"))
        else:
            exported.add(name)
    pending = set(args.pending or [])
    used = set()
    exprs = [t.get("expr", "") for p in dash_panels(dash) for t in p.get("targets", [])]
    for expr in exprs:
        # Metric names only: label names inside {...} (relaycache_role) are not series.
        used.update(re.findall(r"\brelaycache_[a-z0-9_]+", re.sub(r"\{[^}]*\}", "", expr)))
    check_dashboard_selectors(dash, exprs)
    if not used:
        fail("the dashboard queries no relaycache_ metric")
    unknown = used - exported - pending
    if unknown:
        fail(f"the dashboard queries metrics the proxy does not export: {sorted(unknown)}")
    for name in sorted(used & pending - exported):
        print(f"  WARNING: dashboard series {name} is not exported yet (peer tier pending)")
    ok(f"the dashboard's {len(used)} metric names are all exported by relaycache /metrics"
       f"{' (or pending)' if used & pending - exported else ''}")


# Labels that exist on the members' series but not on the sidecars' (or
# the other way round): filtering on one would hide half the proxies.
ROLE_SPECIFIC_LABELS = ("job", "container", "endpoint", "service", "app_kubernetes_io_")


def check_dashboard_selectors(dash, exprs):
    """Every series selector covers members and sidecars alike: it filters
    on the Role variable and on nothing only one of them carries."""
    queries = list(exprs)
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("query")
        queries.append(q.get("query", "") if isinstance(q, dict) else "")
    roles = [v for v in dash.get("templating", {}).get("list", []) if v.get("name") == "role"]
    if len(roles) != 1 or set(roles[0].get("query", "").split(",")) != {"member", "sidecar"} \
            or roles[0].get("allValue") != ".*" or not roles[0].get("includeAll"):
        fail("the dashboard needs a Role variable: member,sidecar, with All meaning .*")
    count = 0
    for query in queries:
        for name, matchers in re.findall(r"\b(relaycache_[a-z0-9_]+)(\{[^}]*\})?", query):
            where = f"dashboard query {query[:80]!r}"
            if not matchers:
                fail(f"{where}: {name} without a selector; it must filter on {ROLE_LABEL}")
            if f'{ROLE_LABEL}=~"$role"' not in matchers:
                fail(f"{where}: {name} does not filter on {ROLE_LABEL}=~\"$role\"")
            for label in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*[=!]~?", matchers):
                if label.startswith(ROLE_SPECIFIC_LABELS):
                    fail(f"{where}: filters on {label}, which members and sidecars do not share")
            count += 1
    ok(f"the dashboard's {count} selectors cover members and sidecars ({ROLE_LABEL}=~\"$role\", "
       "no job/container filter)")


def relaycache_names(paths):
    """(namespace or None, name) of every RelayCache in these files."""
    found = []
    for path in paths:
        for d in load_docs(path):
            if d.get("kind") == "RelayCache" and str(d.get("apiVersion", "")).startswith("relaycache.io/"):
                found.append((d["metadata"].get("namespace"), d["metadata"]["name"]))
    return found


def check_app_example(args):
    docs = load_docs(args.file)
    deploy = one(docs, "Deployment")
    labels = deploy["spec"]["template"]["metadata"].get("labels", {})
    target = labels.get(INJECT_LABEL) or fail(f"{ident(deploy)}: pods lack the {INJECT_LABEL} label")
    if not re.fullmatch(r"([a-z0-9-]+\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?", target):
        fail(f"{ident(deploy)}: {INJECT_LABEL}={target} is neither NAME nor NAMESPACE.NAME")
    # The label must name a RelayCache the examples define, or a user who
    # applies both gets no sidecar (the webhook only warns). The webhook
    # splits at the first dot: NAMESPACE.NAME, else NAME in the pod's namespace.
    deploy_ns = deploy["metadata"].get("namespace")
    want_ns, want_name = target.split(".", 1) if "." in target else (deploy_ns, target)
    defined = relaycache_names(args.relaycaches)
    if not defined:
        fail(f"no RelayCache in {args.relaycaches} to check {INJECT_LABEL}={target} against")
    if not any(name == want_name and ns == want_ns for ns, name in defined):
        shown = ", ".join(f"{ns + '/' if ns else ''}{name}" for ns, name in defined)
        fail(f"{ident(deploy)}: {INJECT_LABEL}={target} names no RelayCache of "
             f"{' '.join(args.relaycaches)} (they define {shown}); the pods would get no sidecar")
    spec = deploy["spec"]["template"]["spec"]
    for c in spec["containers"]:
        # The webhook sets these; setting them in the example would hide it.
        for var in ("ANTHROPIC_BASE_URL", "OPENAI_BASE_URL"):
            if var in env_of(c):
                fail(f"{ident(deploy)} container {c['name']} sets {var}; the webhook should")
    count = check_restricted(ident(deploy), spec)
    ok(f"{args.file}: pods opt in with {INJECT_LABEL}: {target} (a RelayCache of "
       f"{' '.join(args.relaycaches)}), leave the base URLs to the webhook, {count} container(s) restricted")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("manifests")
    m.add_argument("file")
    m.add_argument("--namespace", required=True)
    m.add_argument("--replicas", type=int, default=2)
    m.add_argument("--failure-policy", default="Ignore")
    m.add_argument("--service-account", default="")
    m.add_argument("--excluded-ns", nargs="*", default=[])
    m.add_argument("--cert-manager", action="store_true")
    m.add_argument("--external-issuer", action="store_true")
    m.add_argument("--no-crds", action="store_true")
    m.add_argument("--crd-files", nargs="+",
                   default=sorted(glob.glob("charts/relaycache-operator/files/crds/*.yaml")))
    m.add_argument("--network-policy", action="store_true")
    m.add_argument("--monitoring-ns", nargs="*", default=[])
    m.add_argument("--cache-ns", nargs="*", default=[])
    m.add_argument("--client-ns", nargs="*", default=[])
    m.add_argument("--dashboard", action="store_true")
    m.add_argument("--service-monitor", action="store_true")
    m.add_argument("--pod-monitor", action="store_true")
    m.add_argument("--sidecar-pod-monitor", action="store_true")
    n = sub.add_parser("notes")
    n.add_argument("file")
    n.add_argument("--namespace", required=True)
    d = sub.add_parser("dashboard-metrics")
    d.add_argument("dashboard")
    d.add_argument("metrics")
    d.add_argument("--pending", nargs="*", default=[])
    a = sub.add_parser("app-example")
    a.add_argument("file")
    a.add_argument("--relaycaches", nargs="+", required=True,
                   help="example files whose RelayCaches the inject label may name")
    args = parser.parse_args()
    try:
        {"manifests": check_manifests, "notes": check_notes,
         "dashboard-metrics": check_dashboard_metrics, "app-example": check_app_example}[args.cmd](args)
    except CheckError as e:
        print(f"chart-check FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    except (KeyError, TypeError, ValueError) as e:
        print(f"chart-check FAILED: a manifest lacks an expected field: {e!r}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
