"""Evaluates every `x-kubernetes-validations` CEL rule of a CRD offline, as the kube-apiserver
would on create (and on update, for transition rules), with cel-python (`celpy`): an oracle that
shares no code with the operator or with cel-go.

  cel_rules.py CRD --schema STRICT_JSON --accept FILE... --refuse FILE...

What the apiserver does and this models: the stored version's openAPIV3Schema is walked together
with the object (properties, array items, additionalProperties); each rule runs with `self` bound
to the value at the node that declares it, typed by the schema (integer -> int, number -> double,
date/date-time -> timestamp, duration, byte -> bytes; property names escaped as the apiserver
does); a rule on an absent or null field is not run, and a null field is absent for `has()`.
Structural defaults (`default:`) are applied first, to the old object too. Rules that use
`oldSelf` (transition rules) are skipped on create and reported as skipped; a file with two YAML
documents is an update (the stored object, then the new one; with the status subresource the new
object keeps the stored status) and runs them where the old value correlates (properties, map
keys, list-type=map keys). A failing rule yields its `message` (or `messageExpression`) at the
node's path (+ `fieldPath`).

Before anything runs, every rule must compile, name only fields its node's schema declares (the
apiserver's type check refuses `has(self.adress)` when the CRD is applied), and call only functions
cel-python implements (a Kubernetes CEL library function it lacks is reported, not guessed).

Cases: every --accept file must pass every rule and the strict schema (--schema, from
`checks.py crd-schema`). Every --refuse file must pass the schema and fail exactly one rule, with
the message and path its header names:
    # message: <the rule's message, exactly>
    # path: <field path, e.g. spec.network.turn>
and every rule of the CRD must be the one refused by at least one --refuse file.

Exit status 1 with the problems on stderr, 0 and one line on stdout otherwise.
"""

import argparse
import base64
import copy
import json
import re
import sys
import time

import celpy
import celpy.evaluation
import jsonschema
import lark
import yaml
from celpy import celtypes

MACROS = {"all", "exists", "exists_one", "map", "filter"}
# Kubernetes' CEL libraries (https://kubernetes.io/docs/reference/using-api/cel/) beyond the
# standard definitions cel-python implements: a rule using one cannot be evaluated here.
K8S_LIBRARY = {
    "charAt", "indexOf", "lastIndexOf", "lowerAscii", "upperAscii", "replace", "split", "substring",
    "trim", "join", "format", "quote", "reverse", "isSorted", "sum", "min", "max", "find", "findAll",
    "url", "isURL", "getScheme", "getHost", "getHostname", "getPort", "getEscapedPath", "getQuery",
    "ip", "isIP", "cidr", "isCIDR", "quantity", "isQuantity", "sets", "optional", "orValue", "value",
    "hasValue", "or", "of", "none", "ofNonZeroValue", "semver", "isSemver", "dyn", "base64",
    "strings", "math", "lists", "flatten", "range", "distinct", "sort", "sortBy", "slice", "first",
    "last", "greatest", "least", "abs", "sign", "ceil", "floor", "round", "trunc", "isInf", "isNaN",
    "isFinite", "bitAnd", "bitOr", "bitXor", "bitNot", "bitShiftLeft", "bitShiftRight",
}
KNOWN_FUNCTIONS = set(celpy.evaluation.base_functions) | MACROS | {"has"}
RULE_KEYS = {"rule", "message", "messageExpression", "reason", "fieldPath", "optionalOldSelf"}
# CEL reserved words: a property with one of these names is `__name__` in a rule.
CEL_RESERVED = {
    "true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function",
    "if", "import", "let", "loop", "package", "namespace", "return", "var", "void", "while",
}
ROOT_META = {"name", "generateName"}  # the only metadata fields a rule can read


class Problem(Exception):
    pass


def escape(name):
    """A property name as a rule spells it (apiextensions' CEL escaping)."""
    if name in CEL_RESERVED:
        return f"__{name}__"
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) and "__" not in name:
        return name
    out = name.replace("__", "__underscores__")
    for ch, word in (".", "__dot__"), ("-", "__dash__"), ("/", "__slash__"):
        out = out.replace(ch, word)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", out):
        return None  # not reachable by a field selection
    return out


def is_object(s):
    return s.get("type") == "object" and "properties" in s


def is_map(s):
    return s.get("type") == "object" and isinstance(s.get("additionalProperties"), dict)


# --- rules ------------------------------------------------------------------------------------


