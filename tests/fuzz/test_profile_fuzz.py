"""The profile loaders under random TOML (150 documents per test): built from every TOML
type (strings with NUL, newlines and control characters, huge, negative and
NaN numbers, dates, arrays, nested and inline tables), the real field names
mixed with random ones, the text then sometimes cut or salted with bytes that
are not UTF-8, loaded through the public loaders (`load_job_profile` with
random ``--set`` items, `load_cluster_profile`, `load_pipeline_profile`,
`validate_file`). Only `ProfileError` may come out, its str one line that
names the file; never another exception."""

from __future__ import annotations

import datetime as dt
import math
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.profiles import (
    ProfileError,
    load_cluster_profile,
    load_job_profile,
    load_pipeline_profile,
    validate_file,
)

FIELDS = ("kind", "name", "description", "command", "launcher", "priority", "retries",
          "workdir", "resources", "nodes", "gpus_per_node", "cpus", "memory_gb", "nodes_with",
          "env", "args", "admins", "known_hosts", "share_logs", "host", "port", "user",
          "identity", "python", "root", "gpus", "slots", "labels", "stages", "profile",
          "after", "set", "max_steps", "lr", "model", "data", "output", "SEED", "LD_PRELOAD",
          "LLMCONSOLE_X", "part")
KINDS = ("train", "compress", "eval", "prepare", "command", "cluster", "pipeline")
ODD_CHARS = "\x00\x01\x08\t\n\r\x1b\x7f\u0085\u2028\u2029\u200b\u202e\ufeff\"\\'$`;|&*~@/-é漢🙂"
BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

text = st.text(alphabet=st.one_of(st.characters(codec="utf-8"), st.sampled_from(ODD_CHARS)),
               max_size=40) | st.sampled_from(["", " ", "-rf", "/", "~", "x" * 129, "@pre",
                                               "/bin/true", "ok", "a" * 2000])
numbers = (st.integers() | st.integers(-(2**64), 2**64)
           | st.floats(allow_nan=True, allow_infinity=True))
dates = st.dates() | st.times() | st.datetimes() | st.datetimes(
    timezones=st.just(dt.timezone.utc))
scalars = st.booleans() | numbers | text | dates | st.sampled_from(KINDS)
keys = st.sampled_from(FIELDS) | text.filter(lambda k: len(k) < 50)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(keys, inner, max_size=4), max_leaves=12)
documents = st.fixed_dictionaries(
    {}, optional={"kind": st.sampled_from(KINDS) | scalars, "name": text | scalars,
                  "command": st.lists(text, max_size=3) | values,
                  "resources": st.dictionaries(keys, values, max_size=4),
                  "env": st.dictionaries(keys, values, max_size=3),
                  "args": st.dictionaries(keys, values, max_size=3),
                  "nodes": st.lists(st.dictionaries(keys, values, max_size=5), max_size=3),
                  "stages": st.lists(st.fixed_dictionaries(
                      {"name": text | st.sampled_from(["a", "b"]),
                       "profile": text | st.just("ok")},
                      optional={"after": values, "set": values}), max_size=3)},
).flatmap(lambda fixed: st.dictionaries(keys, values, max_size=5).map(
    lambda extra: {**extra, **fixed}))
# What may happen to the text once written: nothing, cut short, salted.
damage = st.sampled_from(["none", "none", "none", "cut", "bytes", "bom", "dup"])


def toml_string(value: str) -> str:
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_key(key: str) -> str:
    return key if BARE_KEY.fullmatch(key) else toml_string(key)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return value.isoformat()


def toml_document(doc: dict[str, Any]) -> str:
    """Scalars and arrays first, then each table as a [section] (an array of
    tables as [[section]] items) so that the loaders also meet real sections."""
    lines = [f"{toml_key(k)} = {toml_value(v)}" for k, v in doc.items()
             if not isinstance(v, dict) and not (v and isinstance(v, list)
                                                 and all(isinstance(i, dict) for i in v))]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append(f"[{toml_key(k)}]")
            lines += [f"{toml_key(kk)} = {toml_value(vv)}" for kk, vv in v.items()]
        elif v and isinstance(v, list) and all(isinstance(i, dict) for i in v):
            for item in v:
                lines.append(f"[[{toml_key(k)}]]")
                lines += [f"{toml_key(kk)} = {toml_value(vv)}" for kk, vv in item.items()]
    return "\n".join(lines) + "\n"


def damaged(data: bytes, how: str, where: int) -> bytes:
    cut = where % (len(data) + 1)
    if how == "cut":
        return data[:cut]
    if how == "bytes":
        return data[:cut] + b"\xff\xfe\xc3" + data[cut:]
    if how == "bom":
        return b"\xef\xbb\xbf" + data
    if how == "dup":
        return data + data
    return data


def assert_only_profile_errors(path: Path, load: Callable[[], object]) -> None:
    try:
        load()
    except ProfileError as err:
        line = str(err)
        assert "\n" not in line and "\r" not in line, line
        assert not any(unicodedata.category(ch) in ("Cc", "Zl", "Zp", "Cs") for ch in line), line
        # a --set item is read before the file: its error names the item
        assert str(path) in line or line.startswith("--set "), line
        assert all("\n" not in e for e in err.errors)


def write(folder: Path, stem: str, doc: dict[str, Any], how: str, where: int) -> Path:
    path = folder / f"{stem}.toml"
    path.write_bytes(damaged(toml_document(doc).encode("utf-8"), how, where))
    return path


@SETTINGS
@given(doc=documents, how=damage, where=st.integers(0, 10_000),
       stem=st.sampled_from(["job", "-rf", "a b", "é漢", "x" * 200, "$(id)"]),
       sets=st.lists(text.map(lambda t: t if "=" in t else t + "=" + t), max_size=3)
       | st.lists(st.sampled_from(["name=\x00", "resources.cpus=-1", "env.X=1", "a..b=1",
                                   "args.lr=nan", "kind=cluster", "=", "priority=9e99"]),
                  max_size=3))
def test_job_profiles_fail_only_with_a_profile_error(doc: dict[str, Any], how: str, where: int,
                                                     stem: str, sets: list[str]) -> None:
    folder = Path(tempfile.mkdtemp(prefix="llc-fuzz-"))
    try:
        path = write(folder, stem, doc, how, where)
        assert_only_profile_errors(path, lambda: load_job_profile(str(path), sets,
                                                                  dirs=[folder]))
        assert_only_profile_errors(path, lambda: validate_file(path))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@SETTINGS
@given(doc=documents, how=damage, where=st.integers(0, 10_000),
       kind=st.sampled_from(["cluster", "pipeline", None]))
def test_cluster_and_pipeline_profiles_fail_only_with_a_profile_error(
        doc: dict[str, Any], how: str, where: int, kind: str | None) -> None:
    folder = Path(tempfile.mkdtemp(prefix="llc-fuzz-"))
    try:
        (folder / "ok.toml").write_text('kind = "command"\ncommand = ["/bin/true"]\n')
        if kind is not None:
            doc = {**doc, "kind": kind}
        path = write(folder, "prof", doc, how, where)
        assert_only_profile_errors(path, lambda: load_cluster_profile(str(path)))
        assert_only_profile_errors(path, lambda: load_pipeline_profile(str(path),
                                                                       dirs=[folder]))
        assert_only_profile_errors(path, lambda: validate_file(path))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
