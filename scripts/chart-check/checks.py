"""Helpers of scripts/chart-check.sh (run with the venv's Python: PyYAML, promql-parser).

  split RENDERED CORE_OUT MONITORING_OUT   sort `helm template` output: Kubernetes kinds (for
                                           kubernetes-validate) and monitoring.coreos.com kinds
                                           (JSON, for monitoring.mjs); anything else fails
  same-crd RENDERED CRD                    the CRD Helm renders (--include-crds) is the file's
  crd-schema CRD OUT                       the CRD's openAPIV3Schema as a strict JSON Schema
  single-doc FILE...                       each file holds exactly one YAML document
  promql RENDERED DASHBOARD SRC_DIR...     every PromQL expression (alerts, dashboard) parses and
                                           names only metrics the code defines
  dashboard RENDERED DASHBOARD             the dashboard JSON is well-formed for Grafana and the
                                           rendered ConfigMap carries it unchanged
  doc-commands HELM DOC...                 the shell blocks of the docs run where they can here:
                                           `helm install` as `helm template`, `make T` as
                                           `make -n T`, and every local file they name exists

Exit status 1 with the problems on stderr, 0 and one line on stdout otherwise.
"""

import copy
import json
import pathlib
import re
import shlex
import subprocess
import sys

import yaml

MONITORING_GROUP = "monitoring.coreos.com/"
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
# Groups kubernetes-validate has schemas for (the built-in API).
CORE_GROUPS = re.compile(
    r"^(v1|(apps|batch|policy|autoscaling|networking\.k8s\.io|rbac\.authorization\.k8s\.io|"
    r"coordination\.k8s\.io|apiextensions\.k8s\.io|scheduling\.k8s\.io|storage\.k8s\.io|"
    r"admissionregistration\.k8s\.io|events\.k8s\.io|node\.k8s\.io|discovery\.k8s\.io)/\w+)$"
)


def fail(problems):
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    sys.exit(1)


def docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def split(rendered, core_out, mon_out):
    core, mon, problems = [], [], []
    for d in docs(rendered):
        api, kind = d.get("apiVersion", ""), d.get("kind", "")
        name = d.get("metadata", {}).get("name", "?")
        if api.startswith(MONITORING_GROUP) and kind in MONITORING_KINDS:
            mon.append(d)
        elif CORE_GROUPS.match(api):
            core.append(d)
        else:
            problems.append(f"{api} {kind} {name}: no schema to validate this kind against")
    if problems:
        fail(problems)
    with open(core_out, "w", encoding="utf-8") as f:
        yaml.safe_dump_all(core, f, sort_keys=False)
    with open(mon_out, "w", encoding="utf-8") as f:
        json.dump(mon, f)
    print(f"{len(core)} Kubernetes objects, {len(mon)} prometheus-operator objects")


def the_crd(path):
    found = [d for d in docs(path) if d.get("kind") == "CustomResourceDefinition"]
    return found


def same_crd(rendered, crd_file):
    want = the_crd(crd_file)
    got = [d for d in the_crd(rendered) if d["metadata"]["name"] == want[0]["metadata"]["name"]]
    if len(want) != 1 or len(got) != 1:
        fail([f"expected one CRD {want[0]['metadata']['name']} in the rendered chart, found {len(got)}"])
    if got[0] != want[0]:
        fail([f"the CRD helm renders differs from {crd_file}"])
    print(f"helm installs {crd_file} unchanged")


