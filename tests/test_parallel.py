"""Parallel loop nests give the same results as NumPy (the kernels here are big enough to use threads)."""

import numpy as np
import pytest

import tensorcomp as tc
from tensorcomp import target
from tensorcomp.target import num_threads
from tensorcomp.schedule import For

rng = np.random.default_rng(3)


def kernel_of(op):
    return next(iter(op._cache.values()))


def test_parallel_matmul_matches_numpy(avx2):
    op = tc.op("C[i, j] += A[i, k] * B[k, j]")
    a, b = rng.standard_normal((97, 130)), rng.standard_normal((130, 61))
    np.testing.assert_allclose(op(a, b), a @ b, rtol=1e-12)
    k = kernel_of(op)
    assert k.threads == num_threads()
    # the fill of C (5,917 elements) is too small to hand out; the product (770k points) is shared;
    # the peeled tails of its vector tile (97 rows, 61 columns do not divide) are small again
    kinds = [kind for *_, kind in k.stages]
    assert kinds[:2] == [False, True] and not any(kinds[2:])


def test_parallel_multi_statement_softmax():
    op = tc.op("M[n] = max(X[n, c])\nE[n, c] = exp(X[n, c] - M[n])\nS[n] += E[n, c]\nY[n, c] = E[n, c] / S[n]")
    x = rng.standard_normal((300, 257))
    e = np.exp(x - x.max(1, keepdims=True))
    np.testing.assert_allclose(op(x), e / e.sum(1, keepdims=True), rtol=1e-12)


def test_parallel_gather_form_gradient():
    conv = tc.op("O[n, y] += I[n, 2*y + k] * W[k]")
    g = tc.grad(conv, "I")
    I, W = rng.standard_normal((64, 1001)), rng.standard_normal(5)
    dO = rng.standard_normal(conv(I, W).shape)
    ref = np.zeros_like(I)
    for k in range(5):
        ref[:, k:k + 2 * dO.shape[1]:2] += dO * W[k]
    np.testing.assert_allclose(g(I, W, dO), ref, rtol=1e-10, atol=1e-12)
    nest = kernel_of(g).nest
    assert all(isinstance(n, For) and n.kind == "parallel" for n in nest.body)  # n: disjoint rows of dI


def test_reduction_outermost_is_not_parallel():
    """Column sums put the reduction index outermost: that nest must stay serial."""
    op = tc.op("O[j] += A[i, j]")
    a = rng.standard_normal((1000, 300))
    np.testing.assert_allclose(op(a), a.sum(0), rtol=1e-10)
    nest = kernel_of(op).nest
    assert nest.body[-1].var == "i" and nest.body[-1].kind == "serial"


def test_parallel_stage_slices_cover_the_loop_once_and_are_taken_by_every_thread():
    import threading

    from tensorcomp.runtime.threads import run_stages
    from tensorcomp.target import SLICE_POINTS, slices_per_thread
    seen, who = [], set()

    def entry(ptr, lo, hi, scale):  # (the stage takes the second buffer only)
        assert (ptr, scale) == (7, 0.5)
        seen.append((lo, hi))
        who.add(threading.get_ident())
        threading.Event().wait(0.01)  # long enough that each thread takes a slice
    run_stages([(entry, (1,), 3, 103, 4), (entry, (1,), 0, 5, 0)], [6, 7], [0.5], 2)
    serial = seen.pop()
    assert serial == (0, 5)  # a serial stage runs whole, after the parallel one
    assert len(seen) == 2 * 4 and len(who) == 2
    covered = sorted(i for lo, hi in seen for i in range(lo, hi))
    assert covered == list(range(3, 103))
    # big stages get more slices (each is one more call), up to four per thread
    assert [slices_per_thread(k * SLICE_POINTS) for k in (0.5, 1, 3, 9)] == [1, 1, 3, 4]


