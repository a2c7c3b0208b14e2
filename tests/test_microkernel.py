"""Vector-tile schedules generated from the statement, and the tuner's local search steps."""

import numpy as np
import pytest

import tensorcomp as tc
from tensorcomp.autotune import space
from tensorcomp.schedule.default import itemsizes, strides_under
from tensorcomp.schedule.microkernel import neighbours, tile_schedules
from tensorcomp.compiler import ArraySpec
from tensorcomp.schedule.records import Fuse, Layout, Reorder, Split


@pytest.fixture(autouse=True)
def _avx2_facts(avx2):
    """Tile shapes below are the AVX2 facts' (see conftest.avx2)."""


def stage_code(ir_text: str) -> str:
    """The LLVM IR of a kernel's stage entries (the whole-kernel entry only calls them), in order."""
    return "".join(part for part in ir_text.split("define")[1:] if "_stage" in part[:part.index("(")])



def _chosen(op, specs):
    """The records the compiler's choose_schedule pass picks (own, tuned or the default's)."""
    from tensorcomp import compiler
    return compiler.plan(op, specs, op.check_call(tuple(specs), {}), {}, upto="choose_schedule").schedule

rng = np.random.default_rng(11)
MATMUL = "C[i, j] += A[i, k] * B[k, j]"
CAPS = "O[n, y, x, co, p, r] += I[n, 2*y + ky, 2*x + kx, ci, p, q] * W[ky, kx, ci, co, q, r]"


def bound_of(op, arrays):
    kinds = op.check_call(tuple(arrays), {})
    return op.bind_specs([ArraySpec(a.shape, a.dtype, a.strides) for a in arrays], kinds)


def tiles(op, arrays, base=()):
    bound = bound_of(op, arrays)
    strides = strides_under(op.inputs, bound, list(arrays), base)
    found = tile_schedules(bound.statements[0], 0, strides, itemsizes(bound), base)
    return bound, sorted(found, key=lambda sc: -sc[0])


def test_matmul_tiles_are_micro_kernels_and_compute_the_product():
    a = rng.standard_normal((64, 40)).astype(np.float32)
    b = rng.standard_normal((40, 48)).astype(np.float32)
    op = tc.op(MATMUL)
    _, found = tiles(op, [a, b])
    # best: 4 rows of i x 24 columns of j (3 AVX2 vectors): 12 multiply-adds per 7 loads; each k step
    # brings 96 bytes of B and 4 of each of A's 4 rows (one line of A serves 16 steps of k)
    assert found[0][1] == (Split(0, "j", 24), Split(0, "i", 4), Reorder(0, ("i_o", "j_o", "k", "i_i", "j_i")))
    assert found[0][0] == pytest.approx(12 / 7 + 0.12 - 0.05 * (96 + 4 * 4) / 12)
    for _, schedule in found:
        np.testing.assert_allclose(op.with_schedule(schedule)(a, b), a @ b, rtol=1e-4, atol=1e-4)
    kernel = stage_code(op.with_schedule(found[0][1]).code(a, b))
    assert kernel.count("alloca <8 x float>") == 12  # one accumulator vector per row and column vector


def test_tiles_respect_register_budget_and_need_written_columns():
    a = rng.standard_normal((24, 16)).astype(np.float32)
    op = tc.op(MATMUL)
    _, found = tiles(op, [a, a.T.copy()])
    assert found
    for _, schedule in found:
        splits = {r.index: r.factor for r in schedule if isinstance(r, Split)}
        order = schedule[-1].order
        inside = order[order.index("k") + 1:]  # rows, then the column loop
        rows = splits["i"] if "i_i" in inside else 1
        vectors = splits.get("j", 24) // 8
        assert rows * vectors <= 12 and rows * vectors + vectors + 1 <= 16
    # a reduction innermost (the dot-product form) has no written columns to tile
    x = rng.standard_normal((16, 32)).astype(np.float32)
    dot = tc.op("C[i, j] += A[i, k] * B[j, k]")
    assert tiles(dot, [x, x])[1] == []


