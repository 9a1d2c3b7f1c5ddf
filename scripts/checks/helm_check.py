"""Lints the chart with Helm's own linter and validates what it renders.

    python helm_check.py CHART OUT_DIR [VALUES_FILE ...]

For the chart's default values and for each VALUES_FILE (merged over them, as
`helm -f` does):

1. `helm lint` through helm-sdkpy (Helm's Go library). Any message of warning
   severity or worse fails: what `helm lint --strict` fails on.
2. `helm install` through the same library against fake_apiserver (no API
   server exists in CI): Helm renders, orders and sends every object,
   test hooks included, exactly as it would to a cluster.
3. Every object Helm sent or would run as a hook is validated:
   - built-in kinds with kubernetes-validate --strict (unknown fields fail),
     against Kubernetes 1.27 (the oldest the chart supports) and the newest;
   - DcdnCluster against the openAPIV3Schema of the chart's own CRD, and
     written to OUT_DIR for `dcdn-operator render` (helm.sh does that);
   - ServiceMonitor and PrometheusRule, whose schemas kubernetes-validate
     does not ship, against the small schemas below (the fields the chart
     sets, unknown fields refused), and every alert's expression through a
     PromQL parser (promql-parser);
   - any other kind fails.

   and every pod (Pod, Deployment, ...) meets the "restricted" Pod Security
   Standard.

    python helm_check.py --pod-security FILE...

checks only the last point, for any YAML stream (the operator's output).

A VALUES_FILE whose first line is `# fails: TEXT` must instead be refused
by the chart (a `fail` in a template) with a message containing TEXT.

Exits 1 if anything failed; prints one line per check.
"""

import asyncio
import copy
import os
import shutil
import sys
import tempfile

import helm_sdkpy
import jsonschema
import promql_parser
import kubernetes_validate.utils as kv
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fake_apiserver  # noqa: E402

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest known.
K8S_VERSIONS = ("1.27.0", kv.latest_version())
NAMESPACE = "dcdn"
RELEASE = "dcdn"
SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}

# prometheus-operator kinds: the fields the chart sets; anything else fails.
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_META = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                   "labels": _LABELS, "annotations": _LABELS},
    "additionalProperties": False,
}
_DURATION = {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?"
             "(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
MONITORING_SCHEMAS = {
    "ServiceMonitor": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
            "metadata": _META,
            "spec": {
                "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
                "properties": {
                    "selector": {"type": "object", "properties": {"matchLabels": _LABELS},
                                 "additionalProperties": False},
                    "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                        "matchNames": {"type": "array", "items": {"type": "string"}}, "any": {"type": "boolean"}}},
                    "endpoints": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "additionalProperties": False, "properties": {
                            "port": {"type": "string"}, "path": {"type": "string"},
                            "honorLabels": {"type": "boolean"},
                            "interval": _DURATION, "scrapeTimeout": _DURATION}}},
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"},
            "metadata": _META,
            "spec": {"type": "object", "required": ["groups"], "additionalProperties": False, "properties": {
                "groups": {"type": "array", "items": {
                    "type": "object", "required": ["name", "rules"], "additionalProperties": False,
                    "properties": {"name": {"type": "string", "minLength": 1}, "rules": {"type": "array", "items": {
                        "type": "object", "required": ["alert", "expr"], "additionalProperties": False,
                        "properties": {"alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                                       "expr": {"type": "string", "minLength": 1},
                                       "for": _DURATION, "labels": _LABELS, "annotations": _LABELS}}}}}}}},
        },
    },
}


def merge(base, over):
    """Helm's values merge: maps merge key by key, anything else replaces, null deletes."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def lint(chart, overlay):
    """helm lint (warnings count) with the chart's values merged with overlay; returns problems."""
    with tempfile.TemporaryDirectory() as tmp:
        copy_ = os.path.join(tmp, os.path.basename(os.path.abspath(chart)))
        shutil.copytree(chart, copy_)
        if overlay:
            with open(os.path.join(chart, "values.yaml")) as f:
                values = merge(yaml.safe_load(f), overlay)
            with open(os.path.join(copy_, "values.yaml"), "w") as f:
                yaml.safe_dump(values, f, sort_keys=False)
        result = asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration()).run(copy_))
    # helm-sdkpy serialises each message's Go error as {}: only severity and
    # path survive. The install below reports the text of a template error.
    return [f"{SEVERITY.get(m['Severity'], m['Severity'])} in {m['Path']}"
            for m in result.get("Messages") or [] if m["Severity"] >= 2]


def install(chart, overlay):
    """helm install against the fake API server; returns (objects, hooks, notes)."""
    server, store, url = fake_apiserver.start()
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".kubeconfig", delete=False) as f:
            f.write(fake_apiserver.kubeconfig(url, NAMESPACE))
        config = helm_sdkpy.Configuration(namespace=NAMESPACE, kubeconfig=f.name)
        release = asyncio.run(helm_sdkpy.Install(config).run(
            RELEASE, chart, values=overlay or None, wait=False, timeout=60))
    finally:
        server.shutdown()
        os.unlink(f.name)
    objects = [o for o in store.created
               if not (o.get("kind") == "Secret" and o["metadata"]["name"].startswith("sh.helm.release."))]
    hooks = [yaml.safe_load(h["manifest"]) for h in release.get("hooks") or []]
    return objects, hooks, release.get("info", {}).get("notes", "")


