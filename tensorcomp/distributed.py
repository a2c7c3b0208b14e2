"""Data-parallel training on MPI (mpi4py and MPICH's wheels: the ``dist`` extra).

    mpiexec -n 4 tensorcomp train capsnet --distributed      # any launcher, any hosts
    tensorcomp train capsnet --nproc 4                         # 4 ranks on this host

In a script::

    import tensorcomp as tc
    from tensorcomp import distributed as dist
    dist.init()                                    # rank 0 of 1 when not started by mpiexec
    dist.broadcast_parameters(model)               # every rank starts from rank 0's parameters
    opt = dist.DistributedOptimizer(tc.optim.Adam(model.parameters()))
    loader = DataLoader(xs, ys, 64, rank=dist.rank(), ranks=dist.size())    # a shard of each global batch
    for x, y in loader:
        opt.set_batch(len(x), loader.global_batch)
        loss = loss_fn(model(x), y); opt.zero_grad(); loss.backward(); opt.step()

Gradients are summed with ``MPI_Allreduce`` on flat buckets of gradient buffers, each weighted by
its rank's share of the global batch (an uneven last batch averages exactly); a bucket's reduction
starts (``Iallreduce``) as soon as the backward pass has completed every gradient in it, while the
rest of the backward runs. A rank that raises ends the whole job (``MPI_Abort``) with a message naming
it; a rank that dies is ended by the launcher. Only rank 0 writes the tuning database.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import traceback
from typing import Any

import numpy as np

from .errors import DeviceError, TensorcompError
from . import tensor as tape

BUCKET_BYTES = 4 << 20  # gradients are reduced in flat buckets of about this size
ABORT_GRACE_S = 0.5  # a failing rank waits this long after printing its error before ending the job
# set by MPI launchers (MPICH/Hydra, Open MPI, Slurm's PMI): this process was started as a rank
_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "MPI_LOCALRANKID")
_state: dict[str, Any] = {"comm": None, "rank": 0, "size": 1}


class DistributedError(TensorcompError, RuntimeError):
    """Ranks that disagree (model, shapes, hardware), or MPI that cannot be used."""


def init() -> None:
    """Join the MPI job this process was started in; a process started alone runs as rank 0 of 1
    (mpi4py is not even imported). Installs a hook that ends the whole job when any rank raises."""
    if _state["comm"] is not None or not any(v in os.environ for v in _LAUNCHER_VARS):
        return
    try:
        from mpi4py import MPI
    except ImportError:
        raise DistributedError("tensorcomp.distributed: this process was started by an MPI launcher but mpi4py is "
                               "not installed; install the dist extra: pip install 'tensorcomp[dist]'") from None
    comm = MPI.COMM_WORLD
    _state.update(comm=comm, rank=comm.Get_rank(), size=comm.Get_size(), mpi=MPI)
    local = int(os.environ.get("MPI_LOCALNRANKS") or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") or 1)
    if local > 1 and "TENSORCOMP_NUM_THREADS" not in os.environ:  # ranks sharing a host share its cores
        os.environ["TENSORCOMP_NUM_THREADS"] = str(local_threads(local))
    previous = sys.excepthook

    def abort(kind, value, tb):  # without this, the other ranks would wait in a collective forever
        sys.stderr.write(f"tensorcomp.distributed: rank {rank()} of {size()} failed, ending the job:\n")
        sys.stderr.write("".join(traceback.format_exception(kind, value, tb)))
        sys.stderr.flush()
        if size() > 1:
            time.sleep(ABORT_GRACE_S)  # the launcher forwards this rank's stderr before the job is torn down
            comm.Abort(1)
        previous(kind, value, tb)
    sys.excepthook = abort


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return _state["rank"]


def size() -> int:
    """The number of ranks (1 when not distributed)."""
    return _state["size"]


def is_main() -> bool:
    """Whether this is rank 0 (the one that prints, writes files and the tuning database)."""
    return _state["rank"] == 0


def barrier() -> None:
    if size() > 1:
        _state["comm"].Barrier()


def agree(what: str, value: Any) -> None:
    """Check that every rank has the same ``value`` (hashed); a DistributedError naming the ranks that
    differ from rank 0 otherwise (every rank raises it)."""
    if size() == 1:
        return
    digest = hashlib.sha256(repr(value).encode()).hexdigest()[:16]
    every = _state["comm"].allgather((digest, repr(value)[:200]))
    odd = [r for r, (d, _) in enumerate(every) if d != every[0][0]]
    if odd:
        raise DistributedError(f"tensorcomp.distributed: ranks disagree on {what}: rank 0 has {every[0][1]}, rank "
                               f"{odd[0]} has {every[odd[0]][1]} (ranks {odd} differ); start every rank with the same "
                               "model, data and options")


def allgather(value: Any) -> list:
    """``value`` from every rank, in rank order."""
    return [value] if size() == 1 else _state["comm"].allgather(value)


def _params(model_or_params) -> list:
    params = model_or_params.parameters() if hasattr(model_or_params, "parameters") else model_or_params
    out = list(params)
    for p in out:
        if not isinstance(p.data, np.ndarray):
            raise DeviceError("tensorcomp.distributed: parameters must be on the CPU (numpy buffers) to be reduced "
                              "with MPI; got one on another device")
    return out


def broadcast_parameters(model_or_params) -> None:
    """Overwrite every rank's parameters with rank 0's (call once before training); checks first that
    all ranks have the same parameter shapes and dtypes. One process has nothing to do (its
    parameters may live anywhere, a GPU included)."""
    if size() == 1:
        return
    params = _params(model_or_params)
    agree("the model's parameters (shapes, dtypes)", [(p.data.shape, p.data.dtype.str) for p in params])
    for p in params:
        buf = np.ascontiguousarray(p.data)
        _state["comm"].Bcast(buf, root=0)
        if buf is not p.data:
            p.data[...] = buf


def parameters_hash(model_or_params) -> str:
    """A hash of the parameters' bytes (to check that every rank holds the same model)."""
    h = hashlib.sha256()
    for p in _params(model_or_params):
        h.update(np.ascontiguousarray(p.data).tobytes())
    return h.hexdigest()[:16]