def test_capsule_tiles_under_a_layout_match_the_default():
    I = rng.standard_normal((2, 9, 9, 4, 2, 4)).astype(np.float32)
    W = rng.standard_normal((3, 3, 4, 8, 4, 4)).astype(np.float32)
    op = tc.op(CAPS)
    ref = op.with_schedule(())(I, W)
    base = (Layout("O", (0, 1, 2, 4, 3, 5)), Layout("W", (0, 1, 2, 4, 3, 5)))
    _, found = tiles(op, [I, W], base)
    assert found and all(s[:2] == base for _, s in found)
    assert any(Fuse(0, "", "") in s for _, s in found)  # columns (co_i, r) fused into one run
    for _, schedule in found[:6]:
        np.testing.assert_allclose(op.with_schedule(schedule)(I, W), ref, rtol=1e-4, atol=1e-4)


def test_scatter_tiles_take_rows_over_a_compound_written_axis_one_per_axis():
    # dI[n, ky + 2*y, kx + 2*x, ci, p, q] += dO[n, y, x, co, p, r] * W[ky, kx, ci, co, q, r]: rows over
    # y or x write distinct elements (ky, kx stay outside the tile); rows over y and ky together would not
    I = rng.standard_normal((2, 9, 9, 4, 2, 4)).astype(np.float32)
    W = rng.standard_normal((3, 3, 4, 8, 4, 4)).astype(np.float32)
    dO = rng.standard_normal((2, 4, 4, 8, 2, 4)).astype(np.float32)
    g = tc.grad(tc.op(CAPS), "I")
    ref = g.with_schedule(())(I, W, dO)
    base = (Layout("W", (0, 1, 3, 5, 2, 4)), Layout("dI", (0, 1, 2, 4, 3, 5)))  # (ci, q) innermost
    _, found = tiles(g, [I, W, dO], base)
    inner = []
    orders = [next(r.order for r in schedule if isinstance(r, Reorder)) for _, schedule in found]
    for order in orders:
        rows = order[order.index("r") + 1:]  # the tile loops right inside the reduction (co, r)
        inner.append({n.split("_")[0] for n in rows} & {"n", "y", "x", "ky", "kx", "p"})
    assert {"y"} in inner and {"x"} in inner
    assert not any({"y", "ky"} <= rows or {"x", "kx"} <= rows for rows in inner)
    scatter_rows = [sc for sc, rows in zip(found, inner) if rows & {"y", "x"}]
    assert scatter_rows
    for _, schedule in scatter_rows[:4]:
        np.testing.assert_allclose(g.with_schedule(schedule)(I, W, dO), ref, rtol=1e-4, atol=1e-4)


def test_neighbours_keep_the_tile_and_the_outer_loop_and_compute_the_same():
    a = rng.standard_normal((16, 64)).astype(np.float32)
    b = rng.standard_normal((64, 32)).astype(np.float32)
    op = tc.op(MATMUL)
    bound, found = tiles(op, [a, b])
    start = found[0][1]
    steps = neighbours(start, bound.statements[0], 0)
    orders = [next(r for r in s if isinstance(r, Reorder)).order for s in steps]
    assert ("i_o", "k_o", "j_o", "k_i", "i_i", "j_i") in orders  # the reduction split, outer part moved out
    assert ("i_o", "k", "j_o", "i_i", "j_i") in orders  # an adjacent swap outside the tile
    for order in orders:
        assert order[0] == "i_o" and order[-2:] == ("i_i", "j_i")
    for schedule in steps:
        np.testing.assert_allclose(op.with_schedule(schedule)(a, b), a @ b, rtol=1e-4, atol=1e-4)
    assert neighbours((), bound.statements[0], 0) == []


