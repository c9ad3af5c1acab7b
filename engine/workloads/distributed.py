"""One interface over the three ways a workload runs: a single process,
Horovod workers (started by ``horovodrun``) and torch DDP workers (started by
``torchrun``). ``auto`` picks by the environment the launcher sets:
``HOROVOD_RANK`` for horovodrun, ``RANK``/``WORLD_SIZE`` for torchrun.

Horovod is used as its authors intend: ``hvd.init()``, a
``DistributedOptimizer`` over the named parameters (gradients averaged after
``backward_passes_per_step`` micro-batches, optional fp16 compression on the
wire), parameters and optimizer state broadcast from rank 0, and clipping
between ``synchronize()`` and ``step()`` under ``skip_synchronize()``.

Collective names. Horovod matches a collective across ranks by its name, and
a rank waits until every rank has submitted an operation of the same name.
``hvd.broadcast_object`` and ``hvd.allgather_object`` default the name to
``type(obj).__name__``, so a rank that passes a dict while another passes
None waits in ``dict.sz`` and the other in ``NoneType.sz``, forever (a
resumed run did exactly that). So every collective here takes its name from
the caller (`broadcast_object`, `gather_object` and `sum` require one), the
name is a constant of the call site, the same on every rank, and each is
prefixed with ``llmconsole.`` (see `collective_name`). Parameters are
broadcast as ``llmconsole.params.<state_dict key>``. Horovod's own
``broadcast_optimizer_state`` takes no name: it names each tensor after its
state key and order (``exp_avg.1``, ...) and its scalars ``dict``, which is
the same on every rank because every rank holds the same optimizer over the
same parameters (a rank without state makes it with a zero-gradient step
before the names are taken). ``barrier`` has no name in Horovod; DDP
matches collectives by call order and ignores names.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

from engine.workloads.common import WorkloadError

MODES = ("auto", "single", "horovod", "ddp")

#: Every collective this module submits to Horovod is named under this prefix.
NAME_PREFIX = "llmconsole."


def collective_name(name: str) -> str:
    """The Horovod name of the caller's collective `name`: a non-empty
    constant of the call site (never derived from a rank's data), prefixed
    so it cannot meet a name Horovod makes up itself."""
    if not name:
        raise ValueError("a collective needs a non-empty name that is the same on every rank")
    return NAME_PREFIX + name


def detect(mode: str) -> str:
    if mode != "auto":
        return mode
    if "HOROVOD_RANK" in os.environ:
        return "horovod"
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return "ddp"
    return "single"


class Dist:
    """Rank bookkeeping and the collective operations a trainer needs."""

    def __init__(self, mode: str, device: Any) -> None:
        self.mode = detect(mode)
        self.device = device
        self.rank, self.size, self.local_rank, self.local_size = 0, 1, 0, 1
        self._hvd: Any = None
        if self.mode == "horovod":
            if getattr(device, "type", "cpu") == "cpu":
                # Horovod's background thread negotiates every cycle (1 ms by
                # default), which on CPU-only nodes competes with the workers
                # for the same cores; one grouped allreduce per step needs far
                # fewer cycles. Measured on 2 cores: 0.74x DDP before, 0.94x
                # with this and grouped allreduces (bench/workloads.py).
                os.environ.setdefault("HOROVOD_CYCLE_TIME", "10")
            try:
                import horovod.torch as hvd
            except ImportError as exc:
                raise WorkloadError(f"horovod is not importable ({exc}); run `make setup`, "
                                    "or use --dist single") from None
            hvd.init()
            self._hvd = hvd
            self.rank, self.size = hvd.rank(), hvd.size()
            self.local_rank, self.local_size = hvd.local_rank(), hvd.local_size()
        elif self.mode == "ddp":
            import torch.distributed as dist

            backend = "nccl" if getattr(device, "type", "cpu") == "cuda" else "gloo"
            dist.init_process_group(backend)
            self.rank, self.size = dist.get_rank(), dist.get_world_size()
            self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            self.local_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(self.size)))
        elif self.mode != "single":
            raise WorkloadError(f"--dist {mode!r}: expected one of {', '.join(MODES)}")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------ wrapping
    def wrap_model(self, model: Any) -> Any:
        if self.mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if getattr(self.device, "type", "cpu") == "cuda" else None
            return DistributedDataParallel(model, device_ids=ids)
        return model

    def wrap_optimizer(self, optimizer: Any, model: Any, accumulation: int,
                       fp16_allreduce: bool) -> Any:
        if self.mode != "horovod":
            return optimizer
        hvd = self._hvd
        compression = hvd.Compression.fp16 if fp16_allreduce else hvd.Compression.none
        return hvd.DistributedOptimizer(
            optimizer, named_parameters=model.named_parameters(),
            compression=compression, backward_passes_per_step=accumulation,
            groups=self._allreduce_groups())

    def _allreduce_groups(self) -> int | None:
        """On CPU the workers' cores also carry the communication, so
        overlapping allreduces with backward only steals compute: one grouped
        allreduce per step (like DDP's single bucket for a small model). On
        GPU, per-tensor allreduces (fused by Horovod) overlap backward."""
        return 1 if getattr(self.device, "type", "cpu") == "cpu" else None

    def broadcast_state(self, model: Any, optimizer: Any) -> None:
        """Horovod: every rank takes rank 0's optimizer state, then its
        parameters (in that order: a rank with no optimizer state yet takes a
        zero-gradient step to create it, which weight decay would let move
        the parameters). DDP broadcasts the parameters when it wraps the
        model."""
        if self.mode == "horovod":
            self._hvd.broadcast_optimizer_state(optimizer, root_rank=0)
            params = [(collective_name(f"params.{key}"), tensor)
                      for key, tensor in sorted(model.state_dict().items())]
            self._hvd.broadcast_parameters(params, root_rank=0)

    @contextlib.contextmanager
    def accumulating(self, model: Any, last: bool) -> Iterator[None]:
        """DDP: skip the gradient allreduce on all but the last micro-batch
        (Horovod counts backward passes itself)."""
        if self.mode == "ddp" and not last:
            with model.no_sync():
                yield
        else:
            yield

    def step(self, optimizer: Any, parameters: Sequence[Any], clip: float) -> float:
        """Average gradients (Horovod), clip, step; the gradient norm before
        clipping."""
        import torch

        if self.mode == "horovod":
            optimizer.synchronize()
        norm = torch.nn.utils.clip_grad_norm_(parameters, clip if clip > 0 else float("inf"))
        if self.mode == "horovod":
            with optimizer.skip_synchronize():
                optimizer.step()
        else:
            optimizer.step()
        return float(norm)

    # ------------------------------------------------------------ collectives
    def _ddp(self) -> Any:
        import torch.distributed as dist

        return dist

    def sum(self, values: Sequence[float], *, name: str) -> list[float]:
        """Element-wise sum over all ranks; `name` as for `broadcast_object`
        (every rank passes as many values)."""
        import torch

        t = torch.tensor(list(values), dtype=torch.float64)
        if self.mode == "horovod":
            t = self._hvd.allreduce(t, op=self._hvd.Sum, name=collective_name(name))
        elif self.mode == "ddp":
            t = t.to(self.device) if getattr(self.device, "type", "cpu") == "cuda" else t
            self._ddp().all_reduce(t)
            t = t.cpu()
        return [float(v) for v in t.tolist()]

    def barrier(self) -> None:
        if self.mode == "horovod":
            self._hvd.barrier()
        elif self.mode == "ddp":
            self._ddp().barrier()

    def gather_object(self, obj: Any, *, name: str) -> list[Any]:
        """Every rank's `obj`, in rank order (on every rank). `name` is
        required and must be the same on every rank (see the module's
        docstring): Horovod would otherwise name the collective after
        ``type(obj)``."""
        if self.mode == "horovod":
            return list(self._hvd.allgather_object(obj, name=collective_name(name)))
        if self.mode == "ddp":
            out: list[Any] = [None] * self.size
            self._ddp().all_gather_object(out, obj)
            return out
        return [obj]

    def broadcast_object(self, obj: Any, *, name: str) -> Any:
        """Rank 0's `obj`, on every rank (the others pass anything, None
        say). `name` is required and must be the same on every rank: Horovod
        would otherwise name the collective after ``type(obj)``, which
        differs between rank 0's object and the others' None, and every rank
        would wait for a partner that never comes."""
        if self.mode == "horovod":
            return self._hvd.broadcast_object(obj, root_rank=0, name=collective_name(name))
        if self.mode == "ddp":
            box = [obj]
            self._ddp().broadcast_object_list(box, src=0)
            return box[0]
        return obj

    def shutdown(self) -> None:
        if self.mode == "horovod":
            self._hvd.shutdown()
        elif self.mode == "ddp":
            self._ddp().destroy_process_group()