def test_a_parallel_stage_runs_on_the_threads_only_when_its_serial_runs_outlast_the_hand_offs(monkeypatch):
    """Each parallel stage's first TIMED_RUNS runs are serial and timed; it then goes to the threads only
    when it took more than GAIN hand-offs to the pool (here the hand-off cost is set, not measured).
    A stage of more than one slice per thread goes to the threads from its first call."""
    from tensorcomp.runtime import threads
    if num_threads() < 2:
        return
    a = rng.standard_normal((400, 300))
    for cost, want in ((1e9, False), (0.0, True)):
        monkeypatch.setattr(threads, "_DISPATCH", [cost])
        op = tc.op(f"O[i, j] = A[i, j] * 2.0 + {1 + want}.0")  # (two ops: kernels are shared by equal ops)
        for call in range(threads.TIMED_RUNS + 2):
            np.testing.assert_allclose(op(a), a * 2.0 + (1 + want), rtol=1e-14)
            k = kernel_of(op)
            decided = [p for p, (*_, slices) in zip(k.plan, k.stages) if slices]
            assert decided and all(p is want for p in decided) == (call >= threads.TIMED_RUNS - 1)
            # every stage serial: later calls run the whole kernel in one call
            assert k.serial == (not want and call >= threads.TIMED_RUNS - 1)
    monkeypatch.setattr(threads, "_DISPATCH", [1e9])
    monkeypatch.setattr(target, "SLICE_POINTS", a.size // 3)  # (a stage of 3 slices per thread, kept small)
    big = tc.op("O[i, j] = A[i, j] * 3.0")
    np.testing.assert_allclose(big(a), a * 3.0, rtol=1e-14)
    k = kernel_of(big)
    assert [p for p, (*_, slices) in zip(k.plan, k.stages) if slices] == [True]


def test_native_workers_run_each_slice_of_each_job_exactly_once():
    """Jobs posted back to back on the native pool (workers spinning, the caller taking slices too):
    a stage run in place (input and output one buffer, ``O = A * s``) on slices of [3, 517) doubles
    each element in range exactly once -- a slice run twice would quadruple it, one missed leave it --,
    for slice counts from 1 to past the element count, with the scalar passed through the trampoline."""
    from tensorcomp.runtime import pool
    op = tc.op("O[i, j] = A[i, j] * s")
    a = rng.standard_normal((600, 33))
    op(a, s=1.0)
    (fn, take, *_), = kernel_of(op).stages
    assert len(take) == 2
    workers = pool.get(max(num_threads() - 1, 1))
    for slices in (1, 2, 3, 7, 64, 513, 900):
        for _ in range(20):
            o = a.copy()
            assert pool.run_stage(workers, fn, [o.ctypes.data] * 2, [2.0], 3, 517, slices)
            expect = a.copy().reshape(-1)
            expect[3:517] *= 2
            np.testing.assert_array_equal(o.reshape(-1), expect)
    assert not pool.run_stage(workers, lambda *args: None, [], [], 0, 1, 1)  # Python callables: not native


def test_idle_native_workers_sleep_and_the_next_job_wakes_them():
    import platform
    import time

    from tensorcomp.runtime import pool
    if platform.system() != "Linux" or platform.machine() not in pool.FUTEX:
        pytest.skip("workers sleep on a futex only on Linux")
    op = tc.op("O[i, j] = A[i, j] * s")
    a = rng.standard_normal((300, 20))
    op(a, s=1.0)
    (fn, take, *_), = kernel_of(op).stages
    workers = pool.get(max(num_threads() - 1, 1))
    for _ in range(5):
        o = a.copy()
        assert pool.run_stage(workers, fn, [o.ctypes.data] * 2, [3.0], 0, a.size, 8)
        np.testing.assert_array_equal(o, 3 * a)
        deadline = time.monotonic() + 5
        while workers.words[pool.SLEEPERS] < workers.workers and time.monotonic() < deadline:
            time.sleep(pool.SPIN_NS * 1e-9)
        assert workers.words[pool.SLEEPERS] == workers.workers == workers.words[pool.ACTIVE]