def strict(node):
    """Kubernetes prunes or (kubectl --validate=strict) rejects unknown fields; JSON Schema
    allows them. Close every object schema that lists properties, except where Kubernetes keeps
    unknown fields; turn `nullable` into JSON Schema's null type."""
    if isinstance(node, dict):
        node = {k: strict(v) for k, v in node.items()}
        if node.pop("nullable", False) and "type" in node:
            node["type"] = [node["type"], "null"]
        if (
            node.get("type") == "object"
            and "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [strict(v) for v in node]
    return node


def crd_schema(crd_file, out):
    (crd,) = the_crd(crd_file)
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    schema = strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    group = crd["spec"]["group"]
    schema["$schema"] = "http://json-schema.org/draft-04/schema#"
    schema["properties"]["apiVersion"] = {"enum": [f"{group}/{version['name']}"]}
    schema["properties"]["kind"] = {"enum": [crd["spec"]["names"]["kind"]]}
    schema["properties"]["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}},
    }
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
    with open(out, "w", encoding="utf-8") as f:
        json.dump(schema, f, indent=1)
    print(f"{crd['metadata']['name']} {version['name']}: openAPIV3Schema, unknown fields refused")


def single_doc(*files):
    problems = [f"{f}: {n} YAML documents (one session per file)" for f in files if (n := len(docs(f))) != 1]
    if problems:
        fail(problems)
    print(f"{len(files)} files, one document each")


GRAFANA_VARS = [
    (re.compile(r"\$__rate_interval|\$__interval|\$__range"), "5m"),
    (re.compile(r"\$\{?\w+\}?"), "x"),
]
METRIC = re.compile(r"\blivefilter_[a-z0-9_]+")
HISTOGRAM_SUFFIX = re.compile(r"_(bucket|sum|count)$")


def dashboard_exprs(dash):
    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                yield f"dashboard panel {p.get('title')!r}", t.get("expr", "")
            yield from walk(p.get("panels", []))

    yield from walk(dash["panels"])
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", q)
            yield f"dashboard variable {v['name']}", m.group(1) if m else q


def promql(rendered, dashboard, *src_dirs):
    import promql_parser

    defined = set()
    for d in src_dirs:
        for f in pathlib.Path(d).rglob("*.rs"):
            defined |= set(re.findall(r'"(livefilter_[a-z0-9_]+)"', f.read_text(encoding="utf-8")))
    exprs = []
    for d in docs(rendered):
        if d.get("kind") == "PrometheusRule":
            for g in d["spec"]["groups"]:
                for r in g["rules"]:
                    exprs.append((f"alert {r.get('alert') or r.get('record')}", r["expr"]))
    with open(dashboard, encoding="utf-8") as f:
        exprs += list(dashboard_exprs(json.load(f)))
    problems = []
    for where, expr in exprs:
        text = expr
        for pattern, value in GRAFANA_VARS:
            text = pattern.sub(value, text)
        try:
            promql_parser.parse(text)
        except ValueError as e:
            problems.append(f"{where}: {e}: {expr}")
        for name in METRIC.findall(expr):
            if HISTOGRAM_SUFFIX.sub("", name) not in defined and name not in defined:
                problems.append(f"{where}: {name} is not a metric the relay or operator defines")
    if not exprs:
        problems.append("no PromQL found (is the PrometheusRule rendered?)")
    if problems:
        fail(problems)
    print(f"{len(exprs)} PromQL expressions parse and name only defined metrics")


def dashboard(rendered, dashboard_file):
    with open(dashboard_file, encoding="utf-8") as f:
        text = f.read()
    dash = json.loads(text)
    problems = []
    for key in ("title", "uid", "panels", "templating", "schemaVersion"):
        if key not in dash:
            problems.append(f"no {key!r}")
    ids = []
    var_names = {v["name"] for v in dash.get("templating", {}).get("list", [])}

    def walk(panels):
        for p in panels:
            ids.append(p.get("id"))
            title = p.get("title", "?")
            gp = p.get("gridPos", {})
            if not all(k in gp for k in ("h", "w", "x", "y")) or gp.get("x", 0) + gp.get("w", 0) > 24:
                problems.append(f"panel {title!r}: gridPos {gp}")
            if p.get("type") != "row":
                if not p.get("targets"):
                    problems.append(f"panel {title!r}: no queries")
                for t in p.get("targets", []):
                    if t.get("datasource", {}).get("uid") != "${datasource}":
                        problems.append(f"panel {title!r}: query {t.get('refId')} not on ${{datasource}}")
            if p.get("repeat") and p["repeat"] not in var_names:
                problems.append(f"panel {title!r} repeats over unknown variable {p['repeat']}")
            for used in re.findall(r"\$(\w+)", json.dumps(p.get("targets", []))):
                if not used.startswith("__") and used not in var_names:
                    problems.append(f"panel {title!r} uses unknown variable ${used}")
            walk(p.get("panels", []))

    walk(dash.get("panels", []))
    if len(ids) != len(set(ids)) or None in ids:
        problems.append(f"panel ids not unique: {ids}")
    cms = [d for d in docs(rendered) if d.get("kind") == "ConfigMap" and "livefilter.json" in d.get("data", {})]
    if len(cms) != 1:
        problems.append(f"expected one dashboard ConfigMap in the rendered chart, found {len(cms)}")
    elif json.loads(cms[0]["data"]["livefilter.json"]) != dash:
        problems.append("the rendered ConfigMap does not carry the dashboard unchanged")
    if problems:
        fail(problems)
    print(f"dashboard {dash['uid']!r}: {len(ids)} panels, variables {sorted(var_names)}")


def shell_blocks(text):
    """The commands of every ```sh block: continuation lines joined, comments dropped."""
    for block in re.findall(r"```(?:sh|bash|shell)\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            # `a && b` are two commands; a trailing comment is not part of either.
            for part in re.split(r"\s*&&\s*", line):
                try:
                    words = shlex.split(part, comments=True)
                except ValueError as e:
                    yield part, None, str(e)
                    continue
                if words:
                    yield part, words, None


def local_files(words):
    """The repository paths a command names (examples/..., charts/..., crds/...)."""
    for w in words:
        value = w.split("=", 1)[-1]
        if re.match(r"^(examples|charts|crds|docs|scripts|static)/", value):
            yield value


def doc_commands(helm, *files):
    problems, ran = [], 0
    for f in files:
        for line, words, error in shell_blocks(pathlib.Path(f).read_text()):
            where = f"{f}: {line}"
            if error:
                problems.append(f"{where}: cannot be parsed ({error})")
                continue
            for path in local_files(words):
                if not pathlib.Path(path).exists():
                    problems.append(f"{where}: names {path}, which does not exist")
            if words[0] == "helm" and len(words) > 3 and words[1] in ("install", "upgrade"):
                upgrade_only = ("--install", "--create-namespace", "--wait", "--atomic", "--reuse-values", "--reset-values")
                args = [w for w in words[2:] if w not in upgrade_only]
                cmd = [helm, "template", *args]
            elif words[0] == "make" and len(words) > 1:
                cmd = ["make", "-n", *words[1:]]
            else:
                continue
            ran += 1
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                problems.append(f"{where}: `{' '.join(cmd)}` fails:\n{(done.stderr or done.stdout)[-600:]}")
    if problems:
        fail(problems)
    print(f"{ran} commands of {len(files)} docs run (helm template, make -n); every named file exists")


COMMANDS = {
    "doc-commands": doc_commands,
    "split": split,
    "same-crd": same_crd,
    "crd-schema": crd_schema,
    "single-doc": single_doc,
    "promql": promql,
    "dashboard": dashboard,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    COMMANDS[sys.argv[1]](*sys.argv[2:])