def test_default_schedule_tiles_and_blocks_long_reductions():
    a = rng.standard_normal((64, 40)).astype(np.float32)
    b = rng.standard_normal((40, 48)).astype(np.float32)
    op = tc.op(MATMUL)
    kernel = stage_code(op.code(a, b))
    assert kernel.count("alloca <8 x float>") == 12 and '%"i_o"' in kernel  # the 4 x 24 tile, unasked
    np.testing.assert_allclose(op(a, b), a @ b, rtol=1e-4, atol=1e-4)
    # a 20000-long reduction would read 2.4 MB per tile, from memory again for every tile: it is
    # blocked to 500 steps (4 rows x 500 of A and 500 x 24 of B: 56 KB), its outer part right inside
    # the outermost loop, so each block of B is reused from cache by every tile of rows
    a = rng.standard_normal((64, 20000)).astype(np.float32)
    b = rng.standard_normal((20000, 48)).astype(np.float32)
    loops = [line.split()[1:5] for line in str(op.loopnest(a, b)).splitlines() if line.lstrip().startswith("for ")]
    assert loops[2:] == [["i_o", "in", "range(0,", "16):"], ["k_o", "in", "range(0,", "40):"],
                         ["j_o", "in", "range(0,", "2):"], ["k_i", "in", "range(0,", "500):"],
                         ["i_i", "in", "range(0,", "4):"], ["j_i", "in", "range(0,", "24):"]]
    np.testing.assert_allclose(op(a, b), a.astype(np.float64) @ b, rtol=1e-3, atol=1e-2)
    # too short a reduction to pay for loading and storing the tile
    a = rng.standard_normal((64, 8)).astype(np.float32)
    b = rng.standard_normal((8, 48)).astype(np.float32)
    assert '%"i_o"' not in op.code(a, b)


def test_default_schedule_relays_out_when_that_gives_the_only_statement_a_tile():
    I = rng.standard_normal((16, 9, 9, 16, 4, 4)).astype(np.float32)
    W = rng.standard_normal((3, 3, 16, 16, 4, 4)).astype(np.float32)
    op = tc.op(CAPS)  # (W, copied to a new layout per call, is small next to the work: 1 byte per 20 flops)
    specs = [ArraySpec.of(a) for a in (I, W)]
    chosen = _chosen(op, specs)
    # co innermost in O and W (the 4 x 4 poses outside it): no tile under the caller's layouts
    assert chosen == (Layout("O", (0, 1, 2, 4, 5, 3)), Layout("W", (0, 1, 2, 4, 5, 3)))
    loops = [line.split()[1] for line in str(op.loopnest(I, W)).splitlines() if line.lstrip().startswith("for ")]
    # the tile (rows, then the co columns) inside every reduction loop
    assert loops[-1] == "co" and max(loops.index(r) for r in ("ky", "kx", "ci", "q")) < len(loops) - 2
    out = op(I, W)
    assert out.strides[3] == 4  # O is returned in the layout it was computed in, as a view
    np.testing.assert_allclose(out, tc.op(CAPS, schedule=(Reorder(0, (
        "n", "y", "x", "co", "p", "r", "ky", "kx", "ci", "q")),))(I, W), rtol=1e-4, atol=1e-4)
    # tiles whose columns do not walk the written tensor do not count: the EM primary capsules' 1x1
    # convolution gets none, but its channels become a contiguous reduction run instead
    from tensorcomp.nn.capsule import _em_primary_op
    em = _em_primary_op(8)
    arrays = [np.zeros(s, np.float32) for s in [(64, 64, 12, 12), (8, 4, 4, 64), (8, 4, 4), (8, 64), (8,)]]
    assert _chosen(em, [ArraySpec.of(a) for a in arrays]) == (Layout("I", (0, 2, 3, 1)),)


