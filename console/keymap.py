"""The user's key remapping: `$XDG_CONFIG_HOME/llmconsole/keys.toml`
(`~/.config/llmconsole/keys.toml` when XDG_CONFIG_HOME is unset), one
section per screen:

    [dashboard]            # or [keys], the first format: the same section
    cancel-job = "x"
    show-logs = "L,ctrl+l"

    [job]                  # the job detail (its tabs, back)
    charts = "v"

    [logs]                 # the job detail's log view
    search = "s"

    [compare]              # the compare screen
    x = "t"

Each name is a binding id (the dashboard's as they are, "cancel-job"; a
section's without its prefix: `search` in [logs] is the binding
"logs.search"; the README lists them, `?` shows the keys bound now), each
value a key or a comma-separated list of keys in Textual's names ("x",
"ctrl+x", "f5", "question_mark", "/"). `load` checks the whole file: a file
that does not parse, an unknown section or id, a value that is not a key, or
two ids of one screen on one key (a remapped key clashing with another
binding's default; [job] and [logs] are one screen) is a problem, said in
one line naming the file, the entry and the fix, and then no entry of the
file applies (the defaults stay). No file: no keymap, no problem. The app
applies a good keymap with `App.set_keymap`.
"""

from __future__ import annotations

import os
import sys
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: Section -> the prefix of its binding ids ("" for the dashboard's).
SECTIONS = {"dashboard": "", "job": "job.", "logs": "logs.", "compare": "compare."}
#: Section -> the screen its keys are pressed on (a clash is within one).
SCREEN_OF = {"dashboard": "dashboard", "job": "job", "logs": "job", "compare": "compare"}
#: The first format's one section: the dashboard's.
LEGACY = "keys"
#: Textual's names of the characters whose Unicode names it shortens.
_REPLACED = {"solidus": "slash", "reverse_solidus": "backslash", "commercial_at": "at",
             "hyphen_minus": "minus", "plus_sign": "plus", "low_line": "underscore"}
_NAMED = frozenset({"escape", "enter", "tab", "space", "backspace", "delete", "insert",
                    "home", "end", "pageup", "pagedown", "up", "down", "left", "right",
                    *(f"f{n}" for n in range(1, 25))})
_MODIFIERS = frozenset({"ctrl", "shift", "alt", "meta", "super", "hyper"})


def keys_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "llmconsole" / "keys.toml"


def section_of(binding_id: str) -> str:
    """The keys.toml section of a binding id ("logs.search" -> "logs")."""
    head, dot, _ = binding_id.partition(".")
    return head if dot and head in SECTIONS and head != "dashboard" else "dashboard"


def entry(binding_id: str) -> str:
    """A binding id as keys.toml writes it: "cancel-job", "[logs] search"."""
    section = section_of(binding_id)
    return binding_id if section == "dashboard" else \
        f"[{section}] {binding_id[len(SECTIONS[section]):]}"


def _character(key: str) -> str:
    if len(key) == 1 and not key.isalnum():
        name = unicodedata.name(key, key).lower().replace(" ", "_").replace("-", "_")
        return _REPLACED.get(name, name)
    return key


def normalize(keys: str) -> str:
    """Textual's long names for single characters ("?" -> "question_mark",
    "/" -> "slash"), so a clash is found whichever way a key is written."""
    return ",".join(_character(k.strip()) for k in keys.split(","))


def _valid_key(key: str) -> bool:
    """A key Textual can bind: a character, or a name ("f5", "pageup",
    "question_mark"), after modifiers ("ctrl+x")."""
    *modifiers, base = key.split("+") if len(key) > 1 else [key]
    if not base or any(m not in _MODIFIERS for m in modifiers):
        return False
    if len(base) == 1:
        return base.isprintable() and base != " "
    if base in _NAMED or base in _REPLACED.values():
        return True
    try:
        unicodedata.lookup(base.replace("_", " "))
    except KeyError:
        return False
    return True


def _entries(table: Mapping[str, Any], path: Path) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Section -> its entries, [keys] read as [dashboard] (and a section
    written inside it, `job.back = "b"`, as that section)."""
    sections: dict[str, dict[str, Any]] = {}
    for name, value in table.items():
        section = "dashboard" if name == LEGACY else name
        if section not in SECTIONS:
            if not isinstance(value, dict):
                return {}, (f"{path}: {name} = {value!r} is outside a section; put it under"
                            f" one of {_section_list()}")
            return {}, f"{path}: unknown section [{name}] (sections: {_section_list()})"
        if not isinstance(value, dict):
            return {}, f"{path}: {name} must be a section [{name}] of id = \"key\""
        for ident, keys in value.items():
            if section == "dashboard" and isinstance(keys, dict) and ident in SECTIONS:
                sections.setdefault(ident, {}).update(keys)  # [keys] job.back = "b"
            else:
                sections.setdefault(section, {})[ident] = keys
    return sections, None


def _section_list() -> str:
    return ", ".join(f"[{s}]" for s in SECTIONS) + f" ([{LEGACY}] is [dashboard])"


def load(defaults: Mapping[str, str], path: Path | None = None
         ) -> tuple[dict[str, str], str | None]:
    """(the keymap to apply, binding id -> keys; the one-line problem or
    None). `defaults` maps every binding id to its default keys."""
    path = path or keys_file()
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, None
    except OSError as exc:
        return {}, f"{path}: cannot be read ({exc.strerror}); the default keys apply"
    fix = f"fix {path}; the default keys apply"
    try:
        table = tomllib.loads(raw)
    except tomllib.TOMLDecodeError as exc:
        return {}, f"{path}: not TOML ({exc}); {fix}"
    sections, problem = _entries(table, path)
    if problem:
        return {}, f"{problem}; {fix}"
    keymap: dict[str, str] = {}
    for section, entries in sections.items():
        prefix = SECTIONS[section]
        ids = sorted(i[len(prefix):] for i in defaults if section_of(i) == section)
        for name, value in entries.items():
            ident = prefix + name if not (section == "dashboard" and name in defaults) else name
            if ident not in defaults or section_of(ident) != section:
                where = "" if section == "dashboard" else f" in [{section}]"
                return {}, (f"{path}: unknown key id {name!r}{where} (ids: {', '.join(ids)});"
                            f" {fix}")
            if not isinstance(value, str) or \
                    not all(_valid_key(normalize(k)) for k in value.split(",")):
                return {}, (f"{path}: {entry(ident)} = {value!r} is not a key like \"x\", "
                            f"\"ctrl+x\", \"f5\" or \"question_mark\"; {fix}")
            keymap[ident] = normalize(value)
    owner: dict[tuple[str, str], str] = {}
    for ident in sorted(defaults):
        screen = SCREEN_OF[section_of(ident)]
        for key in (keymap.get(ident) or normalize(defaults[ident])).split(","):
            if (screen, key) in owner:
                first, second = sorted((owner[screen, key], ident), key=lambda i: i not in keymap)
                return {}, (f"{path}: {entry(first)} = {key!r} clashes with {entry(second)}"
                            f" (also {key!r}); choose another key or remap {entry(second)} too;"
                            f" {fix}")
            owner[screen, key] = ident
    return keymap, None
