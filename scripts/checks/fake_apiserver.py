"""A stand-in Kubernetes API server, just enough for `helm install` to run.

No API server exists where CI runs, and helm-sdkpy renders templates only as
part of an install. This answers discovery for the kinds the chart uses,
keeps what is created in memory, and marks CRDs Established, so a real Helm
(its Go library) installs the chart against it and returns the rendered
manifest. It validates nothing itself; the caller validates the objects.
"""

import copy
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

# group/version -> [(plural, kind, namespaced)]
RESOURCES = {
    "v1": [
        ("namespaces", "Namespace", False),
        ("pods", "Pod", True),
        ("services", "Service", True),
        ("secrets", "Secret", True),
        ("configmaps", "ConfigMap", True),
        ("serviceaccounts", "ServiceAccount", True),
        ("events", "Event", True),
    ],
    "apps/v1": [("deployments", "Deployment", True), ("statefulsets", "StatefulSet", True)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "rbac.authorization.k8s.io/v1": [
        ("clusterroles", "ClusterRole", False),
        ("clusterrolebindings", "ClusterRoleBinding", False),
        ("roles", "Role", True),
        ("rolebindings", "RoleBinding", True),
    ],
    "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy", True)],
    "coordination.k8s.io/v1": [("leases", "Lease", True)],
    "events.k8s.io/v1": [("events", "Event", True)],
    "apiextensions.k8s.io/v1": [
        ("customresourcedefinitions", "CustomResourceDefinition", False)
    ],
    "monitoring.coreos.com/v1": [
        ("servicemonitors", "ServiceMonitor", True),
        ("prometheusrules", "PrometheusRule", True),
    ],
    "dcdn.io/v1alpha1": [("dcdnclusters", "DcdnCluster", True)],
}
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


def resource_list(gv):
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": [
            {"name": p, "singularName": "", "namespaced": ns, "kind": k, "verbs": VERBS}
            for p, k, ns in RESOURCES[gv]
        ],
    }


def group_list():
    groups = {}
    for gv in RESOURCES:
        if "/" not in gv:
            continue
        g, v = gv.split("/")
        groups.setdefault(g, []).append({"groupVersion": gv, "version": v})
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [
            {"name": g, "versions": vs, "preferredVersion": vs[0]} for g, vs in groups.items()
        ],
    }


class Store:
    def __init__(self):
        self.lock = threading.Lock()
        self.objects = {}  # (gv, plural, ns, name) -> object
        self.created = []  # objects as sent, in the order they were created


class Handler(BaseHTTPRequestHandler):
    store: Store

    def log_message(self, *args):  # quiet
        pass

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def status(self, code, reason, message):
        self.reply(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                          "message": message, "reason": reason, "code": code})

    def route(self):
        """(gv, plural, namespace, name, subresource); None outside /api and /apis."""
        parts = [p for p in urlparse(self.path).path.split("/") if p]
        if parts[:1] == ["api"] and len(parts) >= 2:
            gv, rest = parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            gv, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            return None
        ns = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        if not rest:
            return (gv, None, ns, None, None)
        plural = rest[0]
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        return (gv, plural, ns, name, sub)

    def kind_of(self, gv, plural):
        for p, k, _ in RESOURCES.get(gv, []):
            if p == plural:
                return k
        return None

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) or b"{}"
        if "protobuf" in (self.headers.get("Content-Type") or ""):
            # Helm's release records (typed client, protobuf). Only the name
            # matters here; the reply is JSON, which client-go also decodes.
            m = re.search(rb"sh\.helm\.release\.v1\.[a-z0-9.-]+\.v[0-9]+", raw)
            name = m.group(0).decode() if m else "unknown"
            return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}}
        return json.loads(raw)

    def do_GET(self):
        path = urlparse(self.path).path.rstrip("/")
        if path == "/version":
            return self.reply(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0",
                                    "platform": "linux/amd64"})
        if path == "/api":
            return self.reply(200, {"kind": "APIVersions", "versions": ["v1"]})
        if path == "/apis":
            return self.reply(200, group_list())
        r = self.route()
        if r is None:
            return self.status(404, "NotFound", f"no route {path}")
        gv, plural, ns, name, _ = r
        if plural is None:
            if gv in RESOURCES:
                return self.reply(200, resource_list(gv))
            return self.status(404, "NotFound", gv)
        kind = self.kind_of(gv, plural)
        if kind is None:
            return self.status(404, "NotFound", f"{gv} {plural}")
        if parse_qs(urlparse(self.path).query).get("watch") == ["true"]:
            return self.status(405, "MethodNotAllowed", "no watches here")
        with self.store.lock:
            if name is None:
                items = [o for (g, p, n, _), o in self.store.objects.items()
                         if g == gv and p == plural and (ns is None or n == ns)]
                return self.reply(200, {"kind": kind + "List", "apiVersion": gv,
                                        "metadata": {"resourceVersion": "1"}, "items": items})
            obj = self.store.objects.get((gv, plural, ns, name))
        if obj is None:
            return self.status(404, "NotFound", f'{plural} "{name}" not found')
        return self.reply(200, obj)

    def do_POST(self):
        r = self.route()
        if r is None or r[1] is None:
            return self.status(404, "NotFound", self.path)
        gv, plural, ns, _, _ = r
        obj = self.body()
        sent = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if ns:
            meta.setdefault("namespace", ns)
        meta.update({"uid": str(uuid.uuid4()), "resourceVersion": "1", "generation": 1,
                     "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        if obj.get("kind") == "CustomResourceDefinition":
            obj["status"] = {"conditions": [
                {"type": "Established", "status": "True"},
                {"type": "NamesAccepted", "status": "True"}],
                "acceptedNames": obj["spec"]["names"]}
        key = (gv, plural, ns, meta.get("name"))
        with self.store.lock:
            if key in self.store.objects:
                return self.status(409, "AlreadyExists", f'{plural} "{key[3]}" already exists')
            self.store.objects[key] = obj
            self.store.created.append(sent)
        self.reply(201, obj)

    def do_PUT(self):
        r = self.route()
        if r is None or r[3] is None:
            return self.status(404, "NotFound", self.path)
        gv, plural, ns, name, _ = r
        obj = self.body()
        with self.store.lock:
            self.store.objects[(gv, plural, ns, name)] = obj
        self.reply(200, obj)

    def do_PATCH(self):
        r = self.route()
        with self.store.lock:
            obj = self.store.objects.get(r[:4]) if r else None
        if obj is None:
            return self.status(404, "NotFound", self.path)
        self.body()
        self.reply(200, obj)

    def do_DELETE(self):
        r = self.route()
        with self.store.lock:
            obj = self.store.objects.pop(r[:4], None) if r else None
        if obj is None:
            return self.status(404, "NotFound", self.path)
        self.reply(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})


def start():
    """Starts the server on a free loopback port; returns (server, store, url)."""
    store = Store()
    handler = type("BoundHandler", (Handler,), {"store": store})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, store, f"http://127.0.0.1:{server.server_address[1]}"


def kubeconfig(url, namespace):
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": url}}],
        "users": [{"name": "fake", "user": {"token": "fake"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake",
                                                   "namespace": namespace}}],
    })