def test_default_layouts_for_each_heavy_statement_and_for_long_reduction_runs():
    """Statements sharing an op's work each fix the layouts of tensors no heavier statement fixed;
    one with no tile under any candidate takes layouts that make its innermost loop a long
    contiguous reduction (a convolution's weight gradient: the batch index innermost)."""
    I = rng.standard_normal((16, 9, 9, 16, 4, 4)).astype(np.float32)
    W = rng.standard_normal((3, 3, 16, 16, 4, 4)).astype(np.float32)
    grad = tc.grad(tc.op(CAPS), ["I", "W"])
    dO = rng.standard_normal((16, 4, 4, 16, 4, 4)).astype(np.float32)
    chosen = _chosen(grad, [ArraySpec.of(a) for a in (I, W, dO)])
    assert [r.tensor for r in chosen] == ["W", "dI", "dO", "dW"]  # dI's statement first, then dW's
    dI, dW = grad(I, W, dO)
    ref_I, ref_W = tc.grad(tc.op(CAPS, schedule=(Reorder(0, ("n", "y", "x", "co", "p", "r", "ky", "kx", "ci",
                                                                 "q")),)), ["I", "W"])(I, W, dO)
    np.testing.assert_allclose(dI, ref_I, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(dW, ref_W, rtol=1e-3, atol=1e-3)
    conv = tc.op("O[n, f, y0, y1] += I[n, c, y0 + k0, y1 + k1] * W[f, c, k0, k1]")
    gw = tc.grad(conv, "W")
    x, w, g = (rng.standard_normal(s).astype(np.float32) for s in [(64, 6, 14, 14), (16, 6, 5, 5), (64, 16, 10, 10)])
    assert _chosen(gw, [ArraySpec.of(a) for a in (x, w, g)]) == (
        Layout("I", (1, 2, 3, 0)), Layout("dO", (1, 2, 3, 0)))
    lines = str(gw.loopnest(x, w, g)).splitlines()  # the batch loop right around a dot tile (4 x 2)
    assert [ln.strip() for ln in lines[-4:-1]] == ["for n in range(0, 64):", "for f_i in range(0, 4):",
                                                    "for c_i in range(0, 2):"]
    want = np.zeros((16, 6, 5, 5))
    for k0 in range(5):
        for k1 in range(5):
            want[:, :, k0, k1] = np.einsum("nfab,ncab->fc", g, x[:, :, k0:k0 + 10, k1:k1 + 10])
    np.testing.assert_allclose(gw(x, w, g), want, rtol=1e-3, atol=1e-3)
    # too little work per byte of the inputs to copy them: the caller's layouts
    small = [np.zeros(s, np.float32) for s in [(64, 6, 6, 6), (16, 6, 5, 5), (64, 16, 2, 2)]]
    assert _chosen(gw, [ArraySpec.of(a) for a in small]) == ()


def test_default_tile_blocks_a_long_window_reduction_from_the_innermost_loop_out():
    """A 9x9 stride-2 convolution over 64 channels: each 6 x 16 tile would read 456 KB across the
    whole window; the default keeps the innermost reduction loops whole (k1, c: 50 KB) and moves
    k0 right inside the outermost loop."""
    conv = tc.op("C[n, y0, y1, f] += I[n, 2*y0 + k0, 2*y1 + k1, c] * W[k0, k1, c, f]")
    x = rng.standard_normal((2, 20, 20, 64)).astype(np.float32)
    w = rng.standard_normal((9, 9, 64, 32)).astype(np.float32)
    loops = [line.split()[1] for line in str(conv.loopnest(x, w)).splitlines() if line.lstrip().startswith("for ")]
    # outermost the plain index with the most iterations for the threads (N = 2 here: y1), shared
    # with the fill (fused), then the fill's n, y0, f and the statement's k0
    assert loops[0] == "y1" and loops[4] == "k0" and loops[-4:] == ["k1", "c", "y0", "f_i"]
    windows = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), (9, 9), axis=(1, 2))[:, ::2, ::2]
    np.testing.assert_allclose(conv(x, w), np.einsum("nyxcab,abcf->nyxf", windows, w), rtol=1e-3, atol=1e-3)


