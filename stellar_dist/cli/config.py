"""`stellar-dist config`: the resolved config of a file plus overrides, or every key with its default, its allowed
values and the comment it is declared with (the dataclasses in config.py and each algorithm's `Options`).

    stellar-dist config --config configs/sdss_cpu.yaml ssl.algorithm=softmatch   # the YAML a run would use
    stellar-dist config --keys                                                   # every key and its meaning
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re

import yaml

FIELD_LINE = re.compile(r"^\s+(\w+):[^=#]*(?:=[^#]*)?(?:#\s?(.*))?$")  # `name: type = default  # comment`


def _comments(cls) -> dict[str, str]:
    """{field: its comment} from the class's source. Comment lines under a field continue its comment, unless the
    next field has no comment of its own: then they describe that one (as `sections` in SSLConfig)."""
    comments, last, pending = {}, None, []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
            continue
        match = None if "ClassVar" in line else FIELD_LINE.match(line)  # RANGES / CHOICES are no keys
        if match and match.group(2) is None and pending:
            comments[match.group(1)] = " ".join(pending)
        elif last and pending:
            comments[last] = " ".join([comments.get(last, ""), *pending]).strip()
        pending = []
        last = match.group(1) if match else None
        if match and match.group(2):
            comments[last] = match.group(2).strip()
    if last and pending:
        comments[last] = " ".join([comments.get(last, ""), *pending]).strip()
    return comments


def key_lines() -> list[str]:
    """One line per key: `dotted.key = default  [allowed]  comment`, sections in the order of Config."""
    from ..algorithms import ALGORITHMS
    from ..training.config import CHOICES, RANGES, Config

    lines = []

    def walk(cls, prefix: str) -> None:
        comments = _comments(cls)
        for field in dataclasses.fields(cls):
            if field.name == "sections":
                continue
            default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
            if dataclasses.is_dataclass(default):
                walk(type(default), f"{prefix}{field.name}.")
                continue
            key = prefix + field.name
            choices = CHOICES.get(key)
            allowed = (f"  [{' | '.join(choices)}]" if choices else f"  {RANGES[key]}" if key in RANGES else "")
            lines.append(f"{key} = {default!r}{allowed}  {comments.get(field.name, '')}".rstrip())

    walk(Config, "")
    for name, algorithm in ALGORITHMS.items():
        if algorithm.Options is not None:
            comments, ranges = _comments(algorithm.Options), getattr(algorithm.Options, "RANGES", {})
            for field in dataclasses.fields(algorithm.Options):
                allowed = f"  {ranges[field.name]}" if field.name in ranges else ""
                lines.append(f"ssl.{name}.{field.name} = {field.default!r}{allowed}  "
                             f"{comments.get(field.name, '')}".rstrip())
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", help="YAML config (see configs/); defaults apply to missing keys")
    parser.add_argument("--keys", action="store_true", help="list every key with its default, allowed values "
                        "and meaning instead")
    parser.add_argument("overrides", nargs="*", help="dotted KEY=VALUE overrides, checked as train checks them")
    return parser


def run(args: argparse.Namespace) -> None:
    if args.keys:
        print("\n".join(key_lines()))
        return
    from ..training.config import load_config, to_dict

    print(yaml.safe_dump(to_dict(load_config(args.config, args.overrides)), sort_keys=False), end="")
