#!/usr/bin/env python3
"""Reads the final stage of a Dockerfile and prints it as bash assignments, for
scripts/images-oci.sh (which builds the same image without a Docker engine).

    python3 scripts/images-oci/dockerfile.py relay/Dockerfile

prints DF_FROM, DF_PACKAGES (what the stage's `apt-get install` line installs), DF_COPY_FROM /
DF_COPY_SRC / DF_COPY_DST (each COPY --from), DF_ENV, DF_USER, DF_WORKDIR, DF_EXPOSE,
DF_ENTRYPOINT and DF_CMD, with the ARG defaults substituted. An instruction it does not know how
to reproduce (another RUN, ADD, a COPY from the build context, ...) is printed in DF_UNHANDLED, so
that a change to the Dockerfile stops the script instead of being silently left out.
"""

import json
import re
import shlex
import sys


def logical_lines(text):
    """Instructions with their continuation lines joined; comments and blank lines dropped."""
    out, cur = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not cur and (not stripped or stripped.startswith("#")):
            continue
        if cur and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            cur += stripped[:-1] + " "
            continue
        out.append(cur + stripped)
        cur = ""
    if cur.strip():
        out.append(cur)
    return out


def substitute(value, args):
    def repl(m):
        name = m.group(1) or m.group(2)
        if name not in args or args[name] is None:
            raise SystemExit(f"dockerfile.py: ${{{name}}} has no value (ARG without a default?)")
        return args[name]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", repl, value)


def exec_form(value):
    value = value.strip()
    if value.startswith("["):
        return json.loads(value)
    return ["/bin/sh", "-c", value]


def key_values(value, args):
    """`K=V K2="V 2"` (or the legacy `K V`) as a list of K=V."""
    tokens = shlex.split(value)
    if tokens and "=" not in tokens[0]:
        return [f"{tokens[0]}={substitute(' '.join(tokens[1:]), args)}"]
    return [f"{k}={substitute(v, args)}" for k, v in (t.split("=", 1) for t in tokens)]


def apt_packages(command):
    """The packages of `apt-get update && apt-get install -y --no-install-recommends A B && rm -rf
    /var/lib/apt/lists/*`, or None when the RUN is anything else."""
    parts = [p.strip() for p in command.split("&&")]
    install = [p for p in parts if p.startswith("apt-get install")]
    rest = [p for p in parts if not p.startswith("apt-get install")]
    if len(install) != 1 or any(p not in ("apt-get update", "rm -rf /var/lib/apt/lists/*") for p in rest):
        return None
    return [t for t in shlex.split(install[0])[2:] if not t.startswith("-")]


def main(path):
    with open(path, encoding="utf-8") as f:
        lines = logical_lines(f.read())
    global_args, stage = {}, None
    for line in lines:
        word, _, value = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            stage = {"from": substitute(value.split()[0], global_args), "args": dict(global_args), "body": []}
        elif word == "ARG" and stage is None:
            name, _, default = value.strip().partition("=")
            global_args[name] = default or None
        elif stage is not None:
            stage["body"].append((word, value.strip()))
    if stage is None:
        raise SystemExit(f"dockerfile.py: no FROM in {path}")

    args = stage["args"]
    out = {
        "DF_FROM": stage["from"],
        "DF_PACKAGES": [],
        "DF_COPY_FROM": [],
        "DF_COPY_SRC": [],
        "DF_COPY_DST": [],
        "DF_ENV": [],
        "DF_USER": "",
        "DF_WORKDIR": "",
        "DF_EXPOSE": [],
        "DF_ENTRYPOINT": [],
        "DF_CMD": [],
        "DF_UNHANDLED": [],
    }
    for word, value in stage["body"]:
        if word == "ARG":
            name, _, default = value.partition("=")
            if default:
                args[name] = default
            elif name not in args:
                args[name] = None
        elif word == "RUN" and apt_packages(value) is not None:
            out["DF_PACKAGES"] += apt_packages(value)
        elif word == "COPY":
            tokens = value.split()
            flags = [t for t in tokens if t.startswith("--")]
            paths = [t for t in tokens if not t.startswith("--")]
            source = [f[len("--from=") :] for f in flags if f.startswith("--from=")]
            if len(source) != 1 or len(flags) != 1 or len(paths) != 2:
                out["DF_UNHANDLED"].append(f"COPY {value}")
                continue
            out["DF_COPY_FROM"].append(source[0])
            out["DF_COPY_SRC"].append(paths[0])
            out["DF_COPY_DST"].append(paths[1])
        elif word == "ENV":
            out["DF_ENV"] += key_values(value, args)
        elif word == "USER":
            out["DF_USER"] = substitute(value, args)
        elif word == "WORKDIR":
            out["DF_WORKDIR"] = substitute(value, args)
        elif word == "EXPOSE":
            out["DF_EXPOSE"] += value.split()
        elif word == "ENTRYPOINT":
            out["DF_ENTRYPOINT"] = exec_form(value)
        elif word == "CMD":
            out["DF_CMD"] = exec_form(value)
        else:
            out["DF_UNHANDLED"].append(f"{word} {value}")

    for name, value in out.items():
        if isinstance(value, list):
            print(f"{name}=({' '.join(shlex.quote(v) for v in value)})")
        else:
            print(f"{name}={shlex.quote(value)}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: dockerfile.py DOCKERFILE")
    main(sys.argv[1])