def test_a_strip_of_the_shared_loop_runs_inside_the_loops_choosing_a_chunk_of_large_weights(monkeypatch):
    """Weights beyond the caches (20 x 256 x 256 floats, 5.2 MB) that the outermost loop does not
    index would be read whole at each of its steps; a strip of its steps (y_i) runs inside the
    loops that choose a chunk of them, so each chunk serves the strip from cache. Small weights
    (1 MB) keep the plain order. Either way the convolution is computed. (AVX-512 facts: their
    16-lane tiles leave the output position outermost here.)"""
    from tensorcomp import target
    for name, value in target.AVX512.items():
        monkeypatch.setattr(target, name, value)
    conv = tc.op("C[n, y, f] += I[n, y + k, c] * W[k, c, f]")
    x = rng.standard_normal((8, 83, 256)).astype(np.float32)

    def loops(w, x):
        return [ln.split()[1] for ln in str(conv.loopnest(x, w)).splitlines() if ln.lstrip().startswith("for ")]
    for taps, blocked in ((20, True), (4, False)):
        w = rng.standard_normal((taps, 256, 256)).astype(np.float32)
        xs = x[:, :64 + taps - 1]
        order = loops(w, xs)
        assert ("y_i" in order) == blocked
        if blocked:  # y_o shared by the cores, then the chunk's loops, then the strip
            assert order[3:9] == ["y_o", "k", "c_o", "n_o", "f_o", "y_i"]
        windows = np.lib.stride_tricks.sliding_window_view(xs.astype(np.float64), taps, axis=1)
        np.testing.assert_allclose(conv(xs, w), np.einsum("nyck,kcf->nyf", windows, w), rtol=1e-3, atol=1e-2)


def test_weight_gradient_tiles_take_rows_that_share_cache_lines_and_scatters_run_on_all_cores():
    """The derived gradients of a strided 9x9 convolution (channels last). dW: rows over adjacent
    channels of I (one cache line per step), not over window offsets (one line each); its long
    batch-and-position reduction is blocked. dI (a scatter into I's window positions): the
    outermost loop is a plain written index, so the cores share it without conflicting writes."""
    conv = tc.op("C[n, y0, y1, f] += I[n, 2*y0 + k0, 2*y1 + k1, c] * W[k0, k1, c, f]")
    x = rng.standard_normal((64, 20, 20, 32)).astype(np.float32)
    w = rng.standard_normal((9, 9, 32, 32)).astype(np.float32)
    g = rng.standard_normal((64, 6, 6, 32)).astype(np.float32)

    def tiled(op):
        lines = str(op.loopnest(x, w, g)).splitlines()
        return [ln.split()[1] for ln in lines if ln.lstrip().startswith("for ")], lines
    loops, _ = tiled(tc.grad(conv, "W"))
    assert loops[-2:] == ["c_i", "f_i"] and "n_o" in loops  # rows c_i, columns f_i; n blocked
    loops, lines = tiled(tc.grad(conv, "I"))
    outer = next(ln for ln in lines if ln.startswith("for ") and "dI" not in ln and "dC" not in ln
                 and lines.index(ln) > max(j for j, l2 in enumerate(lines) if "= 0.0" in l2))
    assert outer.split()[1] in ("c_o", "n_o", "n", "c") and "# parallel" in outer
    dW = tc.grad(conv, "W")(x, w, g)
    dI = tc.grad(conv, "I")(x, w, g)
    windows = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), (9, 9), axis=(1, 2))[:, ::2, ::2]
    np.testing.assert_allclose(dW, np.einsum("nyxcab,nyxf->abcf", windows, g), rtol=1e-3, atol=1e-2)
    want = np.zeros(x.shape)
    for a in range(9):
        for b in range(9):
            want[:, a:a + 11:2, b:b + 11:2, :] += np.einsum("nyxf,cf->nyxc", g, w[a, b])
    np.testing.assert_allclose(dI, want, rtol=1e-3, atol=1e-2)