class Rule:
    def __init__(self, node_path, schema, spec, index, env):
        self.node_path, self.schema, self.spec, self.index = node_path, schema, spec, index
        self.rule = spec.get("rule", "")
        self.message = spec.get("message") or f"failed rule: {self.rule}"
        self.field_path = spec.get("fieldPath", "")
        self.where = f"{node_path or '<root>'} x-kubernetes-validations[{index}]"
        try:
            self.ast = env.compile(self.rule)
            self.program = env.program(self.ast)
            self.message_program = None
            if "messageExpression" in spec:
                self.message_program = env.program(env.compile(spec["messageExpression"]))
        except celpy.CELParseError as e:
            raise Problem(f"{self.where}: rule does not compile: {self.rule!r}\n{e}") from None
        # A transition rule is one that reads the variable oldSelf (the apiserver's definition).
        self.transition = any(
            isinstance(t, lark.Tree) and t.data == "ident" and str(t.children[0]) == "oldSelf" for t in self.ast.iter_subtrees()
        )

    def __str__(self):
        return f"{self.where} ({self.message!r})"


def collect_rules(schema, env, path="", out=None):
    out = [] if out is None else out
    for i, spec in enumerate(schema.get("x-kubernetes-validations", [])):
        unknown = set(spec) - RULE_KEYS
        if unknown:
            raise Problem(f"{path or '<root>'} x-kubernetes-validations[{i}]: unknown keys {sorted(unknown)}")
        if spec.get("optionalOldSelf"):
            raise Problem(f"{path or '<root>'} x-kubernetes-validations[{i}]: optionalOldSelf is not modelled (cel-python has no optional types)")
        out.append(Rule(path, schema, spec, i, env))
    for name, prop in schema.get("properties", {}).items():
        collect_rules(prop, env, f"{path}.{name}" if path else name, out)
    if isinstance(schema.get("items"), dict):
        collect_rules(schema["items"], env, f"{path}[*]", out)
    if isinstance(schema.get("additionalProperties"), dict):
        collect_rules(schema["additionalProperties"], env, f"{path}[*]", out)
    return out


# Static check: the field selections and functions of a rule, against its node's schema (what
# the apiserver's CEL type check refuses when the CRD is applied).
DYN = object()  # a value whose schema is not known here (a literal, an int-or-string, ...)


def check_rule(rule):
    problems = []
    root = rule.node_path == ""

    def field(schema, name, at_root):
        if schema is DYN:
            return DYN
        if at_root and name in ("apiVersion", "kind"):
            return {"type": "string"}
        if at_root and name == "metadata":
            return {"type": "object", "properties": {n: {"type": "string"} for n in ROOT_META}}
        if is_object(schema):
            for prop_name, prop in schema["properties"].items():
                if escape(prop_name) == name:
                    return prop
            problems.append(f"undefined field '{name}' (the schema declares {', '.join(sorted(schema['properties']))})")
            return DYN
        if is_map(schema):
            return schema["additionalProperties"]
        if schema.get("type") in ("string", "integer", "number", "boolean", "array"):
            problems.append(f"field selection '.{name}' on a {schema['type']}")
        return DYN

    def elem(schema):
        if schema is DYN:
            return DYN
        if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
            return schema["items"]
        if is_map(schema) or is_object(schema):
            return {"type": "string"}  # comprehensions over a map range over its keys
        return DYN

    def child(tree, name):
        return next((c for c in tree.children if isinstance(c, lark.Tree) and c.data == name), None)

    def args(tree):
        ex = child(tree, "exprlist")
        return ex.children if ex else []

    def walk(t, scope):
        """Returns the schema of the expression t (or DYN) after checking it."""
        if isinstance(t, lark.Token):
            return DYN
        kind = t.data
        if kind == "ident":
            name = str(t.children[0])
            return scope.get(name, DYN)
        if kind == "member_dot":
            base, name = t.children[0], str(t.children[1])
            s = walk(base, scope)
            return field(s, name, at_root=root and is_self(base))
        if kind == "member_index":
            s = walk(t.children[0], scope)
            walk(t.children[1], scope)
            if s is DYN:
                return DYN
            if s.get("type") == "array":
                return s.get("items", DYN)
            if is_map(s):
                return s["additionalProperties"]
            return DYN
        if kind in ("member_dot_arg", "ident_arg"):
            if kind == "member_dot_arg":
                target, name = t.children[0], str(t.children[1])
            else:
                target, name = None, str(t.children[0])
            if name not in KNOWN_FUNCTIONS:
                what = "in Kubernetes' CEL environment, not implemented by cel-python" if name in K8S_LIBRARY else "undeclared function (a typo?)"
                problems.append(f"'{name}': {what}")
            target_schema = walk(target, scope) if target is not None else DYN
            a = args(t)
            if name in MACROS and target is not None and a:
                inner = dict(scope)
                names = [str(v) for v in a[0].scan_values(lambda v: isinstance(v, lark.Token) and v.type == "IDENT")]
                if names:
                    inner[names[0]] = elem(target_schema)
                for x in a[1:]:
                    walk(x, inner)
                return DYN
            for x in a:
                walk(x, scope)
            return DYN
        result = DYN
        for c in t.children:
            r = walk(c, scope)
            if len(t.children) == 1:
                result = r
        return result

    def is_self(tree):
        idents = [v for v in tree.scan_values(lambda v: isinstance(v, lark.Token) and v.type == "IDENT")]
        return len(idents) == 1 and idents[0] in ("self", "oldSelf")

    walk(rule.ast, {"self": rule.schema, "oldSelf": rule.schema})
    return [f"{rule.where}: {p} in rule {rule.rule!r}" for p in problems]


