"""The user's key remapping: `$XDG_CONFIG_HOME/llmconsole/keys.toml`
(`~/.config/llmconsole/keys.toml` when XDG_CONFIG_HOME is unset):

    [keys]
    cancel-job = "x"
    show-logs = "L,ctrl+l"

Each name is a binding id (`binding_ids` of the app lists them, the README
too), each value a key or a comma-separated list of keys in Textual's names
("x", "ctrl+x", "f5", "question_mark"). `load` checks the whole file: a file
that does not parse, an unknown id, a value that is not a key, or two ids
on one key (a remapped key clashing with another binding's default) is a
problem, said in one line naming the file and the fix, and then no entry of
the file applies (the defaults stay). No file: no keymap, no problem. The
app applies a good keymap with `App.set_keymap`.
"""

from __future__ import annotations

import os
import sys
import unicodedata
from collections.abc import Mapping
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def keys_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "llmconsole" / "keys.toml"


def normalize(keys: str) -> str:
    """Textual's long names for single characters ("?" -> "question_mark"),
    so a clash is found whichever way a key is written."""
    out = []
    for key in (k.strip() for k in keys.split(",")):
        if len(key) == 1 and not key.isalnum():
            key = unicodedata.name(key, key).lower().replace(" ", "_").replace("-", "_")
        out.append(key)
    return ",".join(out)


def _valid_key(key: str) -> bool:
    return bool(key) and key.isprintable() and " " not in key


def load(defaults: Mapping[str, str], path: Path | None = None
         ) -> tuple[dict[str, str], str | None]:
    """(the keymap to apply, the one-line problem or None). `defaults` maps
    every binding id to its default keys."""
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
    keys = table.get("keys", {})
    extra = sorted(k for k in table if k != "keys")
    if extra or not isinstance(keys, dict):
        return {}, f"{path}: only a [keys] table of id = \"key\" is read; {fix}"
    unknown = sorted(k for k in keys if k not in defaults)
    if unknown:
        return {}, (f"{path}: unknown key id {unknown[0]!r} (ids: {', '.join(sorted(defaults))});"
                    f" {fix}")
    keymap: dict[str, str] = {}
    for ident, value in keys.items():
        if not isinstance(value, str) or not all(_valid_key(k.strip()) for k in value.split(",")):
            return {}, f"{path}: {ident} = {value!r} is not a key like \"x\" or \"ctrl+x\"; {fix}"
        keymap[ident] = normalize(value)
    owner: dict[str, str] = {}
    for ident in sorted(defaults):
        for key in (keymap.get(ident) or normalize(defaults[ident])).split(","):
            if key in owner:
                first, second = sorted((owner[key], ident), key=lambda i: i not in keymap)
                return {}, (f"{path}: {first} = {key!r} clashes with {second} (also {key!r}); "
                            f"choose another key or remap {second} too; {fix}")
            owner[key] = ident
    return keymap, None
