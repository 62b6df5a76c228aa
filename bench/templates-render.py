#!/usr/bin/env python3
"""Stand-in for provision's renderer, for bench/templates-check.sh only.

Renders templates/<service>/ into OUT/ the way the contract in templates/README.md
says the Rust renderer does: every file except template.toml is a minijinja
template (strict undefined, auto-escape off, trailing newline kept), paths are
kept as they are, and the context is the manifest's vars (defaults, then the
--set overrides), `service`, `host`, `uses` and `clients`.

It uses the minijinja Python binding (the same Rust engine) when it is
importable, else jinja2 with StrictUndefined.

    templates-render.py TEMPLATES SERVICE OUT --context JSON [--set k=v ...]

JSON: {"host": {"name": .., "address": ..},
       "uses": {"rails": {"address": .., "port": .., "url_host": ..}},
       "clients": ["10.0.0.5"]}
"""
import argparse
import json
import os
import shlex
import sys
import tomllib


def make_renderer():
    try:
        import minijinja

        env = minijinja.Environment(
            undefined_behavior="strict",
            keep_trailing_newline=True,
            auto_escape_callback=lambda name: False,
        )
        # The Rust renderer's `shell` filter (shlex there, shlex here).
        env.add_filter("shell", lambda v: shlex.quote(str(v)))
        return "minijinja", lambda name, source, ctx: env.render_str(source, name=name, **ctx)
    except ImportError:
        import jinja2

        env = jinja2.Environment(
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            autoescape=False,
        )
        env.filters["shell"] = lambda v: shlex.quote(str(v))
        return "jinja2", lambda name, source, ctx: env.from_string(source).render(**ctx)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("templates")
    parser.add_argument("service")
    parser.add_argument("out")
    parser.add_argument("--context", default="{}")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()

    folder = os.path.join(args.templates, args.service)
    with open(os.path.join(folder, "template.toml"), "rb") as f:
        manifest = tomllib.load(f)
    for key in ("description", "port", "upstream"):
        if key not in manifest:
            sys.exit(f"{args.service}/template.toml: missing key {key}")

    values = {}
    for name, spec in manifest.get("vars", {}).items():
        if "default" in spec:
            values[name] = spec["default"]
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in manifest.get("vars", {}):
            sys.exit(f"{args.service}: unknown var {name}")
        values[name] = value
    missing = [n for n in manifest.get("vars", {}) if n not in values]
    if missing:
        sys.exit(f"{args.service}: required vars without a value: {', '.join(missing)}")

    extra = json.loads(args.context)
    ctx = dict(values)
    ctx["service"] = {"name": args.service}
    ctx["host"] = extra.get("host", {"name": "local", "address": "127.0.0.1"})
    ctx["uses"] = extra.get("uses", {})
    ctx["clients"] = extra.get("clients", [])

    engine, render = make_renderer()
    count = 0
    for root, _dirs, files in os.walk(folder):
        for file in sorted(files):
            src = os.path.join(root, file)
            rel = os.path.relpath(src, folder)
            if rel == "template.toml":
                continue
            with open(src, encoding="utf-8") as f:
                source = f.read()
            try:
                text = render(rel, source, ctx)
            except Exception as e:  # strict undefined and syntax errors land here
                sys.exit(f"{args.service}/{rel}: {e}")
            dst = os.path.join(args.out, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with open(dst, "w", encoding="utf-8") as f:
                f.write(text)
            count += 1
    print(f"rendered {args.service}: {count} files with {engine}")


if __name__ == "__main__":
    main()