# --- values -----------------------------------------------------------------------------------


def default(x, s):
    """Structural defaulting, as apiextensions-apiserver's defaulting.Default."""
    if not isinstance(s, dict):
        return

    def non_nullable_null(v, sub):
        return v is None and isinstance(sub, dict) and not sub.get("nullable") and "default" in sub

    if isinstance(x, dict):
        for k, prop in s.get("properties", {}).items():
            if "default" in prop and (k not in x or non_nullable_null(x[k], prop)):
                x[k] = copy.deepcopy(prop["default"])
        add = s.get("additionalProperties")
        for k in list(x):
            if k in s.get("properties", {}):
                default(x[k], s["properties"][k])
            elif isinstance(add, dict):
                if non_nullable_null(x[k], add):
                    x[k] = copy.deepcopy(add["default"])
                default(x[k], add)
    elif isinstance(x, list) and isinstance(s.get("items"), dict):
        for i in range(len(x)):
            if non_nullable_null(x[i], s["items"]):
                x[i] = copy.deepcopy(s["items"]["default"])
            default(x[i], s["items"])


def prune_nulls(x, s):
    """Nulls of fields that are not nullable (and have no default) are dropped by the apiserver."""
    if isinstance(x, dict) and isinstance(s, dict):
        props = s.get("properties", {})
        for k in list(x):
            sub = props.get(k) if k in props else s.get("additionalProperties")
            if x[k] is None and isinstance(sub, dict) and not sub.get("nullable"):
                del x[k]
            elif isinstance(sub, dict):
                prune_nulls(x[k], sub)
    elif isinstance(x, list) and isinstance(s, dict) and isinstance(s.get("items"), dict):
        for v in x:
            prune_nulls(v, s["items"])


def to_cel(v, s):
    """A JSON value as the apiserver hands it to CEL, typed by its schema."""
    if v is None:
        return None
    s = s if isinstance(s, dict) else {}
    t = s.get("type")
    if isinstance(v, dict):
        if is_object(s):
            props = s["properties"]
            out = {}
            for k, x in v.items():
                if x is None:
                    continue  # a null field is absent for has() (apiextensions CEL)
                if k in props:
                    name = escape(k)
                    if name is not None:
                        out[celtypes.StringType(name)] = to_cel(x, props[k])
                else:  # kept only under x-kubernetes-preserve-unknown-fields
                    out[celtypes.StringType(k)] = celpy.json_to_cel(x)
            return celtypes.MapType(out)
        if is_map(s):
            add = s["additionalProperties"]
            return celtypes.MapType({celtypes.StringType(k): to_cel(x, add) for k, x in v.items() if x is not None})
        return celpy.json_to_cel(v)
    if isinstance(v, list):
        return celtypes.ListType([to_cel(x, s.get("items")) for x in v])
    if isinstance(v, bool):
        return celtypes.BoolType(v)
    if t == "number" and isinstance(v, (int, float)):
        return celtypes.DoubleType(v)
    if isinstance(v, int):
        return celtypes.IntType(v)
    if isinstance(v, float):
        return celtypes.DoubleType(v)
    if isinstance(v, str) and t == "string":
        fmt = s.get("format")
        if fmt in ("date", "date-time"):
            return celtypes.TimestampType(v if "T" in v else v + "T00:00:00Z")
        if fmt == "duration":
            return celtypes.DurationType(v)
        if fmt == "byte":
            return celtypes.BytesType(base64.b64decode(v))
    return celpy.json_to_cel(v)


