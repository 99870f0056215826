"""Multi-process training (RecBole's ``nproc`` / ``world_size``) with ``torch.distributed``.

RecBole 1.2.1 initialises its process group itself whenever ``local_rank`` is in the config,
with NCCL only and an assertion on GPU ids. The plug-in never puts ``local_rank`` into the
config before RecBole's ``Config`` is built; this module starts the processes, initialises the
group and patches the rank's config instead:

* backend: ``nccl`` when the run uses GPUs (``use_gpu`` and CUDA visible, one GPU per local
  rank), else ``gloo`` (CPU);
* :func:`launch` spawns ``nproc`` processes (``torch.multiprocessing``, spawn); local rank ``i``
  has global rank ``offset + i`` in a group of ``world_size`` (default ``nproc``) processes that
  meet at ``tcp://ip:port`` (a free port is picked on a single machine when ``port`` is None);
* what rank 0's function returns comes back to the caller (as JSON); a bad-input exception in a
  rank (``ValueError`` and its subclasses of this package, ``FileNotFoundError``, ``KeyError``,
  ``FloatingPointError``) is raised again in the caller with its type and message, so it reads the
  same with one process or many; any other failure becomes a ``RuntimeError`` naming the rank;
* helpers for the pipeline: :func:`rank_and_world`, :func:`is_main`, :func:`barrier`,
  :func:`broadcast_object`, :func:`broadcast_module`, :func:`all_reduce_grads`.

Files: only rank 0 writes checkpoints and results; the other ranks never read a checkpoint
(rank 0 reads it and broadcasts the weights), so no rank reads a file another is writing.
The semantic cache is filled by all ranks together (each writes its own chunk files, see
:mod:`recbole_scalrec.semantic.cache`).
"""
from __future__ import annotations

import builtins
import datetime
import json
import os
import shutil
import socket
import tempfile
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

# errors a rank may raise that the caller sees with their own type (the CLI reports these)
_USER_ERRORS = (FloatingPointError, FileNotFoundError, KeyError, ValueError)


@dataclass
class LaunchSpec:
    """How the processes of one run meet."""

    nproc: int
    world_size: int
    offset: int
    ip: str
    port: int
    backend: str
    timeout_s: float


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (and in a single-process run): the rank that writes files."""
    return rank_and_world()[0] == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single-process run)."""
    if rank_and_world()[1] > 1:
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable Python objects; in memory only)."""
    if rank_and_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into ``module`` on every rank."""
    if rank_and_world()[1] == 1:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dev = _collective_device()
            buf = t.data.to(dev)
            dist.broadcast(buf, src=src)
            if buf.data_ptr() != t.data.data_ptr():
                t.data.copy_(buf)