def crd_schema(chart):
    with open(os.path.join(chart, "crds", "dcdnclusters.dcdn.io.yaml")) as f:
        crd = yaml.safe_load(f)
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def validate(obj, dcdn_schema):
    """Returns None if obj is valid, else the reason."""
    kind = obj.get("kind")
    try:
        if obj.get("apiVersion", "").startswith("monitoring.coreos.com/"):
            if kind not in MONITORING_SCHEMAS:
                return f"unknown monitoring kind {kind}"
            jsonschema.Draft7Validator(MONITORING_SCHEMAS[kind]).validate(obj)
            for group in obj["spec"].get("groups", []) if kind == "PrometheusRule" else []:
                for rule in group["rules"]:
                    try:
                        promql_parser.parse(rule["expr"])
                    except ValueError as e:
                        return f"alert {rule['alert']}: PromQL does not parse: {e}"
        elif obj.get("apiVersion") == "dcdn.io/v1alpha1" and kind == "DcdnCluster":
            jsonschema.Draft7Validator(dcdn_schema).validate(obj)
        else:
            for version in K8S_VERSIONS:
                kv.validate(obj, version, strict=True)
    except kv.ValidationError as e:
        return f"Kubernetes {e.version}: {'.'.join(str(p) for p in e.path)}: {e.message}"
    except jsonschema.ValidationError as e:
        return f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
    except kv.SchemaNotFoundError:
        return f"no schema for {obj.get('apiVersion')} {kind}"
    return None


def pod_spec_of(obj):
    if obj.get("kind") == "Pod":
        return obj.get("spec", {})
    if obj.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        return obj.get("spec", {}).get("template", {}).get("spec", {})
    return None


def restricted_violations(obj):
    """What keeps a pod from the "restricted" Pod Security Standard (v1.33)."""
    spec = pod_spec_of(obj)
    if spec is None:
        return []
    bad = []
    psc = spec.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            bad.append(key)
    for v in spec.get("volumes", []):
        if "hostPath" in v:
            bad.append(f"hostPath volume {v.get('name')}")
    containers = spec.get("containers", []) + spec.get("initContainers", [])
    for c in containers:
        csc = c.get("securityContext", {})
        name = c.get("name")
        if csc.get("privileged"):
            bad.append(f"{name}: privileged")
        if csc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = csc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            bad.append(f"{name}: capabilities.drop lacks ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append(f"{name}: adds capabilities {caps.get('add')}")
        if not csc.get("runAsNonRoot", psc.get("runAsNonRoot")):
            bad.append(f"{name}: runAsNonRoot is not true")
        if csc.get("runAsUser", psc.get("runAsUser")) == 0:
            bad.append(f"{name}: runAsUser 0")
        seccomp = csc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{name}: seccompProfile is {seccomp}")
    return bad


def check_pod_security(files):
    """--pod-security FILE...: every pod in these YAML streams is restricted."""
    failures = 0
    for path in files:
        with open(path) as f:
            for obj in yaml.safe_load_all(f):
                for v in restricted_violations(obj or {}):
                    print(f"FAIL {path}: {obj['kind']}/{obj['metadata']['name']}: not restricted: {v}")
                    failures += 1
    return 1 if failures else 0


def main():
    if sys.argv[1:2] == ["--pod-security"]:
        return check_pod_security(sys.argv[2:])
    chart, out_dir, *value_files = sys.argv[1:]
    dcdn_schema = crd_schema(chart)
    failures = 0
    for values_file in [None, *value_files]:
        label = values_file or "default values"
        overlay = {}
        if values_file:
            with open(values_file) as f:
                overlay = yaml.safe_load(f) or {}
        # A values file whose first line is `# fails: TEXT` must be refused
        # by the chart with a message containing TEXT.
        expected = None
        if values_file:
            with open(values_file) as f:
                first = f.readline()
            if first.startswith("# fails:"):
                expected = first[len("# fails:"):].strip()
        problems = [] if expected else lint(chart, overlay)
        if problems:
            print(f"FAIL {label}: helm lint: {'; '.join(problems)}")
            failures += 1
        try:
            objects, hooks, notes = install(chart, overlay)
        except helm_sdkpy.HelmError as e:
            if expected and expected in str(e):
                print(f"ok   {label}: refused as it must be ({expected})")
            else:
                print(f"FAIL {label}: helm install (render): {e}")
                failures += 1
            continue
        if expected:
            print(f"FAIL {label}: rendered, but must be refused with '{expected}'")
            failures += 1
            continue
        if not notes.strip():
            print(f"FAIL {label}: NOTES.txt rendered empty")
            failures += 1
        bad = []
        for obj in objects + hooks:
            if obj.get("kind") == "CustomResourceDefinition":
                continue  # crds/ is validated by k8s-schemas.sh
            reason = validate(obj, dcdn_schema)
            if reason:
                bad.append(f"{obj.get('kind')}/{obj['metadata'].get('name')}: {reason}")
            for v in restricted_violations(obj):
                bad.append(f"{obj.get('kind')}/{obj['metadata'].get('name')}: not restricted: {v}")
        for b in bad:
            print(f"FAIL {label}: {b}")
        failures += len(bad)
        clusters = [o for o in objects if o.get("kind") == "DcdnCluster"]
        name = os.path.splitext(os.path.basename(values_file or "default.yaml"))[0]
        for c in clusters:
            path = os.path.join(out_dir, f"{name}-{c['metadata']['name']}.dcdncluster.yaml")
            with open(path, "w") as f:
                yaml.safe_dump(c, f, sort_keys=False)
        sent = [o for o in objects if o.get("kind") != "CustomResourceDefinition"]
        kinds = sorted({o["kind"] for o in sent + hooks})
        if not problems and not bad:
            print(f"ok   {label}: lint clean; {len(sent)} objects + {len(hooks)} test hooks "
                  f"schema-valid, pods restricted ({', '.join(kinds)})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