# --- evaluation -------------------------------------------------------------------------------


class Failure:
    def __init__(self, rule, path, message):
        self.rule, self.path, self.message = rule, path, message

    def __str__(self):
        return f"{self.path or '<root>'}: {self.message}  [{self.rule.where}: {self.rule.rule}]"


def error_text(e):
    text = str(e.args[0] if isinstance(e, celpy.CELEvalError) and e.args else e)
    return text.split(" (in activation")[0][:200]


def join(path, step):
    return f"{path}.{step}" if path else step


def evaluate(rules_at, schema, new, old, path, failures, skipped, node_path=""):
    """Walks `new` (and the correlated `old`, or None) with the schema, running each node's rules."""
    if new is None:
        return  # absent or null: the node's rules are not run
    for rule in rules_at.get(id(schema), []):
        if rule.transition and old is None:
            skipped.append((rule, path))
            continue
        act = {"self": to_cel(new, schema)}
        if rule.transition:
            act["oldSelf"] = to_cel(old, schema)
        at = join(path, rule.field_path.lstrip(".")) if rule.field_path else path
        try:
            ok = rule.program.evaluate(act)
        except Exception as e:  # noqa: BLE001 - every evaluation error refuses the object
            ok = e
        if isinstance(ok, Exception):
            failures.append(Failure(rule, at, f"rule evaluation error: {error_text(ok)}"))
        elif not isinstance(ok, celtypes.BoolType):
            failures.append(Failure(rule, at, f"rule returned {type(ok).__name__}, not bool"))
        elif not ok:
            message = rule.message
            if rule.message_program is not None:
                try:
                    message = str(rule.message_program.evaluate(act))
                except Exception:  # noqa: BLE001 - the apiserver falls back to message
                    pass
            failures.append(Failure(rule, at, message))
    if isinstance(new, dict):
        props = schema.get("properties", {})
        add = schema.get("additionalProperties")
        for k, v in new.items():
            sub = props.get(k) if k in props else (add if isinstance(add, dict) else None)
            if sub is None:
                continue
            o = old.get(k) if isinstance(old, dict) else None
            step = join(path, k) if k in props else f"{path}[{k}]"
            evaluate(rules_at, sub, v, o, step, failures, skipped)
    elif isinstance(new, list) and isinstance(schema.get("items"), dict):
        items = schema["items"]
        keys = schema.get("x-kubernetes-list-map-keys") if schema.get("x-kubernetes-list-type") == "map" else None
        old_by_key = {}
        if keys and isinstance(old, list):
            old_by_key = {tuple(json.dumps(o.get(k)) for k in keys): o for o in old if isinstance(o, dict)}
        for i, v in enumerate(new):
            o = old_by_key.get(tuple(json.dumps(v.get(k)) for k in keys)) if keys and isinstance(v, dict) else None
            evaluate(rules_at, items, v, o, f"{path}[{i}]", failures, skipped)


# --- cases ------------------------------------------------------------------------------------


