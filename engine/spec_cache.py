"""Validated profiles kept between `llmconsole submit` calls, so that a
script looping over the CLI does not pay for pydantic on every call.

Contract
========

- `load(profile, overrides)` returns what `engine.pipelines.load_profile`
  returns for the same arguments (a `JobSpec` or a `PipelineSpec`, every
  check made): from the cache when it holds an entry for exactly these
  inputs and nothing it was made from has changed, else by running that
  loader (pydantic) and storing the result. An invalid profile raises the
  loader's `ProfileError`, the same message, and is never stored.
- An entry's name is the sha256 of the inputs known before anything is
  read: the profile argument, the overrides, the working folder, $HOME and
  $LLMCONSOLE_PROFILES (where profiles are looked up), llmconsole's version
  and a fingerprint of its code and of pydantic's (size and mtime of each
  module file: an editable install changes without a new version). The
  entry records the sha256 of every file the loader read, and the state of
  every folder a lookup searched (a file added there could shadow the one
  found); it is used only when all of them still match.
- A submission that depends on nothing but the profile, its overrides and
  ``--name`` (a single job with no output folder and no ``@`` reference: a
  command job) is kept too, as the API payload `engine.pipelines.prepare`
  made (`store_payload`, checked the same way); `load_payload` gives it
  back without importing engine.model, pipelines or pydantic, so a warm
  `submit` of a command profile costs about what `jobs` does.
- Entries live in ``$XDG_CACHE_HOME/llmconsole/specs`` (default
  ``~/.cache/llmconsole/specs``): folder 0700, files 0600, written to a
  temporary file and renamed. An entry that cannot be read, does not parse,
  does not match, or is not this user's own file is ignored (and replaced):
  the cache is never trusted blindly, and the engine checks every spec it is
  sent again anyway (`engine.spec_check`). Any failure to write is silent:
  the cache only saves time. At most `MAX_ENTRIES` are kept, oldest dropped.
- A profile whose env holds a secret-looking variable (`engine.secrets`) is
  never stored: no copy of a secret on disk, and a ``--set env.X=@env``
  value (from the submitter's environment) is never served stale.

Standard library only at import: pydantic is loaded on a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import engine

TYPE_CHECKING = False  # typing's, without importing typing
if TYPE_CHECKING:
    from typing import Any

    from engine.model import JobSpec, PipelineSpec

FORMAT = 1  # of an entry; a change makes every older entry a miss
MAX_ENTRIES = 256

_ENGINE_DIR = Path(engine.__file__).resolve().parent
# the modules whose code decides what a valid profile is (profiles, spec_rules,
# model, the workloads' options...): all of the engine's own, to be safe
_CODE_DIRS = (_ENGINE_DIR, _ENGINE_DIR / "workloads")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llmconsole" / "specs"


def _stat_sig(path: str) -> list[int] | None:
    """What changes when a file is rewritten or a folder's entries change."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _code_fingerprint() -> list[object]:
    sigs: list[object] = []
    for folder in _CODE_DIRS:
        try:
            with os.scandir(folder) as entries:
                names = sorted(e.name for e in entries if e.name.endswith(".py"))
        except OSError:
            names = []
        sigs += [[name, _stat_sig(os.path.join(folder, name))] for name in names]
    for module in ("pydantic", "pydantic_core"):
        origin = _module_origin(module)
        sigs.append([module, origin, _stat_sig(origin) if origin else None])
    return sigs


def _module_origin(name: str) -> str | None:
    """The file of a top-level module, found without importing it."""
    for entry in sys.path:
        candidate = os.path.join(entry or ".", name, "__init__.py")
        if os.path.isfile(candidate):
            return candidate
    return None


