"""Blocked (packed) layouts: an input's axis cut into blocks stored as two axes."""

import json
import subprocess
import sys

import numpy as np
import pytest

import tensorcomp as tc
from tensorcomp.autotune import canon
from tensorcomp.errors import ScheduleError
from tensorcomp.compiler import ArraySpec
from tensorcomp.schedule import Layout, Reorder, Split, from_json, to_json
from tensorcomp.schedule.microkernel import packed_schedules


def _chosen(op, specs):
    """The records the compiler's choose_schedule pass picks (own, tuned or the default's)."""
    from tensorcomp import compiler
    return compiler.plan(op, specs, op.check_call(tuple(specs), {}), {}, upto="choose_schedule").schedule


def _kernel_bound(op, specs, kinds):
    """The bound op its kernels run (after elementwise folding)."""
    from tensorcomp import compiler
    return compiler.plan(op, specs, kinds, {}, upto="fold_elementwise").bound

rng = np.random.default_rng(11)
MM = "C[i, j] += A[i, k] * B[k, j]"
CAPS = "O[n, y, x, co, p, r] += I[n, 2*y + ky, 2*x + kx, ci, p, q] * W[ky, kx, ci, co, q, r]"
PANELS = (Layout("B", (1, 0, 2), blocks=((1, 16),)), Split(0, "i", 4),
          Reorder(0, ("j_o", "i_o", "k", "i_i", "j_i")))


def test_packed_column_panels_match_float64_and_loop_as_split():
    a, b = rng.standard_normal((64, 48)).astype(np.float32), rng.standard_normal((48, 80)).astype(np.float32)
    op = tc.op(MM, schedule=PANELS)
    text = str(op.loopnest(a, b))
    # j is cut as Split(j, 16) would cut it; the panels' loop still runs on the cores (the writes of
    # distinct j_o are disjoint, though C's axis is 16*j_o + j_i)
    assert "for j_o in range(0, 5):  # parallel" in text
    assert "C[i_i + 4*i_o, j_i + 16*j_o] += A[i_i + 4*i_o, k] * B[k, j_o, j_i]" in text
    np.testing.assert_allclose(op(a, b), a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)


def test_blocks_that_do_not_divide_the_axis_leave_a_padded_last_block():
    a, b = rng.standard_normal((13, 21)), rng.standard_normal((21, 37))
    op = tc.op(MM, schedule=(Layout("B", (1, 0, 2), blocks=((1, 8),)), Layout("A", (0, 2, 1), blocks=((0, 4),)),
                             Reorder(0, ("i_o", "j_o", "k", "i_i", "j_i"))))
    text = str(op.loopnest(a, b))
    assert "for j_i in range(0, min(7, (-8 * j_o) + 36) + 1):" in text  # the domain's preimage: j < 37
    np.testing.assert_allclose(op(a, b), a @ b, rtol=1e-12)
    np.testing.assert_allclose(op(a, b), a @ b, rtol=1e-12)  # the kept buffers reused


def test_capsule_weights_packed_in_a_six_d_op_match_einsum():
    i = rng.standard_normal((2, 7, 7, 4, 4, 4)).astype(np.float32)
    w = rng.standard_normal((3, 3, 4, 32, 4, 4)).astype(np.float32)
    # W as [r][co // 16][ky][kx][ci][q][co % 16]
    op = tc.op(CAPS, schedule=(Layout("W", (6, 3, 0, 1, 2, 5, 4), blocks=((3, 16),)),))
    want = np.zeros((2, 3, 3, 32, 4, 4))
    for ky in range(3):
        for kx in range(3):
            patch = i[:, ky:ky + 5:2, kx:kx + 5:2].astype(np.float64)
            want += np.einsum("nyxcpq,cdqr->nyxdpr", patch, w[ky, kx])
    np.testing.assert_allclose(op(i, w), want, rtol=1e-4, atol=1e-4)


