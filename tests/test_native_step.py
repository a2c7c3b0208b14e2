"""A compiled step replayed as one native call (``tensorcomp.native_step``)."""

import ctypes

import numpy as np
import pytest

import tensorcomp as tc
import tensorcomp.step as step_module
from tensorcomp import nn, optim
from tensorcomp.native_step import ALIGN, _Arena, _copy_ir
from tensorcomp.runtime import jit
from tensorcomp.train import MODELS
from test_compile import _step_of

rng = np.random.default_rng(11)


def _run(model, batches, native, steps, name=None):
    step_module.NATIVE = native
    try:
        build, loss_cls = MODELS[model]
        nn.manual_seed(1)
        net, lossf = build(), loss_cls()
        f = tc.compile(_step_of(net, lossf, optim.Adam(net.parameters()), name))
        losses = [f(*batches[k % len(batches)]) for k in range(steps)]
        return losses, net, f
    finally:
        step_module.NATIVE = True


@pytest.mark.parametrize("model,batch", [("lenet", 16), ("capsnet-em", 2)])
def test_a_compiled_step_runs_as_one_native_call_exactly_as_the_python_replay(model, batch):
    batches = [(rng.random((batch, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, batch)) for _ in range(3)]
    native_losses, native_net, f = _run(model, batches, True, 7)
    python_losses, python_net, g = _run(model, batches, False, 7)
    stats = f.stats(*batches[0])
    assert stats["dispatch"] == "one native call"
    assert g.stats(*batches[0])["dispatch"] == "Python replay (not built yet)"
    assert stats["native_peak_bytes"] > 0 and stats["native_stage_calls"] >= stats["calls"]
    # bit for bit: the same kernels on the same data, only the dispatch differs
    assert [float(x.data) for x in native_losses] == [float(x.data) for x in python_losses]
    for (k, a), (_, b) in zip(native_net.state_dict().items(), python_net.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=k)


def test_values_a_native_step_hands_on_are_new_arrays_every_call():
    """The losses it returns and the parameters it writes back are the caller's to keep: a later step
    does not write into them (its own values live in an arena reused every call)."""
    batches = [(rng.random((8, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 8)) for _ in range(2)]
    losses, net, f = _run("lenet", batches, True, 4)
    assert f.stats(*batches[0])["dispatch"] == "one native call"
    weight = net.state_dict()  # after the 4th call
    held = {k: v for k, v in ((k, p.data) for k, p in zip(weight, net.parameters()))}
    copies = {k: v.copy() for k, v in held.items()}
    kept = [float(x.data) for x in losses]
    for _ in range(3):
        f(*batches[0])
    assert [float(x.data) for x in losses] == kept
    assert len({id(x.data) for x in losses}) == len(losses)
    for k in held:
        np.testing.assert_array_equal(held[k], copies[k], err_msg=k)
    assert any(not np.array_equal(p.data, copies[k]) for k, p in zip(held, net.parameters()))


def test_the_arena_keeps_live_buffers_apart_and_reuses_freed_places():
    arena, live = _Arena(), {}
    r = np.random.default_rng(3)
    total = 0
    for step in range(2000):
        if live and r.random() < 0.5:
            k = list(live)[r.integers(len(live))]
            off, n = live.pop(k)
            arena.give(off, n)
            continue
        n = int(r.integers(1, 5000))
        off = arena.take(n)
        assert off % ALIGN == 0
        for o, m in live.values():
            assert off + n <= o or o + m <= off, "two live buffers overlap"
        live[step] = (off, n)
        total += n
    assert arena.end < total / 10  # places were reused
    for off, n in list(live.values()):
        arena.give(off, n)
    assert arena.free == [(0, arena.end)]  # freed places merge back into one


@pytest.mark.parametrize("shape,perm,itemsize", [((3, 5, 7), (2, 0, 1), 4), ((64, 6, 12, 12), (0, 2, 3, 1), 4),
                                                 ((9, 2), (1, 0), 8), ((4, 1, 33), (1, 2, 0), 2)])
def test_a_relayout_copy_loop_writes_what_numpy_transposes(shape, perm, itemsize):
    dtype = {2: np.int16, 4: np.float32, 8: np.float64}[itemsize]
    a = rng.standard_normal(shape).astype(dtype) if itemsize != 2 else rng.integers(-99, 99, shape).astype(dtype)
    phys = tuple(shape[p] for p in perm)
    out = np.full(phys, 7, dtype)
    name = f"copy_test_{'_'.join(map(str, shape))}_{itemsize}"
    text = _copy_ir(name, phys, tuple(a.strides[p] for p in perm), out.strides, itemsize)
    text = text.replace("define internal void", "define void")
    fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)(jit.compile_module(text, (name,), cached=False)[name])
    fn(out.ctypes.data, a.ctypes.data)
    np.testing.assert_array_equal(out, a.transpose(perm))


def test_a_native_step_checks_the_index_tensors_it_is_given_before_it_runs():
    nn.manual_seed(0)
    net, lossf = nn.Sequential(nn.Flatten(), nn.Linear(16, 5)), nn.CrossEntropyLoss()
    f = tc.compile(_step_of(net, lossf, optim.SGD(net.parameters(), 0.1)))
    x, y = np.ones((3, 4, 4), np.float32), np.array([0, 1, 4])
    for _ in range(4):
        f(x, y)
    assert f.stats(x, y)["dispatch"] == "one native call"
    before = [p.data.copy() for p in net.parameters()]
    with pytest.raises(tc.IndexRangeError) as e:
        f(x, np.array([0, 5, 1]))
    assert str(e.value) == ("op 'L += -Y[n, T[n]] * inv_n': index tensor T holds 5 at position (1,), outside axis 1 "
                            "of Y, of extent 5; its values must lie in [0, 5)")
    for a, p in zip(before, net.parameters()):  # nothing ran
        np.testing.assert_array_equal(p.data, a)
    assert np.isfinite(float(f(x, y).data))  # and the step runs again


def test_profile_times_each_call_of_the_program_inside_the_native_call():
    batches = [(rng.random((8, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 8))]
    _, net, f = _run("lenet", batches, True, 4, name="train_step")
    stats = f.stats(*batches[0])
    rows = f.profile(*batches[0], rounds=3)
    assert len(rows) == stats["calls"]
    assert all(t >= 0 for _, t in rows) and sum(t for _, t in rows) > 0
    assert any("<- op 'C_a[n, f, y0, y1] += I_a[n, c, k0 + y0, k1 + y1]" in h for h, _ in rows)
    for bad in (0, 2.5, True):
        with pytest.raises(tc.ArgumentError) as e:
            f.profile(*batches[0], rounds=bad)
        assert str(e.value) == (f"tc.compile(train_step).profile: rounds must be a positive int (how "
                                f"many calls of the step to time), got {bad!r}")
    with pytest.raises(tc.TraceError) as e:
        f.profile(batches[0][0][:3], batches[0][1][:3])
    assert str(e.value) == ("tc.compile(train_step): no compiled program for these arguments yet; a step is "
                            "compiled on its second call with arguments of one shape (on its first when the cache "
                            "saw its two calls agree before)")


def test_the_step_function_holds_no_address_so_one_program_compiles_once():
    """Two compiled steps of one model (each its own parameters, arena and kernels' buffers) run the
    same step function with different address tables: its IR names no address, so the same program
    gives the same IR in every process and its object code comes from the cache."""
    batches = [(rng.random((8, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 8))]
    _, _, f = _run("lenet", batches, True, 4)
    _, _, g = _run("lenet", batches, True, 4)
    a, b = (s._entry(batches[0]).native for s in (f, g))
    assert ctypes.cast(a.fn, ctypes.c_void_p).value == ctypes.cast(b.fn, ctypes.c_void_p).value
    assert a.table[0] != b.table[0]  # (the arenas)


def test_the_kernels_the_passes_rebuild_compile_in_workers_and_the_step_loads_them(monkeypatch, tmp_path):
    """After the whole-program passes, the kernels no traced step has built (a merged optimizer update,
    ops with fused epilogues) compile in worker processes, one per core, into the cache; the step
    then finds them there instead of running LLVM for them."""
    import tensorcomp.step as step
    from tensorcomp.runtime import jit
    from tensorcomp.target import num_threads
    if num_threads() < 2:
        pytest.skip("one core: nothing to compile in parallel")
    monkeypatch.setenv("TENSORCOMP_CACHE_DIR", str(tmp_path))  # (a cold cache)
    counts = {}
    compile_kernels, resolve = step.compile_kernels, step._resolve

    def counted_compile(p):
        counts["built"] = compile_kernels(p)
        return counts["built"]

    def counted_resolve(p):
        before = jit.object_counts()["llvm"]
        runs = resolve(p)
        counts.setdefault("llvm", jit.object_counts()["llvm"] - before)
        return runs
    monkeypatch.setattr(step, "compile_kernels", counted_compile)
    monkeypatch.setattr(step, "_resolve", counted_resolve)
    batches = [(rng.random((5, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 5))]
    losses, _, f = _run("lenet", batches, True, 3)
    assert counts["built"] >= 2 and counts["llvm"] == 0
    eager, _, _ = _run_eager("lenet", batches, 3)
    np.testing.assert_allclose([float(x.data) for x in losses], eager, rtol=1e-5)


def _run_eager(model, batches, steps):
    build, loss_cls = MODELS[model]
    nn.manual_seed(1)
    net, lossf = build(), loss_cls()
    fn = _step_of(net, lossf, optim.Adam(net.parameters()))
    return [float(fn(*batches[k % len(batches)]).data) for k in range(steps)], net, fn