def check_parameters(model_or_params, step: int) -> None:
    """Raise a DistributedError unless every rank holds the same parameters (bit for bit)."""
    agree(f"the parameters after step {step}", parameters_hash(model_or_params))


class DistributedOptimizer:
    """Wraps an optimizer: ``step(local_batch)`` first sums every gradient over the ranks, each rank's
    weighted by its share of the global batch, then runs the wrapped optimizer's step.

    While it exists, the tape calls it as each parameter's gradient becomes final during
    ``backward()``; a bucket's ``Iallreduce`` starts when its last gradient is in."""

    def __init__(self, optimizer, bucket_bytes: int = BUCKET_BYTES) -> None:
        self.optimizer = optimizer
        self.params = _params(optimizer.params)
        self.bucket_bytes = bucket_bytes
        self.reduced_bytes = 0  # per step, for reports
        self.reduce_s = 0.0  # time spent waiting for reductions in the last step
        self._weight = 1.0 / size()
        self._buckets = self._plan()
        self._pending: list = []
        self._ready: dict[int, set[int]] = {}
        if size() > 1:
            tape._grad_ready_hooks.append(self._on_ready)

    def _plan(self) -> list[list[int]]:
        """Parameters in buckets of about ``bucket_bytes``, last parameters first (backward order)."""
        buckets, current, nbytes = [], [], 0
        for k in reversed(range(len(self.params))):
            current.append(k)
            nbytes += self.params[k].data.nbytes
            if nbytes >= self.bucket_bytes:
                buckets.append(current)
                current, nbytes = [], 0
        if current:
            buckets.append(current)
        self._bucket_of = {k: b for b, ks in enumerate(buckets) for k in ks}
        self._index = {id(p): k for k, p in enumerate(self.params)}
        return buckets

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def set_batch(self, local: int, total: int | None = None) -> None:
        """This rank's share of the global batch for the next step's reduction, set before its
        ``backward()`` (``local`` samples of ``total``; ``total`` summed over the ranks when not given).
        Without it each rank's gradient weighs ``1 / size()``."""
        total = sum(allgather(local)) if total is None else total
        self._weight = local / total if total else 0.0

    def _on_ready(self, t) -> None:
        k = self._index.get(id(t))
        if k is None:
            return
        b = self._bucket_of[k]
        done = self._ready.setdefault(b, set())
        done.add(k)
        if len(done) == len(self._buckets[b]):
            self._start(b)

    def _start(self, b: int) -> None:
        ks = self._buckets[b]
        flat = np.concatenate([self._grad(k).reshape(-1) * self._weight for k in ks])
        req = _state["comm"].Iallreduce(_state["mpi"].IN_PLACE, flat, op=_state["mpi"].SUM)
        self._pending.append((b, flat, req))

    def _grad(self, k: int) -> np.ndarray:
        p = self.params[k]
        return p.grad if p.grad is not None else np.zeros_like(p.data)

    def synchronize(self) -> None:
        """Finish every bucket's reduction (starting those the backward did not) and write the summed
        gradients back into ``.grad``."""
        if size() == 1:
            return
        t0 = time.perf_counter()
        started = {b for b, _, _ in self._pending}
        for b in range(len(self._buckets)):
            if b not in started:
                self._start(b)
        nbytes = 0
        for b, flat, req in self._pending:
            req.Wait()
            nbytes += flat.nbytes
            at = 0
            for k in self._buckets[b]:
                p = self.params[k]
                n = p.data.size
                p.grad = flat[at:at + n].reshape(p.data.shape).astype(p.data.dtype, copy=False)
                at += n
        self._pending, self._ready = [], {}
        self.reduced_bytes, self.reduce_s = nbytes, time.perf_counter() - t0

    def step(self) -> None:
        """Sum the gradients over the ranks, then step the wrapped optimizer."""
        self.synchronize()
        self.optimizer.step()

    def close(self) -> None:
        """Stop listening to the tape (the optimizer is no longer used)."""
        if self._on_ready in tape._grad_ready_hooks:
            tape._grad_ready_hooks.remove(self._on_ready)