def test_a_schedule_with_blocks_replays_and_round_trips_through_json_and_canonical_names():
    a = np.zeros((32, 32), np.float32)
    assert str(tc.op(MM, schedule=PANELS).loopnest(a, a)) == str(tc.op(MM, schedule=PANELS).loopnest(a, a))
    assert from_json(to_json(PANELS)) == PANELS
    m = canon.names_map(tc.op(MM).program)
    back = {v: k for k, v in m.items()}
    assert canon.rename_records(canon.rename_records(PANELS, m), back) == PANELS


def test_a_new_process_runs_a_blocked_kernel_from_its_manifest(tmp_path):
    script = f"""
import numpy as np, tensorcomp as tc
from tensorcomp.schedule import Layout, Reorder, Split
import sys

o = sys.modules["tensorcomp.compiler"]
a = np.arange(48 * 40, dtype=np.float32).reshape(48, 40) % 7
b = np.arange(40 * 64, dtype=np.float32).reshape(40, 64) % 5
op = tc.op("{MM}", schedule={PANELS!r})
if __import__("sys").argv[1] == "second":
    o.run = None  # planning again would fail: the manifest must carry the blocks
print(float(np.abs(op(a, b) - a.astype(np.float64) @ b).max()))
"""
    env = {"TENSORCOMP_CACHE_DIR": str(tmp_path)}
    import os
    env = {**os.environ, **env}
    for run in ("first", "second"):
        out = subprocess.run([sys.executable, "-c", script, run], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr
        assert float(out.stdout) == 0.0


def test_packed_schedules_follow_the_tiles_loop_order():
    op = tc.op(MM)
    bs = _kernel_bound(op, [ArraySpec.of((64, 64))] * 2, {}).statements[0]
    tile = (Split(0, "j", 16), Split(0, "k", 16), Split(0, "i", 4),
            Reorder(0, ("j_o", "k_o", "i_o", "k_i", "i_i", "j_i")))
    cols, every = packed_schedules(bs, 0, tile, {"A", "B"})
    assert cols == tile + (Layout("B", (1, 0, 2), 0, ((1, 16),)),)
    # A's rows in blocks of 4, stored [i_o][k][i_i]: k where its inner loop runs
    assert every == tile + (Layout("A", (0, 2, 1), 0, ((0, 4),)), Layout("B", (1, 0, 2), 0, ((1, 16),)))
    assert packed_schedules(bs, 0, tile, set()) == []


def test_the_default_packs_the_capsule_weights_it_permutes(avx2):
    op = tc.op(CAPS)
    specs = [ArraySpec.of((32, 14, 14, 32, 4, 4)), ArraySpec.of((3, 3, 32, 32, 4, 4))]
    schedule = _chosen(op, specs)
    packed = [r for r in schedule if isinstance(r, Layout) and r.blocks]
    assert [(r.tensor, r.blocks) for r in packed] == [("W", ((3, 16),))]


@pytest.mark.parametrize("schedule, message", [
    ((Layout("C", (1, 0, 2), blocks=((1, 16),)),),
     "op 'C[i, j] += A[i, k] * B[k, j]': Layout blocks C, which is not an input; only inputs (copied into "
     "the blocked layout per call) can be blocked"),
    ((Layout("B", (1, 0), blocks=((1, 16),)),),
     "op 'C[i, j] += A[i, k] * B[k, j]': Layout of B must be a permutation of (0, 1, 2) (its axes once "
     "blocked by ((1, 16),)), got (1, 0)"),
    ((Layout("B", (1, 0, 2), blocks=((2, 16),)),),
     "op 'C[i, j] += A[i, k] * B[k, j]': Layout blocks of B must be distinct (axis, size) pairs with "
     "0 <= axis < 2 and size >= 2, got ((2, 16),)"),
    ((Layout("B", (1, 0, 2), blocks=((1, 1),)),),
     "op 'C[i, j] += A[i, k] * B[k, j]': Layout blocks of B must be distinct (axis, size) pairs with "
     "0 <= axis < 2 and size >= 2, got ((1, 1),)"),
    ((Layout("B", (1, 0, 2), blocks=((1, 16),)), Split(0, "j", 8)),
     "op 'C[i, j] += A[i, k] * B[k, j]': Split(stmt=0, 'j', 8): statement 0's index 'j' is cut into "
     "blocks of 16 by a Layout; its loops are 'j_o' and 'j_i': split those instead"),
    ((Layout("A", (0, 1, 2), blocks=((1, 8),)), Layout("B", (0, 1, 2), blocks=((0, 16),))),
     "op 'C[i, j] += A[i, k] * B[k, j]': Layout blocks give statement 0's index 'k' two block sizes "
     "(8 and 16); block the axes it indexes alike"),
])
def test_bad_blocks_name_what_they_would_break(schedule, message):
    a = np.zeros((32, 32), np.float32)
    with pytest.raises(ScheduleError) as err:
        tc.op(MM, schedule=schedule)(a, a)
    assert str(err.value) == message


def test_an_axis_indexed_by_an_expression_cannot_be_blocked():
    i, w = np.zeros((2, 7, 7, 4, 4, 4), np.float32), np.zeros((3, 3, 4, 8, 4, 4), np.float32)
    op = tc.op(CAPS, schedule=(Layout("I", (0, 1, 2, 3, 4, 5, 6), blocks=((1, 2),)),))
    with pytest.raises(ScheduleError) as err:
        op(i, w)
    assert str(err.value) == (
        "op 'O[n, y, x, co, p, r] += I[n, 2*y + ky, 2*x + kx, ci, p, q...': Layout blocks axis 1 of I, which "
        "statement 0 (O[n, y, x, co, p, r] += I[n, ky + 2*y, kx + 2*x, ci, p, q] * W[ky, kx, ci, co, q, r]) "
        "indexes with 'ky + 2*y'; only an axis indexed by a plain index can be blocked")


def test_blocks_are_built_for_the_cpu_only():
    pytest.importorskip("pycuda")
    a = np.zeros((32, 32), np.float32)
    with pytest.raises(ScheduleError, match="Layout blocks is built for the CPU only"):
        tc.op(MM, schedule=PANELS)(a, a, target="cuda")


def test_manifest_keeps_the_blocks():
    from tensorcomp.runtime.kernel import to_manifest as _manifest
    a = np.zeros((32, 32), np.float32)
    op = tc.op(MM, schedule=PANELS)
    op(a, a)
    kernel = next(iter(op._cache.values()))
    assert kernel.relayout == ((1, (1, 0, 2), 0, ((1, 16),)),)
    assert json.loads(json.dumps(_manifest(kernel, 3)))["relayout"] == [[1, [1, 0, 2], 0, [[1, 16]]]]


def test_inputs_read_with_pad_are_never_packed():
    # X is read with zero padding on a plain index: blocking would need the padded extent, so neither
    # the default nor the tuner packs it (and an explicit block says why)
    from tensorcomp.schedule.default import packable
    src = "Y[i, j] += X[i, k] * W[k, j]"
    x, w = rng.standard_normal((64, 30)).astype(np.float32), rng.standard_normal((32, 64)).astype(np.float32)
    op = tc.op(src, pad={"X": ((0, 0), (1, 1))})
    bound = _kernel_bound(op, [ArraySpec.of(x), ArraySpec.of(w)], {})
    assert "X" not in packable(op.inputs, bound, [x, w], 0)
    want = np.pad(x, ((0, 0), (1, 1))).astype(np.float64) @ w
    np.testing.assert_allclose(op(x, w), want, rtol=1e-4, atol=1e-4)
    blocked = tc.op(src, pad={"X": ((0, 0), (1, 1))}, schedule=(Layout("X", (0, 1, 2), blocks=((1, 8),)),))
    with pytest.raises(ScheduleError, match="Layout blocks X, which is read with pad="):
        blocked(x, w)