def all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Sum every parameter's gradient over the ranks (in place).

    Each rank scales its loss by the *global* batch size, so the sum is the gradient of the
    global batch's mean loss, as one process would compute it. A parameter that has a gradient on
    some rank and none on another gets zeros where it had none (the set is agreed first).
    """
    if rank_and_world()[1] == 1 or not params:
        return
    dev = _collective_device()
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=dev)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    live = [p for p, h in zip(params, has.tolist()) if h > 0]
    if not live:
        return
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1).to(dev) for p in live])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in live:
        n = p.grad.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def all_reduce_sum(value: float) -> float:
    """Sum of a Python number over the ranks."""
    if rank_and_world()[1] == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item())


# --------------------------------------------------------------------------------------------
# launching
# --------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spec_from_config(config) -> LaunchSpec | None:
    """The launch of a multi-process run, or None for one process.

    Keys: ``nproc`` (processes on this machine), ``world_size`` (all processes; -1: ``nproc``),
    ``offset`` (global rank of this machine's first process), ``ip`` / ``port`` (rendezvous;
    ``port: ~`` picks a free one, single machine only), ``dist_timeout`` (seconds a collective
    may wait, e.g. for the other ranks' semantic precompute).

    Raises:
        ValueError: inconsistent values, or NCCL asked for more processes than visible GPUs.
    """
    def get(key, default):
        try:
            value = config[key]
        except (KeyError, TypeError):
            return default
        return default if value is None else value

    nproc = int(get("nproc", 1))
    world_size = int(get("world_size", -1))
    if world_size == -1:
        world_size = nproc
    offset = int(get("offset", 0))
    if nproc < 1 or world_size < 1:
        raise ValueError(f"nproc ({nproc}) and world_size ({world_size}) must be >= 1 (world_size -1: nproc).")
    if world_size == 1:
        return None
    if not 0 <= offset <= world_size - nproc:
        raise ValueError(f"offset {offset} + nproc {nproc} exceeds world_size {world_size}: "
                         "give each machine offset = number of processes on the machines before it.")
    port = get("port", None)
    if port is None:
        if world_size != nproc:
            raise ValueError("A run over several machines needs an explicit --port (and --ip of the rank-0 machine).")
        port = _free_port()
    use_gpu = bool(get("use_gpu", True)) and torch.cuda.is_available() and str(get("device", "cpu")) != "cpu"
    backend = "nccl" if use_gpu else "gloo"
    if backend == "nccl" and torch.cuda.device_count() < nproc:
        raise ValueError(f"nproc={nproc} processes need {nproc} GPUs for NCCL, {torch.cuda.device_count()} visible: "
                         "lower --nproc, or run on the CPU with --use_gpu=False (gloo).")
    return LaunchSpec(nproc, world_size, offset, str(get("ip", "localhost")), int(port), backend,
                      float(get("dist_timeout", 7200)))


def _plain(obj: Any) -> Any:
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return str(obj)


def _worker(local_rank: int, fn: Callable, args: tuple, spec: dict, exchange: str) -> None:
    spec = LaunchSpec(**spec)
    rank = spec.offset + local_rank
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(spec.world_size)})
    if spec.backend == "nccl":
        torch.cuda.set_device(local_rank)
    else:  # share the CPU cores between the local processes
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // spec.nproc))
    dist.init_process_group(spec.backend, init_method=f"tcp://{spec.ip}:{spec.port}", rank=rank,
                            world_size=spec.world_size, timeout=datetime.timedelta(seconds=spec.timeout_s))
    try:
        result = fn(*args)
        if rank == 0:
            tmp = os.path.join(exchange, "result.json.tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(result, f, default=_plain)
            os.replace(tmp, os.path.join(exchange, "result.json"))
    except BaseException as exc:
        base = next((c.__name__ for c in _USER_ERRORS if isinstance(exc, c)), None)
        message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        with open(os.path.join(exchange, f"error-{rank}.json"), "w", encoding="utf-8") as f:
            json.dump({"module": type(exc).__module__, "type": type(exc).__qualname__, "base": base,
                       "message": message, "rank": rank}, f)
        raise
    finally:
        dist.destroy_process_group()


def _reraise(exchange: str, cause: BaseException) -> None:
    reports = []
    for f in os.listdir(exchange):
        if f.startswith("error-"):
            with open(os.path.join(exchange, f), encoding="utf-8") as fh:
                reports.append(json.load(fh))
    if not reports:
        raise RuntimeError(f"a training process failed without reporting an error ({cause})") from cause
    # a bad input first (another rank may only have seen its peer vanish), then the lowest rank
    info = min(reports, key=lambda r: (r.get("base") is None, r["rank"]))
    name, message, base = info["type"], info["message"], info.get("base")
    if base is not None:
        cls = getattr(builtins, base)
        if info["module"].split(".")[0] == "recbole_scalrec":  # our own error classes, e.g. DataTextError
            import importlib

            own = getattr(importlib.import_module(info["module"]), name, None)
            if isinstance(own, type) and issubclass(own, cls):
                cls = own
        elif info["module"] == "builtins" and isinstance(getattr(builtins, name, None), type):
            cls = getattr(builtins, name) if issubclass(getattr(builtins, name), cls) else cls
        raise cls(message) from None
    raise RuntimeError(f"rank {info['rank']} failed with {name}: {message}") from cause


def launch(fn: Callable, args: tuple, spec: LaunchSpec) -> Any:
    """Run ``fn(*args)`` in ``spec.nproc`` spawned processes joined in one process group; returns
    what rank 0's call returned (JSON round trip), or None when rank 0 runs on another machine.

    ``fn`` must be importable (module level). The rank's errors are raised here (see module doc).
    """
    import torch.multiprocessing as mp

    exchange = tempfile.mkdtemp(prefix="scalrec-dist-")
    try:
        try:
            mp.spawn(_worker, args=(fn, args, asdict(spec), exchange), nprocs=spec.nproc, join=True)
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
            _reraise(exchange, exc)
        path = os.path.join(exchange, "result.json")
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    finally:
        shutil.rmtree(exchange, ignore_errors=True)
