"""The generated CUDA C, run on the CPU emulator (tests/cuda_emulator.py), against the CPU backend."""

import shutil

import numpy as np
import pytest

import tensorcomp as tc
from cuda_emulator import emulated
from test_cuda_codegen import CORPUS, GRADS
from test_cuda_runtime import CAPSULE, _close, _random_like

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="the emulator needs g++")


@pytest.mark.parametrize("case", range(len(CORPUS) + len(GRADS)))
def test_corpus_matches_the_cpu(case):
    op, arrays, params = (CORPUS + GRADS)[case]
    arrays = _random_like(arrays, case)
    for k, tensor_pos, axis, extent, _ in getattr(op, "lookup_checks", ()):  # index tensors: valid positions
        n = extent if tensor_pos is None else arrays[tensor_pos].shape[axis]
        arrays[k] = np.abs(arrays[k]) % n
    with emulated():
        got = op(*arrays, target="cuda", **params)
    _close(got, op(*arrays, **params))


MATMUL = "C[i, j] += A[i, k] * B[k, j]"
S = tc.schedule
STAGED = [
    # 8 x 8 threads, each a 4 x 4 register tile; A and B staged per 8 steps of k (k_o)
    (MATMUL, (S.Split(0, "i", 4), S.Split(0, "j", 4), S.Split(0, "k", 8),
              S.Reorder(0, ("i_o", "j_o", "k_o", "k_i", "i_i", "j_i")), S.Threads(0, (8, 8)),
              S.Stage(0, "A", "k_o"), S.Stage(0, "B", "k_o")), ((64, 48), (48, 64))),
    # boxes that overhang the loops (i_o has 9 iterations, j 20 over 16 threads): idle threads still load
    (MATMUL, (S.Split(0, "i", 4), S.Split(0, "k", 4), S.Reorder(0, ("i_o", "j", "k_o", "k_i", "i_i")),
              S.Threads(0, (4, 16)), S.Stage(0, "A", "k_o"), S.Stage(0, "B", "k_o")), ((36, 12), (12, 20))),
    # staged at the outermost reduction loop of a strided, rank-6 statement; W laid out with co innermost
    (CAPSULE, (S.Layout("W", (0, 1, 2, 4, 5, 3)),
               S.Reorder(0, ("n", "y", "x", "co", "ky", "kx", "ci", "q", "p", "r")), S.Threads(0, (2, 2, 8)),
               S.Stage(0, "I", "ky"), S.Stage(0, "W", "kx")), ((2, 9, 9, 3, 4, 4), (3, 3, 3, 8, 4, 4))),
    # a padded input: the copy fills the halo with the pad value
    ("O[y, x] += I[y + ky, x + kx] * K[ky, kx]", (S.Reorder(0, ("y", "x", "ky", "kx")), S.Threads(0, (4, 8)),
                                                  S.Stage(0, "I", "ky"), S.Stage(0, "K", "ky")), ((7, 10), (3, 3))),
    # a thread box without staging
    (MATMUL, (S.Threads(0, (2, 16)),), ((9, 5), (5, 33))),
    # reductions factored into pieces (one thread per piece and output element), then combined
    ("s += A[i] * B[i]", (S.Rfactor(0, "i", 4),), ((1000,), (1000,))),
    ("y[a] += X[a, k] * v[k]", (S.Rfactor(0, "k", 3), S.Threads(0, (3, 2))), ((2, 301), (301,))),
]



def _double(schedule):
    return tuple(S.Stage(r.stmt, r.tensor, r.loop, buffers=2) if isinstance(r, S.Stage) else r for r in schedule)


# the same with double-buffered tiles (the next iteration's tile loaded while this one is used)
STAGED += [(source, _double(schedule), shapes) for source, schedule, shapes in STAGED[:4]]
# A's box rows (3 k-steps) are not whole 16-byte chunks: element copies; B's (16 columns) are chunks
STAGED.append((MATMUL, (S.Split(0, "i", 4), S.Split(0, "k", 3), S.Reorder(0, ("i_o", "j", "k_o", "k_i", "i_i")),
                        S.Threads(0, (4, 16)), S.Stage(0, "A", "k_o", 2), S.Stage(0, "B", "k_o", 2)), ((36, 18), (18, 20))))


@pytest.mark.parametrize("case", range(len(STAGED)))
def test_shared_memory_tiles_match_the_cpu(case):
    source, schedule, shapes = STAGED[case]
    pad = {"I": 1} if "ky, x + kx] * K" in source else None
    arrays = _random_like([np.zeros(s, np.float32) for s in shapes], case)
    want = tc.op(source, pad=pad)(*arrays)
    with emulated():
        got = tc.op(source, pad=pad, schedule=schedule)(*arrays, target="cuda")
    _close(got, want)


def test_tuner_shared_memory_variants_match_the_cpu():
    from tensorcomp.schedule import gpu
    from tensorcomp.compiler import ArraySpec
    op = tc.op(CAPSULE)
    arrays = _random_like([np.zeros((2, 9, 9, 16, 4, 4), np.float32), np.zeros((3, 3, 16, 8, 4, 4), np.float32)], 7)
    specs = [ArraySpec.of(a) for a in arrays]
    bound = op.bind_specs(specs, op.check_call(tuple(arrays), {}))
    staged = [c for _, c in gpu.candidates(op.inputs, bound, specs, sms=132) if any(isinstance(r, S.Stage) for r in c)]
    runnable = []
    for cand in staged:  # the search skips those whose tiles do not fit in shared memory
        try:
            op.with_schedule(cand).cuda_source(specs, {})
            runnable.append(cand)
        except tc.ScheduleError as e:
            assert "bytes per block; at most 49152 fit" in str(e)
    assert len(runnable) >= 3 and any(isinstance(r, S.Split) and r.index == "ci" for c in runnable for r in c)
    want = op(*arrays)
    with emulated():
        for cand in [runnable[0], runnable[-1]] + [c for c in runnable if any(
                isinstance(r, S.Split) and r.index == "ci" for r in c)][:1]:
            _close(op.with_schedule(cand)(*arrays, target="cuda"), want)


CAPSULE_DI_SHAPES = ((2, 14, 14, 8, 4, 4), (3, 3, 8, 8, 4, 4), (2, 6, 6, 8, 4, 4))


@pytest.mark.parametrize("schedule", [None, (S.Reorder(0, ("n", "di1", "di2", "ci", "ky", "y", "kx", "x", "co", "r",
                                                                 "p", "q")),)], ids=["default", "reorder"])
def test_gather_form_register_tiles_match_the_cpu(schedule):
    # a strided convolution's input gradient runs in gather form (loops over dI's coordinates, di1 and
    # di2 for its two compound axes); a register tile of plain written indices sits inside the reductions
    g = tc.grad(tc.op(CAPSULE), "I")
    arrays = _random_like([np.zeros(s, np.float32) for s in CAPSULE_DI_SHAPES], 3)
    run = g if schedule is None else g.with_schedule(schedule)
    code = run.code(*arrays, target="cuda")
    assert ("// register tile: 16 elements of dI" if schedule else "// register tile: 2 elements of dI") in code
    # the accumulators are loaded once, before the loops over the points writing each element
    assert code.index("tc_acc[") < code.index("for (idx ky = max(")
    with emulated():
        got = run(*arrays, target="cuda")
    _close(got, g(*arrays))