def allreduce_gradients(model_or_params, weight: float | None = None, bucket_bytes: int = BUCKET_BYTES) -> int:
    """Sum every parameter's ``.grad`` over the ranks in place (blocking, in flat buckets), each rank's
    weighted by ``weight`` (its share of the global batch; ``1 / size()`` when not given), so the result
    is the gradient of the global batch's mean loss. Returns the bytes reduced. (``DistributedOptimizer``
    does the same, overlapped with the backward pass.)"""
    params = _params(model_or_params)
    if size() == 1:
        return 0
    w = 1.0 / size() if weight is None else weight
    mpi, comm, nbytes = _state["mpi"], _state["comm"], 0
    start = 0
    while start < len(params):
        group, total = [], 0
        while start < len(params) and (not group or total < bucket_bytes):
            group.append(params[start])
            total += params[start].data.nbytes
            start += 1
        flat = np.concatenate([(p.grad if p.grad is not None else np.zeros_like(p.data)).reshape(-1) * w
                               for p in group])
        comm.Allreduce(mpi.IN_PLACE, flat, op=mpi.SUM)
        nbytes += flat.nbytes
        at = 0
        for p in group:
            p.grad = flat[at:at + p.data.size].reshape(p.data.shape).astype(p.data.dtype, copy=False)
            at += p.data.size
    return nbytes


def shard(n: int, of_rank: int | None = None, ranks: int | None = None) -> slice:
    """The part of a global batch of ``n`` samples that rank ``of_rank`` (this one) takes: contiguous,
    sizes differing by at most one."""
    r = rank() if of_rank is None else of_rank
    k = size() if ranks is None else ranks
    return slice(n * r // k, n * (r + 1) // k)


def gather_sum(value: float) -> float:
    """The sum of ``value`` over the ranks."""
    return float(sum(allgather(value)))


def local_threads(ranks: int) -> int:
    """Threads per rank when ``ranks`` ranks share this host's cores."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, ranks))


def ensure_same_hardware(key: str) -> None:
    """Refuse ranks of different hardware (distributed tuning times one machine's kernels on all)."""
    every = allgather(key)
    odd = [r for r, k in enumerate(every) if k != every[0]]
    if odd:
        raise DistributedError(f"tensorcomp.distributed: tuning needs ranks of identical hardware; rank 0 is "
                               f"'{every[0]}', rank {odd[0]} is '{every[odd[0]]}'")