def load_case(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    documents = [d for d in yaml.safe_load_all(text) if d is not None]
    header = {}
    for line in text.splitlines():
        m = re.match(r"#\s*(message|path):\s*(.*?)\s*$", line)
        if m:
            header[m.group(1)] = m.group(2)
    if len(documents) not in (1, 2):
        raise Problem(f"{path}: {len(documents)} YAML documents (one session, or the stored one and the update)")
    return documents, header


def run_case(path, documents, version_schema, rules_at, validator, status_subresource):
    problems = []
    if validator is not None:
        for d in documents:
            for e in sorted(validator.iter_errors(d), key=lambda e: list(e.absolute_path)):
                where = ".".join(str(p) for p in e.absolute_path) or "<root>"
                problems.append(f"{path}: refused by the openAPIV3Schema, not by a rule: {where}: {e.message}")
    objs = []
    for d in documents:
        d = copy.deepcopy(d)
        prune_nulls(d, version_schema)
        default(d, version_schema)
        objs.append(d)
    old, new = (objs[0], objs[1]) if len(objs) == 2 else (None, objs[0])
    if old is not None and status_subresource:
        # An update of the main resource keeps the stored status (the status subresource).
        new.pop("status", None)
        if "status" in old:
            new["status"] = copy.deepcopy(old["status"])
    failures, skipped = [], []
    evaluate(rules_at, version_schema, new, old, "", failures, skipped)
    return problems, failures, skipped


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("crd")
    ap.add_argument("--schema", help="the strict JSON Schema of one object (checks.py crd-schema)")
    ap.add_argument("--accept", nargs="*", default=[], help="objects every rule must accept")
    ap.add_argument("--refuse", nargs="*", default=[], help="objects one rule must refuse (header: # message:, # path:)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each object's outcome")
    a = ap.parse_args()
    started = time.monotonic()

    with open(a.crd, encoding="utf-8") as f:
        (crd,) = [d for d in yaml.safe_load_all(f) if d and d.get("kind") == "CustomResourceDefinition"]
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    schema = version["schema"]["openAPIV3Schema"]
    status_subresource = "status" in (version.get("subresources") or crd["spec"].get("subresources") or {})
    env = celpy.Environment()
    problems = []
    try:
        rules = collect_rules(schema, env)
    except Problem as e:
        print(f"  {e}", file=sys.stderr)
        sys.exit(1)
    for rule in rules:
        problems += check_rule(rule)
    rules_at = {}
    for rule in rules:
        rules_at.setdefault(id(rule.schema), []).append(rule)

    validator = None
    if a.schema:
        with open(a.schema, encoding="utf-8") as f:
            validator = jsonschema.Draft4Validator(json.load(f))

    covered = set()
    transition_runs = 0
    skipped_total = 0
    case_problems = []
    # A rule that refuses objects it must let through usually does so in many files: one line
    # per rule, not per file.
    wrongly_refused = {}  # rule -> [(file, failure)]
    for path in a.accept + a.refuse:
        try:
            documents, header = load_case(path)
        except Problem as e:
            case_problems.append(str(e))
            continue
        schema_problems, failures, skipped = run_case(path, documents, schema, rules_at, validator, status_subresource)
        case_problems += schema_problems
        skipped_total += len(skipped)
        if len(documents) == 2:
            transition_runs += 1
        if a.verbose:
            print(f"{path}: " + ("; ".join(map(str, failures)) or "accepted")
                  + (f" (skipped: {', '.join(r.where for r, _ in skipped)})" if skipped else ""))
        if path in a.accept:
            for f in failures:
                wrongly_refused.setdefault(f.rule, []).append((path, f))
            continue
        want_message, want_path = header.get("message"), header.get("path")
        if want_message is None or want_path is None:
            case_problems.append(f"{path}: no '# message: ...' and '# path: ...' header naming the rule it must fail")
            continue
        hit = [f for f in failures if f.message == want_message and (f.path or "<root>") == want_path]
        for f in failures:
            if f not in hit:
                wrongly_refused.setdefault(f.rule, []).append((path, f))
        if hit:
            covered.add(hit[0].rule)
        elif failures:
            case_problems.append(f"{path}: must be refused at {want_path} with {want_message!r}; refused only as above")
        else:
            case_problems.append(f"{path}: accepted, but must be refused at {want_path} with {want_message!r}")
    for rule, hits in wrongly_refused.items():
        files = [f"{p} ({f.path or '<root>'}: {f.message})" for p, f in hits]
        case_problems.insert(0, f"{rule.where} [{rule.rule}] refuses {len(hits)} object(s) it must not "
                             "(examples/ and accepted/ pass every rule; a refused/ file fails only its own): "
                             + "; ".join(files[:4]) + (f"; and {len(files) - 4} more" if len(files) > 4 else ""))
    missing = [f"{rule}: no tests/crd-rules/refused/ file is refused by this rule (add one, with its '# message:' and '# path:')"
               for rule in rules if rule not in covered]

    # Most important last: chart-check.sh shows the tail of the output.
    problems = case_problems + missing + problems
    if problems:
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        sys.exit(1)
    n_transition = sum(r.transition for r in rules)
    print(
        f"{len(rules)} CEL rules ({n_transition} transition) compile and name declared fields; "
        f"{len(a.accept)} objects accepted, {len(a.refuse)} refused each by its one rule "
        f"({transition_runs} updates; {skipped_total} transition-rule runs skipped on create); "
        f"every rule has a refused case [{time.monotonic() - started:.1f}s]"
    )


if __name__ == "__main__":
    main()
