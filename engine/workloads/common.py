"""What every workload shares: its error type and exit codes, atomic files,
the metrics log (JSON lines plus TensorBoard events), seeding and thread
counts. No model code lives here."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_NO_SPACE = 4


class WorkloadError(Exception):
    """Bad input a user can fix; `str()` names the problem and the fix."""

    exit_code = EXIT_BAD_INPUT


class Diverged(WorkloadError):
    """The loss became NaN or infinite."""

    exit_code = EXIT_DIVERGED


class NoSpace(WorkloadError):
    """A write found its disk full; `str()` names the disk, what is free and
    the fix."""

    exit_code = EXIT_NO_SPACE


def no_space(exc: BaseException, path: Path, doing: str, fix: str,
             full_below: int = 1 << 20) -> NoSpace | None:
    """`exc` as a `NoSpace` when it says the disk is full (ENOSPC, EDQUOT),
    or when the disk of `path` has under `full_below` bytes free (torch and
    safetensors wrap the OSError in their own types); else None. The
    message: "no space left on <mount> while <doing> (<free> free); <fix>"."""
    from engine import diskspace

    free = diskspace.free_bytes(path)
    if not diskspace.is_no_space(exc) and (free is None or free >= full_below):
        return None
    return NoSpace(f"no space left on {diskspace.mount_point(path)} while {doing} "
                   f"({diskspace.human(free)} free); {fix}")


def run_main(main: Callable[[], int | None]) -> None:
    """Run a workload's `main`: a `WorkloadError` becomes one line on stderr
    and its exit code, never a traceback (a full disk under stderr too: the
    exit code still says it)."""
    try:
        code = main()
    except WorkloadError as exc:
        try:
            print(f"error: {exc}", file=sys.stderr, flush=True)
        except OSError:
            pass
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    sys.exit(code or 0)


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write `data` as JSON next to `path`, then rename it into place. On a
    full disk the temporary file is removed and `NoSpace` names the disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True, default=_jsonable)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        full = no_space(exc, path.parent, f"writing {path}", "free space on that disk")
        if full is not None:
            raise full from None
        raise


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WorkloadError(f"{path}: missing ({what})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WorkloadError(f"{path}: not readable JSON ({exc}); {what}") from None
    if not isinstance(data, dict):
        raise WorkloadError(f"{path}: expected a JSON object ({what})")
    return data


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN: a non-finite number is written as null."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def metrics_path(output: Path) -> Path:
    """Where metrics go: the engine's run folder when run as a job."""
    run_dir = os.environ.get("LLMCONSOLE_RUN_DIR")
    return Path(run_dir) / "metrics.jsonl" if run_dir else output / "metrics.jsonl"


class MetricsLog:
    """Appends one JSON object per line (flushed at once, so a follower sees
    it) and mirrors every number to TensorBoard under ``<output>/tensorboard``.
    Only rank 0 should own one. A full disk raises `NoSpace` naming it; no
    partial line is left in the file (a reader would take it for a bad
    record)."""

    def __init__(self, path: Path, tensorboard_dir: Path | None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh = open(path, "a", encoding="utf-8")
        self._tb: Any = None
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(tensorboard_dir))

    def write(self, record: Mapping[str, Any]) -> None:
        clean = {k: (finite_or_none(v) if isinstance(v, float) else v)
                 for k, v in record.items()}
        clean.setdefault("time", round(time.time(), 3))
        line = json.dumps(clean, sort_keys=True) + "\n"
        start = self._fh.tell()  # flushed after every line: the file's size
        try:
            self._fh.write(line)
            self._fh.flush()
        except OSError as exc:
            self._abandon(start)
            full = no_space(exc, self.path, f"writing metrics to {self.path}",
                            "free space on that disk, then resume the job")
            if full is not None:
                raise full from None
            raise
        step = record.get("step")
        if self._tb is not None and isinstance(step, int):
            for key, value in record.items():
                if key not in ("step", "time") and isinstance(value, int | float) \
                        and not isinstance(value, bool) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def _abandon(self, size: int) -> None:
        """After a failed write: drop what the buffer holds and cut the file
        back to its last whole line."""
        with contextlib.suppress(OSError):
            self._fh.close()  # may fail flushing the rest: it is dropped with it
        self._fh = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 — closed by close()
        with contextlib.suppress(OSError):
            os.truncate(self.path, size)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def set_threads(local_size: int) -> int:
    """Share the node's cores between its ranks (OMP_NUM_THREADS wins)."""
    import torch

    wanted = os.environ.get("OMP_NUM_THREADS")
    threads = int(wanted) if wanted and wanted.isdigit() and int(wanted) > 0 else max(
        1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1)) // max(1, local_size))
    torch.set_num_threads(threads)
    return threads


def select_device(choice: str) -> Any:
    """The torch device for ``--device auto|cpu|cuda``: on GPU, this worker's
    local rank's device (Horovod or torchrun), made current."""
    import torch

    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise WorkloadError("--device cuda: no CUDA device is visible; use --device cpu")
        local = int(os.environ.get("HOROVOD_LOCAL_RANK", os.environ.get("LOCAL_RANK", "0")))
        index = local % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def quiet_libraries() -> None:
    """No progress bars or advice in job logs."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import warnings

    warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*")
    warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