def _key(profile: str, overrides: Sequence[str], payload: bool = False,
         name: str | None = None) -> str:
    inputs = {
        "format": FORMAT,
        "version": engine.__version__,
        "code": _code_fingerprint(),
        "profile": profile,
        "overrides": list(overrides),
        **({"payload": {"name": name}} if payload else {}),
        "cwd": os.getcwd(),
        "home": os.environ.get("HOME", ""),
        "profiles_path": os.environ.get("LLMCONSOLE_PROFILES", ""),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _sha256(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


# ------------------------------------------------------------ (de)serialising
def _to_json(spec: JobSpec | PipelineSpec) -> dict[str, object]:
    from engine.model import PipelineSpec

    if isinstance(spec, PipelineSpec):
        return {"pipeline": {
            "name": spec.name, "description": spec.description,
            "stages": [{"name": s.name, "spec": s.spec.to_dict(),
                        "after": None if s.after is None else list(s.after)}
                       for s in spec.stages]}}
    return {"job": spec.to_dict()}


def _from_json(data: dict[str, object]) -> JobSpec | PipelineSpec:
    """Raises KeyError, TypeError or ValueError for anything malformed."""
    from engine.model import JobSpec, PipelineSpec, StageSpec

    if "job" in data:
        job = data["job"]
        if not isinstance(job, dict):
            raise TypeError("job")
        return JobSpec.from_dict(job)
    pipeline = data["pipeline"]
    if not isinstance(pipeline, dict):
        raise TypeError("pipeline")
    stages = tuple(
        StageSpec(str(s["name"]), JobSpec.from_dict(s["spec"]),
                  None if s["after"] is None else tuple(str(a) for a in s["after"]))
        for s in pipeline["stages"])
    return PipelineSpec(name=str(pipeline["name"]), stages=stages,
                        description=str(pipeline["description"]))


# ------------------------------------------------------------------ entries
def _read_entry(path: Path, key: str) -> Any:
    """The entry's "spec" value when it is this user's, for `key`, and
    everything it was made from is unchanged; else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            return None  # someone else's, or writable by others: not evidence of anything
        with os.fdopen(fd, "rb") as f:
            fd = -1
            entry = json.loads(f.read())
        if entry.get("format") != FORMAT or entry.get("key") != key:
            return None
        for file, digest in entry["files"]:
            if _sha256(file) != digest:
                return None
        for folder, sig in entry["folders"]:
            if _stat_sig(folder) != sig:
                return None
        return entry["spec"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    finally:
        if fd >= 0:
            os.close(fd)


def _write_entry(folder: Path, key: str, entry: dict[str, object]) -> None:
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = folder / f".{key}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(entry).encode())
            os.replace(tmp, folder / f"{key}.json")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _prune(folder)
    except OSError:
        pass


def _prune(folder: Path) -> None:
    entries = []
    with os.scandir(folder) as it:
        for e in it:
            if e.name.endswith(".json"):
                try:
                    entries.append((e.stat().st_mtime_ns, e.path))
                except OSError:
                    pass
    for _mtime, path in sorted(entries)[:-MAX_ENTRIES]:
        try:
            os.unlink(path)
        except OSError:
            pass


def _searched_folders(read: Sequence[str]) -> list[str]:
    """Every folder a profile lookup looks in (engine.profiles: the working
    folder for a path, $LLMCONSOLE_PROFILES, ./profiles, the shipped
    profiles; a pipeline's own folder for its stages), and their parents
    where they do not exist yet."""
    from engine import profiles

    folders = [os.getcwd(), *(str(d) for d in profiles.profile_dirs())]
    folders += [os.path.dirname(f) for f in read]
    for entry in os.environ.get("LLMCONSOLE_PROFILES", "").split(os.pathsep):
        if entry:
            path = os.path.abspath(os.path.expanduser(entry))
            folders += [path, os.path.dirname(path)]
    folders.append(os.path.join(os.getcwd(), "profiles"))
    return list(dict.fromkeys(folders))


def _load_recording(profile: str, overrides: Sequence[str]
                    ) -> tuple[JobSpec | PipelineSpec, list[str]]:
    """The loader's result and every file it opened (an audit hook: the
    files a lookup found, however it found them)."""
    from engine import pipelines, profiles  # noqa: F401  (imported before recording starts)

    opened: list[str] = []
    _recorder.target = opened
    try:
        spec = pipelines.load_profile(profile, overrides)
    finally:
        _recorder.target = None
    return spec, list(dict.fromkeys(os.path.abspath(p) for p in opened))


class _Recorder:
    """The one audit hook of the process (hooks cannot be removed): records
    the paths of files opened while `target` is set."""

    def __init__(self) -> None:
        self.target: list[str] | None = None
        self.installed = False

    def __call__(self, event: str, args: tuple[object, ...]) -> None:
        if self.target is not None and event == "open" and isinstance(args[0], str | bytes):
            path = args[0]
            self.target.append(os.fsdecode(path))


_recorder = _Recorder()


def load(profile: str, overrides: Sequence[str] = ()) -> JobSpec | PipelineSpec:
    """See the module docstring."""
    key = _key(profile, overrides)
    folder = cache_dir()
    cached = _read_entry(folder / f"{key}.json", key)
    if cached is not None:
        try:
            return _from_json(cached)
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
    if not _recorder.installed:
        sys.addaudithook(_recorder)
        _recorder.installed = True
    spec, read = _load_recording(profile, overrides)
    if _holds_secrets(spec):
        return spec  # never a copy of a secret on disk (nor one from --set env.X=@env)
    files = [[f, _sha256(f)] for f in read if os.path.isfile(f)]
    if not files:
        return spec  # nothing recorded (no audit events?): nothing to check an entry by
    try:  # before the folders' states are taken: it may be in one of them
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return spec
    folders = [[d, _stat_sig(d)] for d in _searched_folders(read)]
    _made_from[key] = (files, folders)
    _write_entry(folder, key, {"format": FORMAT, "key": key, "files": files,
                               "folders": folders, "spec": _to_json(spec)})
    return spec


def _holds_secrets(spec: JobSpec | PipelineSpec) -> bool:
    """Whether a job of `spec` has a secret-looking variable in its env
    (`engine.secrets`): such a spec is never stored."""
    from engine import secrets

    jobs = [stage.spec for stage in spec.stages] if hasattr(spec, "stages") else [spec]
    return any(secrets.secret_names(dict(job.env)) for job in jobs)


# what each entry `load` wrote in this process was made from (its files and
# folders), for `store_payload`
_made_from: dict[str, tuple[list[list[Any]], list[list[Any]]]] = {}


def load_payload(profile: str, overrides: Sequence[str], name: str | None
                 ) -> dict[str, Any] | None:
    """The API payload `store_payload` kept for a submit of `profile` with
    these `overrides` and ``--name``, if it still holds; else None."""
    key = _key(profile, overrides, payload=True, name=name)
    cached = _read_entry(cache_dir() / f"{key}.json", key)
    return cached.get("payload") if isinstance(cached, dict) else None


def store_payload(profile: str, overrides: Sequence[str], name: str | None,
                  prepare: Callable[[str, Path], list[dict[str, Any]] | None]) -> None:
    """Keep the payload of a single-job submit when it depends on nothing but
    its inputs: `prepare(stamp, outputs)` (engine.pipelines.prepare with
    that stamp and outputs root, returning the payloads, None when it looked
    up an earlier job's output) gives the same one payload for two different
    stamps and roots. Needs the entry this process's `load` made (or found
    valid) for the same profile and overrides."""
    spec_key = _key(profile, overrides)
    made = _made_from.get(spec_key)
    if made is None:
        made = _provenance(cache_dir() / f"{spec_key}.json", spec_key)
        if made is None:
            return
    first = prepare("a", Path("/nonexistent-a"))
    if first is None or len(first) != 1 or first != prepare("b", Path("/nonexistent-b")):
        return
    key = _key(profile, overrides, payload=True, name=name)
    files, folders = made
    _write_entry(cache_dir(), key, {"format": FORMAT, "key": key, "files": files,
                                    "folders": folders, "spec": {"payload": first[0]}})


def _provenance(path: Path, key: str) -> tuple[list[list[Any]], list[list[Any]]] | None:
    """The files and folders of a valid entry."""
    if _read_entry(path, key) is None:
        return None
    try:
        entry = json.loads(path.read_bytes())
        return entry["files"], entry["folders"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