def test_the_loop_whose_step_brings_least_new_data_runs_right_around_the_tile():
    # each step of i_o brings 4 new rows of A (4 x 256 floats); each step of j_o a new panel of B
    # (256 x 24 floats): i_o innermost, j_o (enough iterations for the threads) outermost
    a = rng.standard_normal((128, 256)).astype(np.float32)
    b = rng.standard_normal((256, 240)).astype(np.float32)
    op = tc.op(MATMUL)
    _, found = tiles(op, [a, b])
    order = next(r for r in found[0][1] if isinstance(r, Reorder)).order
    assert order == ("j_o", "i_o", "k", "i_i", "j_i")
    np.testing.assert_allclose(op.with_schedule(found[0][1])(a, b), a @ b, rtol=1e-4, atol=1e-4)


def test_tuner_tries_each_tile_also_with_its_reduction_blocked_to_fit_l1():
    """The capsule kernel's whole ky, kx, ci, q reduction reads ~130 KB around a 6 x 16 tile: the
    default keeps it whole, the tuner also tries ky, kx outside the tile loops (ci, q: ~14 KB)."""
    I = rng.standard_normal((4, 14, 14, 32, 4, 4)).astype(np.float32)
    W = rng.standard_normal((3, 3, 32, 32, 4, 4)).astype(np.float32)
    op = tc.op(CAPS)
    base = (Layout("O", (0, 1, 2, 4, 5, 3)), Layout("W", (0, 1, 2, 4, 5, 3)))
    bound = bound_of(op, [I, W])
    cands = space.tile_candidates(op, bound, [I, W], [base])
    orders = [next(r.order for r in c if isinstance(r, Reorder)) for c in cands if c[:2] == base]
    whole = [o for o in orders if o.index("ky") > 1]
    blocked = [o for o in orders if o[1:3] == ("ky", "kx")]
    assert whole and blocked
    for o in blocked:  # the block's inner loops right around the tile, the tile loops as in its twin
        tile = o[o.index("q") + 1:]
        assert o[o.index("ci") + 1] == "q" and not {"ky", "kx", "ci"} & set(tile) and 2 <= len(tile) <= 3
        assert [n for n in o if n not in ("ky", "kx")] in \
            [[n for n in w if n not in ("ky", "kx")] for w in whole]
    ref = np.einsum("nyxcpqab,abcdqr->nyxdpr", np.lib.stride_tricks.sliding_window_view(
        I.astype(np.float64), (3, 3), axis=(1, 2))[:, ::2, ::2], W.astype(np.float64))
    for c in cands[:4]:
        np.testing.assert_allclose(op.with_schedule(c)(I, W), ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tiles_with_peeled_tails_cover_rows_and_columns_that_do_not_divide(dtype):
    """100 rows in tiles of 6 leave 4; 88 float32 columns in tiles of 16 (44 float64 ones in tiles of
    8) leave one vector: each remainder runs as a smaller tile of its own, in vector code."""
    a = rng.standard_normal((100, 40)).astype(dtype)
    b = rng.standard_normal((40, 88 if dtype == np.float32 else 44)).astype(dtype)
    op = tc.op(MATMUL)
    bound = bound_of(op, [a, b])
    strides = strides_under(op.inputs, bound, [a, b], ())
    plain = tile_schedules(bound.statements[0], 0, strides, itemsizes(bound))
    tailed = tile_schedules(bound.statements[0], 0, strides, itemsizes(bound), tails=True)
    extent = {"i": 100, "j": b.shape[1]}

    def leaves_tail(schedule):
        return any(isinstance(r, Split) and r.index in extent and extent[r.index] % r.factor for r in schedule)
    assert not any(leaves_tail(s) for _, s in plain)
    with_tails = [s for _, s in tailed if leaves_tail(s)]
    assert with_tails and len(tailed) > len(plain)
    for schedule in with_tails:
        np.testing.assert_allclose(op.with_schedule(schedule)(a, b), a @ b, rtol=1e-4, atol=1e-4)
    lanes = 8 if dtype == np.float32 else 4
    six = (Split(0, "i", 6), Split(0, "j", 2 * lanes), Reorder(0, ("i_o", "j_o", "k", "i_i", "j_i")))
    nest = str(op.with_schedule(six).loopnest(a, b))
    assert "min(" not in nest and nest.count("for k in range(0, 40)") == 4  # full, and three tails
    assert "for i_i in range(0, 4)" in nest and f"for j_i in range(0, {lanes})" in nest
    code = stage_code(op.with_schedule(six).code(a, b))
    ty = "float" if dtype == np.float32 else "double"
    # accumulators: 6 x 2 vectors, 6 x 1 (column tail), 4 x 2 (row tail), 4 x 1
    assert code.count(f"alloca <{lanes} x {ty}>") == 12 + 6 + 8 + 4
    np.testing.assert_allclose(op.with_schedule(six)(a, b), a @ b, rtol=1e-4, atol=1e-4)
    # the tuner tries them after the tiles without tails
    cands = space.tile_candidates(op, bound, [a, b], [])
    assert any(leaves_tail(c) for c in cands) and not leaves_tail(cands[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cols", [10, 13, 20])
def test_columns_that_are_not_whole_vectors_end_in_a_masked_vector(dtype, cols):
    """A tile's last vector of columns, when they are not whole vectors, is loaded, updated and
    stored under a mask: lanes past the last column touch no memory."""
    a = rng.standard_normal((12, 40)).astype(dtype)
    b = rng.standard_normal((40, cols)).astype(dtype)
    op = tc.op(MATMUL, schedule=(Split(0, "i", 4), Reorder(0, ("i_o", "k", "i_i", "j"))))
    lanes = 8 if dtype == np.float32 else 4
    vectors = -(-cols // lanes)
    code = stage_code(op.code(a, b))
    ty = "float" if dtype == np.float32 else "double"
    bits = 32 if dtype == np.float32 else 64
    if 4 * vectors > 12:  # more accumulators than the registers hold: no vector tile
        assert "alloca <" not in code
    else:
        assert code.count(f"alloca <{lanes} x {ty}>") == 4 * vectors
        # per row: a masked load of the accumulator and of B's row in the loop (LLVM merges the rows'
        # equal loads), a masked store
        calls = [line for line in code.splitlines() if " call " in line]
        assert sum(f"llvm.masked.load.v{lanes}f{bits}" in line for line in calls) == 4 + 4
        assert sum(f"llvm.masked.store.v{lanes}f{bits}" in line for line in calls) == 4
    np.testing.assert_allclose(op(a, b), a @ b, rtol=1e-5, atol=1e-5 if dtype == np.float32 else 1e-12)


def test_without_a_dividing_tile_the_default_takes_one_with_tails_and_masked_columns():
    a = rng.standard_normal((37, 40)).astype(np.float32)
    b = rng.standard_normal((40, 45)).astype(np.float32)  # 45 columns: no tile of whole vectors divides
    op = tc.op(MATMUL)
    bound = bound_of(op, [a, b])
    strides = strides_under(op.inputs, bound, [a, b], ())
    assert not tile_schedules(bound.statements[0], 0, strides, itemsizes(bound))
    masked = tile_schedules(bound.statements[0], 0, strides, itemsizes(bound), tails=True)
    widths = {r.factor for _, s in masked for r in s if isinstance(r, Split) and r.index == "j"}
    assert widths and all(45 % w % 8 for w in widths)  # every column split leaves a partial vector
    code = op.code(a, b)
    assert "llvm.masked.store" in code and "alloca <8 x float>" in code
    np.testing.assert_allclose(op(a, b), a @ b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [29, 50])
def test_avx512_facts_give_16_lane_tiles_that_compute_the_product(monkeypatch, n):
    """Under the AVX-512 facts (32 registers of 64 bytes; the host's where LLVM targets AVX-512) the
    default tiles hold vectors of 16 float32 lanes, twice the accumulators, masked columns included; on
    a host without AVX-512, LLVM splits each vector in two and the values are the same."""
    from tensorcomp import target
    for name, value in target.AVX512.items():
        monkeypatch.setattr(target, name, value)
    op = tc.op("C[i, j] += A[i, k] * B[k, j]")
    a = rng.standard_normal((37, 64)).astype(np.float32)
    b = rng.standard_normal((64, n)).astype(np.float32)
    nest = str(op.loopnest(a, b))
    assert "vectors of 16 lanes" in nest
    np.testing.assert_allclose(op(a, b), a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("facts, dtype, batch", [("AVX512", np.float32, 64), ("AVX512", np.float32, 37),
                                                  ("AVX512", np.float64, 21), ("AVX2", np.float32, 37)])
def test_a_weight_gradient_summed_over_a_contiguous_batch_runs_as_a_dot_tile(monkeypatch, facts, dtype, batch):
    """A weight gradient whose reads walk the batch contiguously has no vector tile (its written
    innermost axis is 5 long); its default tile is a dot tile: rows over two written indices inside
    every reduction loop, one vector of partial sums per element along the batch (the last vector
    masked when the batch is not whole vectors), and the outermost loop shared by the cores. With 32
    registers, rows over the window offset whose loads overlap (k); with 16, 4 x 2 over f and c."""
    from tensorcomp import target
    for name, value in getattr(target, facts).items():
        monkeypatch.setattr(target, name, value)
    op = tc.op("dW[f, c, k] += dO[n, f, y] * I[n, c, k + y]",
               schedule=(Layout("dO", (1, 2, 0)), Layout("I", (1, 2, 0))))
    g = rng.standard_normal((batch, 16, 10)).astype(dtype)
    x = rng.standard_normal((batch, 6, 14)).astype(dtype)
    nest = str(op.loopnest(g, x))
    lanes = target.VECTOR_BYTES // np.dtype(dtype).itemsize
    size = 20 if facts == "AVX512" else 8
    assert f"# vector_sum tile: {size} elements of dW in registers, vectors of {lanes} lanes" in nest
    loops = [ln.split()[1] for ln in nest.splitlines() if ln.lstrip().startswith("for ")]
    assert loops[-4:] == ["y", "n", "f_i", "k" if facts == "AVX512" else "c_i"]
    assert next(ln for ln in nest.splitlines() if "for f_o" in ln).strip().endswith("# parallel")
    want = np.einsum("nfy,ncky->fck", g.astype(np.float64),
                     np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), 10, axis=2))
    np.testing.assert_allclose(op(g, x), want, rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-3)


@pytest.mark.parametrize("d", [16, 15])
def test_a_dot_tile_runs_its_reduction_over_a_fused_contiguous_group(monkeypatch, d):
    """Both reads walk (j, d) as one contiguous run: the dot tile's innermost reduction is the fused
    loop j_d (150 elements: the last vector masked), 4 x 4 elements of X in registers."""
    from tensorcomp import target
    for name, value in target.AVX512.items():
        monkeypatch.setattr(target, name, value)
    op = tc.op("X[n, k] += U[n, j, d] * W[k, j, d]")
    u = rng.standard_normal((64, 10, d)).astype(np.float32)
    w = rng.standard_normal((8, 10, d)).astype(np.float32)
    lines = [ln.strip() for ln in str(op.loopnest(u, w)).splitlines()]
    at = lines.index("# vector_sum tile: 16 elements of X in registers, vectors of 16 lanes")
    assert lines[at + 1:at + 4] == [f"for j_d in range(0, {10 * d}):", "for n_i in range(0, 4):",
                                    "for k_i in range(0, 4):"]
    np.testing.assert_allclose(op(u, w), np.einsum("njd,kjd->nk", u.astype(np.float64), w), rtol=1e-4, atol=1e-4)
