"""tc.compile: a traced step against the eager one, the whole-program passes, and what cannot be traced."""

import itertools

import numpy as np
import pytest

import tensorcomp as tc
from tensorcomp import nn, opdef, optim
from tensorcomp.runtime import kernel as cpu_kernel
from tensorcomp.tensor import keep_state
from tensorcomp.train import MODELS

rng = np.random.default_rng(5)


_RUNS = itertools.count()


def _step_of(model, lossf, opt, name=None):
    """A training step: forward, loss, backward, update; returns the loss. Each gets a name of its own
    unless ``name`` is given: a program that agreed with its next trace in an earlier test would
    compile after one trace, and trace counts and which steps ran eagerly would depend on the order
    the tests ran in."""
    def step(x, y):
        opt.zero_grad()
        loss = lossf(model(tc.Tensor(x)), y)
        loss.backward()
        opt.step()
        return loss
    step.__qualname__ = name or f"step{next(_RUNS)}"
    return step


def _train(build, loss_cls, batches, compiled, make_opt=None, nudge=None):
    """Train from ``nn.manual_seed(0)``: losses, final state, the step. ``nudge``: a generator whose
    rounding-level noise (relative 1e-7) multiplies every parameter after each eager step."""
    nn.manual_seed(0)
    model, lossf = build(), loss_cls()
    opt = (make_opt or (lambda ps: optim.Adam(ps)))(model.parameters())
    step = _step_of(model, lossf, opt)
    f = tc.compile(step) if compiled else step
    losses = []
    for x, y in batches:
        losses.append(float(f(x, y).data))
        for p in model.parameters() if nudge is not None else ():
            p.data[...] = p.data * (1 + 1e-7 * nudge.standard_normal(p.data.shape)).astype(p.data.dtype)
    return losses, model.state_dict(), f


def _batches(n, batch, shape=(1, 28, 28), classes=10):
    return [(rng.random((batch, *shape), dtype=np.float32), rng.integers(0, classes, batch)) for _ in range(n)]


def _deviation(a, b):
    """The largest difference of two trainings' parameters, relative to each tensor's largest value."""
    return max(float(np.max(np.abs(a[1][k] - b[1][k])) / (np.max(np.abs(a[1][k])) + 1e-12)) for k in a[1])


def _assert_same_training(a, b, rtol=1e-4, again=None):
    """Losses and parameters of ``b`` within ``rtol`` of ``a``'s. Where they are not and ``again``
    retrains ``a`` with rounding-level noise added (``_train``'s ``nudge``), a deviation no larger than
    four times that noise grows to is accepted instead: Adam's normalised steps take gradients near
    zero at full size whatever their sign, so in some trainings float32 rounding alone moves
    parameters by more than ``rtol`` within 20 steps."""
    (la, sa, _), (lb, sb, _) = a, b
    if again is not None and _deviation(a, b) > rtol:
        noise = _deviation(a, again())
        assert _deviation(a, b) <= 4 * noise, (_deviation(a, b), noise)
        return
    np.testing.assert_allclose(lb, la, rtol=rtol, atol=1e-6)
    for k in sa:
        scale = np.max(np.abs(sa[k])) + 1e-12
        assert np.max(np.abs(sa[k] - sb[k])) <= rtol * scale, k


# (LeNet at batch 64: its pooling kernels write channels-last when traced, and the pooling ops the passes
# rebuild write C order: readers must be compiled for what is written, see step.settle_layouts)
@pytest.mark.parametrize("model,batch", [("lenet", 8), ("lenet", 64), ("capsnet-small", 4), ("capsnet-em", 4),
                                         ("capsnet", 2)])
def test_twenty_compiled_steps_match_eager(model, batch):
    build, loss_cls = MODELS[model]
    batches = _batches(20, batch)
    eager = _train(build, loss_cls, batches, False)
    compiled = _train(build, loss_cls, batches, True)
    # (full CapsNet at batch 2: eager training nudged at rounding level drifts by ~1e-4 or more)
    _assert_same_training(eager, compiled, again=lambda: _train(build, loss_cls, batches, False,
                                                                nudge=np.random.default_rng(1)))
    step = compiled[2]
    # the first call's gradients were None and the later ones' not, but the step sets them to None before
    # backward without reading them: two traces agree, and the second call already runs the compiled program
    assert step.traces == 2 and step.replays == 19


def test_a_rewritten_call_writes_where_its_readers_read(tmp_path, monkeypatch):
    """The trace records the layout each eager kernel wrote; a call the passes give another op (the
    max pool returning its maximum for its gradient) may write another (here: the traced pool runs a
    tuned schedule writing channels-last, the rebuilt op its default, C order). Readers must be
    compiled for what is written (step.settle_layouts), or they read it wrongly."""
    from tensorcomp.autotune import database
    from tensorcomp.compiler import ArraySpec
    from tensorcomp.schedule import Layout
    monkeypatch.setenv("TENSORCOMP_CACHE_DIR", str(tmp_path))
    batches = _batches(6, 64)
    lenet = MODELS["lenet"]
    probe = _train(*lenet, batches[:3], True)[2]._entry(())
    pools = [c for c in probe.traced.body if isinstance(c, tc.trace.Call) and  # (not their gradients)
             c.op.source.startswith("O[n, c, y0, y1] = max(") and "nO[" not in c.op.source]
    for c in pools:
        spec = ArraySpec(*probe.traced.specs[c.inputs[0]])
        assert database.store_result(c.op, [spec], dict(c.params), "cpu", (Layout("O", (0, 2, 3, 1)),), 1e-3, [])
        c.op.forget_kernels()
    eager = _train(*lenet, batches, False)
    compiled = _train(*lenet, batches, True)
    program = compiled[2]._entry(()).traced
    tuned = {(c.op.ident, probe.traced.specs[c.inputs[0]]) for c in pools}
    written = [program.specs[c.outputs[0]][2] for c in program.body if isinstance(c, tc.trace.Call) and
               (c.op.ident, program.specs[c.inputs[0]]) in tuned]
    assert len(written) == 2 and all(s[1] < s[3] for s in written)  # (traced: channels innermost, as tuned)
    _assert_same_training(eager, compiled, rtol=1e-5)


class _Votes(nn.Module):
    """A layer written as a custom op applied to tensors (no apply(), no tape code)."""

    def __init__(self, i, j, d, k):
        super().__init__()
        self.w = nn.Parameter(0.3 * np.random.default_rng(7).standard_normal((i, j, d, k)).astype(np.float32))
        self.votes = tc.op("U[n, i, j, d] += X[n, i, k] * W[i, j, d, k]")
        self.squash = tc.op("Q[n, j, d] += U[n, i, j, d] * U[n, i, j, d]\n"
                            "S[n, j, d] = U[n, 0, j, d] * Q[n, j, d] / (1 + Q[n, j, d])")

    def forward(self, x):
        return self.squash(self.votes(x, self.w))


def _votes_net():
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 24),
                         _Reshape((3, 8)), _Votes(3, 5, 4, 8), nn.Flatten(), nn.Linear(20, 10))


class _Reshape(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.shape = shape

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)


def test_custom_ops_on_tensors_compile_with_adam_and_sgd():
    batches = _batches(10, 6, (1, 14, 14))
    for make_opt in (lambda ps: optim.Adam(ps, 1e-2, weight_decay=1e-3),
                     lambda ps: optim.SGD(ps, 0.05, momentum=0.9, nesterov=True)):
        eager = _train(_votes_net, nn.CrossEntropyLoss, batches, False, make_opt)
        compiled = _train(_votes_net, nn.CrossEntropyLoss, batches, True, make_opt)
        _assert_same_training(eager, compiled)


def test_an_op_called_on_tensors_returns_tensors_and_records_gradients():
    op = tc.op("C[i, j] += A[i, k] * B[k, j]")
    a = tc.Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    b = rng.standard_normal((4, 2))
    c = op(a, b)
    assert isinstance(c, tc.Tensor) and c.requires_grad
    dc = rng.standard_normal((3, 2))
    c.backward(dc)
    np.testing.assert_allclose(a.grad, dc @ b.T, rtol=1e-12)
    two = tc.op("P[i] = A[i] * 2\nQ[i] = A[i] + 1")(tc.Tensor(np.ones(3)))
    assert isinstance(two, tuple) and all(isinstance(t, tc.Tensor) for t in two)


def test_compiled_step_in_float64_against_central_differences():
    w = keep_state(tc.Tensor(rng.standard_normal((5, 3)), requires_grad=True))
    x = rng.standard_normal((4, 5))
    act = tc.op("H[n, j] += X[n, i] * W[i, j]\nY[n, j] = tanh(H[n, j]) * H[n, j]")
    loss_op = tc.op("L += Y[n, j] * Y[n, j]")

    def loss_and_grad(x):
        w.grad = None
        loss = loss_op(act(tc.Tensor(x), w))
        loss.backward()
        return loss, w.grad

    step = tc.compile(loss_and_grad)
    for _ in range(4):  # (the gradient is set to None before backward, never read: two traces)
        loss, g = step(x)
    assert step.replays == 3  # (the second call's trace agrees with the first: it runs compiled)
    v = rng.standard_normal(w.shape)
    base, eps = w.data.copy(), 1e-6
    w.data = base + eps * v
    plus = float(loss_op(act(x, w.data)))
    w.data = base - eps * v
    minus = float(loss_op(act(x, w.data)))
    w.data = base
    assert abs(float((g * v).sum()) - (plus - minus) / (2 * eps)) < 1e-7 * max(1.0, abs(plus))
    np.testing.assert_allclose(loss.data, loss_op(act(x, base)), rtol=1e-14)


def test_a_program_that_agreed_before_runs_compiled_from_the_first_call(monkeypatch, tmp_path):
    """Two traces that agree are remembered on disk: the same step compiled again (as in a new process)
    traces its first call dry — no kernel runs under the tracer — and replays it at once, training as
    the eager step does; another program (a new batch size) is traced twice; a program never seen
    (another model, the same code) is traced dry on each of its first two calls, its Python run once
    per call, and trains as eager."""
    monkeypatch.setenv("TENSORCOMP_CACHE_DIR", str(tmp_path))
    build, loss_cls = MODELS["lenet"]
    batches = _batches(4, 6)

    def run(data, compiled=True, make=build):
        nn.manual_seed(0)
        model, lossf = make(), loss_cls()
        opt = optim.Adam(model.parameters())
        step = _step_of(model, lossf, opt, name="remembered")
        f = tc.compile(step) if compiled else step
        return [float(f(x, y).data) for x, y in data], model.state_dict(), f
    first = run(batches)
    assert (first[2].traces, first[2].replays) == (2, 3)
    eager_runs = []
    real_run = cpu_kernel.run
    monkeypatch.setattr(cpu_kernel, "run", lambda *a: eager_runs.append(opdef.recording()) or real_run(*a))
    again = run(batches)
    assert (again[2].traces, again[2].replays) == (1, 4)
    assert not any(eager_runs)  # no kernel ran under the tracer (the replays run the native step)
    # what the passes made of that program was stored: none of them ran again, the same program replays
    assert list(again[2].stats(*batches[0])["pass_seconds"]) == ["stored_step"]
    assert again[2].source == first[2].source
    monkeypatch.setattr(cpu_kernel, "run", real_run)
    once = run(batches[:1])  # every kernel's thread plan is known by now: the first replay is native
    assert (once[2].traces, once[2].replays) == (1, 1)
    assert once[2].stats(*batches[0])["dispatch"] == "one native call"
    _assert_same_training(run(batches, compiled=False), again)
    other = run(_batches(3, 5))
    assert (other[2].traces, other[2].replays) == (2, 2)
    wider = lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 12), nn.ReLU(), nn.Linear(12, 10))  # noqa: E731
    forwards = []

    def counted():
        model = wider()
        forward = model.forward
        model.forward = lambda x: forwards.append(1) or forward(x)
        return model
    unseen = run(batches, make=counted)
    assert (unseen[2].traces, unseen[2].replays) == (2, 3)
    assert len(forwards) == 2  # each of the first two calls traced dry, once (the first ran as traced)
    _assert_same_training(run(batches, compiled=False, make=wider), unseen)


def test_the_first_call_compiles_its_kernels_on_all_cores_then_runs_as_traced(monkeypatch, tmp_path):
    """A new step's first call is traced dry: no kernel runs nor compiles under the tracer; then every
    kernel the program calls is handed to the compiling workers at once, before the first one runs,
    and the program runs as traced: the call trains as the eager step."""
    from tensorcomp import settle
    monkeypatch.setenv("TENSORCOMP_CACHE_DIR", str(tmp_path))

    def build():  # (widths no other test uses: none of its kernels is built in this process yet)
        return nn.Sequential(nn.Conv2d(1, 3, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 12 * 12, 19),
                             nn.ReLU(), nn.Linear(19, 10))
    batches = _batches(1, 3)
    events = []
    real_workers, real_run = settle.compile_in_workers, cpu_kernel.run
    monkeypatch.setattr(settle, "compile_in_workers",
                        lambda todo, make: events.append(("compile", len(todo))) or real_workers(todo, make))
    monkeypatch.setattr(cpu_kernel, "run",
                        lambda *a: events.append(("run", opdef.recording())) or real_run(*a))
    compiled = _train(build, nn.CrossEntropyLoss, batches, True)
    assert events[0][0] == "compile" and events[0][1] >= 6  # (the forward, gradient and update kernels)
    assert [e for e in events if e[0] == "compile"] == events[:1]
    assert ("run", True) not in events and ("run", False) in events
    monkeypatch.setattr(cpu_kernel, "run", real_run)
    _assert_same_training(_train(build, nn.CrossEntropyLoss, batches, False), compiled, rtol=0)


def test_a_stored_step_is_used_only_where_its_kernels_write_what_it_expects(monkeypatch, tmp_path):
    """The program the passes made is stored under the traced program; a stored program whose kernels
    now write an output in another axis order (tuning gave an op another schedule), or a damaged file,
    is not used: the passes run again and the step trains as eager."""
    from dataclasses import replace
    from tensorcomp import step_cache
    from tensorcomp.runtime import objects
    from tensorcomp.strides import permuted_strides
    monkeypatch.setenv("TENSORCOMP_CACHE_DIR", str(tmp_path))
    build, loss_cls = MODELS["lenet"]
    batches = _batches(3, 6)

    def run(compiled=True):
        nn.manual_seed(0)
        model, lossf = build(), loss_cls()
        opt = optim.Adam(model.parameters())
        f = tc.compile(_step_of(model, lossf, opt, name="stored"))if compiled else \
            _step_of(model, lossf, opt, name="stored")
        return [float(f(x, y).data) for x, y in batches], model.state_dict(), f
    first = run()
    entry = first[2]._entry(())
    p, runs = entry.program, entry.runs
    assert step_cache.settled(p, runs)
    call = next(r for r, release in runs if release is None and len(r.kernel.outputs[0][0]) == 4)
    v = call.outputs[0]
    shape, dtype, strides = p.specs[v]
    other = permuted_strides(shape, (1, 2, 3, 0), np.dtype(dtype).itemsize)
    assert not step_cache.settled(replace(p, specs=p.specs[:v] + ((shape, dtype, other),) + p.specs[v + 1:]), runs)
    again = run()
    assert list(again[2].stats(*batches[0])["pass_seconds"]) == ["stored_step"]
    for path in (objects.objects_dir()).glob("*.step"):
        path.write_bytes(b"damaged")
    damaged = run()
    assert "eliminate_dead" in damaged[2].stats(*batches[0])["pass_seconds"]
    _assert_same_training(run(compiled=False), damaged)
    _assert_same_training(run(compiled=False), again)


def test_a_new_batch_size_is_traced_again():
    build, loss_cls = MODELS["lenet"]
    # (the last batch of an epoch: its second trace comes after replays, which left views as parameters)
    batches = _batches(3, 8) + _batches(1, 5) + _batches(2, 8) + _batches(2, 5)
    eager = _train(build, loss_cls, batches, False)
    compiled = _train(build, loss_cls, batches, True)
    _assert_same_training(eager, compiled)
    step = compiled[2]
    assert step.traces == 4 and step.replays == 6  # (a signature's second call runs compiled)


def test_dead_calls_are_dropped_and_common_calls_shared():
    w = keep_state(tc.Tensor(np.ones((4, 4)), requires_grad=True))
    mm = tc.op("C[i, j] += A[i, k] * B[k, j]")
    double = tc.op("D[i, j] = A[i, j] * 2")

    def fn(x):
        unused = double(mm(x, w))  # noqa: F841 - computed, never read: dead
        a, b = mm(x, w), mm(x, w)  # one call twice on the same values: shared
        return a + b

    step = tc.compile(fn)
    x = np.arange(16.0).reshape(4, 4)
    for _ in range(3):
        out = step(x)
    np.testing.assert_allclose(out.data, 2 * (x @ np.ones((4, 4))))
    stats = step.stats(x)
    # dead calls dropped and the repeated product shared (5 -> 2 calls), then the sum, elementwise,
    # fused into the product that makes its inputs (fuse_epilogues: 2 -> 1; the product is a temporary)
    assert (stats["calls_traced"], stats["calls"]) == (5, 1)
    assert step.source == (
        "# O_b=v6 <- op 'C_a[i, j] += A_a[i, k] * B_a[k, j]; O_b[i0_b, i1_b] = C_a...' (A_a=v0, B_a=v1)\n"
        "v6_C_a[i, j] += v0[i, k] * v1[k, j]\n"
        "v6[i0_b, i1_b] = v6_C_a[i0_b, i1_b] + v6_C_a[i0_b, i1_b]")


def test_copies_into_the_same_layout_are_dropped():
    """A call that copies a value into an array of the same layout (a traced step copies a gradient
    numpy cannot flatten in place) is dropped, its readers reading the value; a copy the step returns
    keeps its memory, and one into another layout is counted with the relayout copies."""
    from dataclasses import replace

    from tensorcomp.settle import copy_calls, drop_same_layout_copies
    from tensorcomp.tensor import _copy_op
    from tensorcomp.trace import program_source, trace
    mm, double = tc.op("C[i, j] += A[i, k] * B[k, j]"), tc.op("D[i, j] = A[i, j] * 2")
    w = np.ones((3, 4), np.float32)

    def fn(x):
        c = _copy_op(2)(mm(x, w))
        return double(c), _copy_op(2)(c)
    x = np.ones((2, 3), np.float32)
    _, p = trace(fn, "fn", (x,), [x], dry=True)
    assert program_source(p) == (
        "# C=v2 <- op 'C[i, j] += A[i, k] * B[k, j]' (A=v0, B=v1)\n"
        "v2[i, j] += v0[i, k] * v1[k, j]\n"
        "# O=v3 <- op 'O[i0, i1] = A[i0, i1]' (A=v2)\n"
        "v3[i0, i1] = v2[i0, i1]\n"
        "# D=v4 <- op 'D[i, j] = A[i, j] * 2' (A=v3)\n"
        "v4[i, j] = v3[i, j] * 2\n"
        "# O=v5 <- op 'O[i0, i1] = A[i0, i1]' (A=v3)\n"
        "v5[i0, i1] = v3[i0, i1]")
    assert program_source(drop_same_layout_copies(p)) == (
        "# C=v2 <- op 'C[i, j] += A[i, k] * B[k, j]' (A=v0, B=v1)\n"
        "v2[i, j] += v0[i, k] * v1[k, j]\n"
        "# D=v4 <- op 'D[i, j] = A[i, j] * 2' (A=v2)\n"
        "v4[i, j] = v2[i, j] * 2\n"
        "# O=v5 <- op 'O[i0, i1] = A[i0, i1]' (A=v2)\n"
        "v5[i0, i1] = v2[i0, i1]")
    assert copy_calls(p) == 0
    transposed = (p.specs[5][0], p.specs[5][1], (4, 8))
    assert copy_calls(replace(p, specs=p.specs[:5] + (transposed,))) == 1


def test_state_written_back_and_read_again():
    w = keep_state(tc.Tensor(np.zeros(3)))
    inc = tc.op("W2[i] = W[i] + X[i]")

    def fn(x):
        w.data = inc(w.data, x)

    step = tc.compile(fn)
    for k in range(5):
        step(np.full(3, float(k)))
    np.testing.assert_allclose(w.data, np.full(3, 10.0))
    assert step.replays == 4


def test_reading_a_value_inside_a_traced_step_is_an_error():
    w = keep_state(tc.Tensor(np.ones(3), requires_grad=True))
    total = tc.op("L += X[i] * W[i]")

    def fn(x):
        loss = total(tc.Tensor(x), w)
        return loss.item()

    with pytest.raises(tc.TraceError) as e:
        tc.compile(fn)(np.ones(3))
    assert str(e.value) == (
        "tc.compile(test_reading_a_value_inside_a_traced_step_is_an_error.<locals>.fn): .item() reads the value of "
        "a tensor the step computes; a compiled step runs without Python, so it cannot depend on values. Return "
        "the tensor from the function and read it after the call (loss = step(x, y); loss.item())")

    def branch(x):
        loss = total(tc.Tensor(x), w)
        if loss > 0.5:
            return loss
        return loss * 2

    with pytest.raises(tc.TraceError, match=r"a comparison \(__gt__\) reads the value of a tensor the step"):
        tc.compile(branch)(np.ones(3))


def test_values_python_computes_are_refused_when_they_change():
    scale = tc.op("Y[i] = X[i] * s")
    count = [0]

    def drifting(x):
        count[0] += 1
        return scale(tc.Tensor(x), s=float(count[0]))

    step = tc.compile(drifting)
    step(np.ones(2))
    with pytest.raises(tc.TraceError) as e:
        step(np.ones(2))
    assert str(e.value) == (
        "tc.compile(test_values_python_computes_are_refused_when_they_change.<locals>.drifting): two calls with the "
        "same argument shapes ran differently: scalar parameter 's' of op 'Y[i] = X[i] * s' was 1.0 then 2.0; it "
        "is computed in Python from something the trace cannot see. Keep such a value in a tensor "
        "(tc.tensor.keep_state) and compute it with an op")

    add = tc.op("Y[i] = X[i] + N[i]")

    def noisy(x):
        return add(tc.Tensor(x), rng.standard_normal(x.shape))

    step = tc.compile(noisy)
    step(np.ones(2))
    with pytest.raises(tc.TraceError, match=r"an array of shape \(2,\) that op 'Y\[i\] = X\[i\] \+ N\[i\]' reads "
                                            r"was not computed by an op and changed between the calls"):
        step(np.ones(2))


def test_dropout_draws_new_masks_on_each_compiled_call_as_eager_does(monkeypatch, tmp_path):
    """Random numbers made with ``tensor.drawn`` (Dropout's masks) are a recipe in the program, not a
    constant: each compiled call draws anew from the same generator in the same order as the eager
    step, so the compiled training is the eager one exactly -- traced, and replayed from the stored
    step by a step compiled again."""
    monkeypatch.setenv("TENSORCOMP_CACHE_DIR", str(tmp_path))

    def build():
        return nn.Sequential(nn.Conv2d(1, 4, 5), nn.ReLU(), nn.Dropout(0.25), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(4 * 12 * 12, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 10))
    x, y = _batches(1, 6)[0]
    batches = [(x, y)] * 6  # (one batch: the losses differ only by the masks and the updates)

    def run(compiled):
        nn.manual_seed(0)
        model, lossf = build(), nn.CrossEntropyLoss()
        opt = optim.Adam(model.parameters(), 1e-2)
        f = _step_of(model, lossf, opt, name="dropout")
        f = tc.compile(f) if compiled else f
        return [float(f(x, y).data) for x, y in batches], model.state_dict(), f
    eager, first, again = run(False), run(True), run(True)
    assert (first[2].traces, again[2].traces) == (2, 1)
    assert list(again[2].stats(x, y)["pass_seconds"]) == ["stored_step"]
    assert len(set(eager[0])) == len(batches)
    for compiled in (first, again):
        _assert_same_training(eager, compiled, rtol=0)
    program = first[2]._entry(()).program
    assert [s.kind for _, s in program.sources].count("drawn") == 2
    assert [args for _, args in program.draws] == [((6, 4, 24, 24), 0.25), ((6, 16), 0.5)]


def test_a_deep_copy_of_a_model_trains_compiled_as_eager():
    """``copy.deepcopy(model)`` (and pickling) keeps parameters state: two copies of one initialisation,
    one trained eagerly and one through ``tc.compile``, end equal."""
    import copy
    import pickle
    nn.manual_seed(3)
    base = nn.Sequential(nn.Conv2d(1, 3, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 12 * 12, 10))
    batches = _batches(5, 4)
    trained = []
    for model, compiled in ((copy.deepcopy(base), False), (copy.deepcopy(base), True),
                            (pickle.loads(pickle.dumps(base)), True)):
        opt = optim.Adam(model.parameters(), 1e-2)
        step = _step_of(model, nn.CrossEntropyLoss(), opt)
        step = tc.compile(step) if compiled else step
        trained.append(([float(step(x, y).data) for x, y in batches], model.state_dict(), step))
    for compiled in trained[1:]:
        _assert_same_training(trained[0], compiled, rtol=1e-6)
        assert compiled[2].replays == 4
    assert np.abs(trained[0][1]["layers.4.weight"] - base.state_dict()["layers.4.weight"]).max() > 1e-3  # (trained)


def test_plain_tensors_an_optimizer_updates_are_state_and_others_may_not_be_assigned():
    """A ``tc.Tensor(..., requires_grad=True)`` handed to an optimizer is state (its compiled training is
    the eager one); a tensor that is not state, assigned a value ops computed inside the step, is an
    error naming it (a replay would not write it back), and the call leaves its data as it was."""
    votes, head = tc.op("U[n, j, d] += X[n, k] * W[j, d, k]"), tc.op("L += U[n, j, d] * U[n, j, d]")
    x = rng.random((3, 4), dtype=np.float32)
    w0 = rng.standard_normal((2, 3, 4)).astype(np.float32)
    runs = []
    for compiled in (False, True):
        w = tc.Tensor(w0.copy(), requires_grad=True)
        opt = optim.SGD([w], 0.01)

        def step(x):
            opt.zero_grad()
            loss = head(votes(tc.Tensor(x), w))
            loss.backward()
            opt.step()
            return loss
        f = tc.compile(step) if compiled else step
        runs.append(([float(f(x).data) for _ in range(4)], np.array(w.data)))
    np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=1e-6)
    np.testing.assert_allclose(runs[1][1], runs[0][1], rtol=1e-6)
    assert not np.allclose(runs[0][1], w0)

    cache = tc.Tensor(np.zeros((3, 2, 3), np.float32))

    def remembers(x):
        u = votes(tc.Tensor(x), tc.Tensor(w0))
        cache.data = u.data
        return head(u)
    before = cache.data
    with pytest.raises(tc.TraceError) as e:
        tc.compile(remembers)(x)
    assert str(e.value) == (
        "tc.compile(test_plain_tensors_an_optimizer_updates_are_state_and_others_may_not_be_assigned.<locals>."
        "remembers): the step assigns the data of a tensor of shape (3, 2, 3) that is not state a value ops "
        "computed; a compiled step writes back only state. Make it state: an nn.Parameter, a tensor an optimizer "
        "updates, or tc.tensor.keep_state(tensor) before compiling")
    assert cache.data is before


def test_a_step_returns_views_of_values_it_computes():
    """A transposed or reshaped view of a computed value returned by the step is a value of the
    program (registered before the program's values are listed): every call returns what eager does."""
    mm = tc.op("C[i, j] += A[i, k] * B[k, j]")
    w = rng.standard_normal((3, 4)).astype(np.float32)

    def fn(x):
        c = mm(tc.Tensor(x), tc.Tensor(w))
        return c.transpose(1, 0), c.reshape(2, 4), c
    step = tc.compile(fn)
    for k in range(4):
        x = rng.standard_normal((2, 3)).astype(np.float32)
        got, want = step(x), fn(x)
        for g, e in zip(got, want):
            np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-6)
    assert step.replays == 3


def test_keyword_arguments_are_bound_to_the_function_s_parameters():
    """``step(x=..., y=...)`` runs as ``step(x, y)`` (one compiled program for both spellings); a
    keyword the function does not take is an error naming it."""
    lin, lossf = nn.Linear(4, 2), nn.MSELoss()
    opt = optim.SGD(lin.parameters(), 0.1)

    def fit(x, y, scale=1.0):
        opt.zero_grad()
        loss = lossf(lin(tc.Tensor(x)), tc.Tensor(y))
        loss.backward()
        opt.step()
        return loss
    step = tc.compile(fit)
    x, y = rng.random((3, 4), dtype=np.float32), rng.random((3, 2), dtype=np.float32)
    step(x, y=y)
    step(y=y, x=x)
    step(x, y)
    assert (step.traces, step.replays) == (2, 2)
    with pytest.raises(tc.TraceError) as e:
        step(x, z=y)
    assert str(e.value) == (
        "tc.compile(test_keyword_arguments_are_bound_to_the_function_s_parameters.<locals>.fit): missing a "
        "required argument: 'y'")


def test_a_changed_random_recipe_is_an_error():
    from tensorcomp.tensor import drawn
    keep = tc.op("Y[i] = X[i] * M[i]")
    p = [0.5]

    def masked(x):
        return keep(tc.Tensor(x), drawn(_half_mask, x.shape, p[0]))
    step = tc.compile(masked)
    step(np.ones(4))
    p[0] = 0.25
    with pytest.raises(tc.TraceError) as e:
        step(np.ones(4))
    assert str(e.value) == (
        "tc.compile(test_a_changed_random_recipe_is_an_error.<locals>.masked): two calls with the same argument "
        "shapes ran differently: they drew other random numbers (tensor.drawn: another recipe, shape or order)")


def test_drawn_refuses_what_is_not_a_recipe_for_an_array():
    from tensorcomp.tensor import drawn
    with pytest.raises(tc.ArgumentError) as e:
        drawn(3, (2,))
    assert str(e.value) == "tc.tensor.drawn: make must be a function returning an array, got int"
    with pytest.raises(tc.ArgumentError) as e:
        drawn(_listed, 2)
    assert str(e.value) == "tc.tensor.drawn: _listed returned a list; it must return a numpy array"


def _listed(n):
    return [0.5] * n


def _half_mask(shape, p):
    return (rng.random(shape) >= p).astype(np.float64)


def test_bad_arguments_and_introspection_before_compiling():
    step = tc.compile(lambda x: x)
    with pytest.raises(tc.TraceError, match="argument 0 is a object; a compiled step takes non-empty numpy or device arrays"):
        step(object())
    with pytest.raises(tc.TraceError, match="no compiled program for any arguments yet"):
        step.source
    with pytest.raises(tc.TraceError, match="tc.compile expects a function, got int"):
        tc.compile(3)


def test_independent_calls_of_one_op_merge_into_one_call():
    nn.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = optim.Adam(model.parameters())  # four parameters: four updates of one op
    compiled = tc.compile(_step_of(model, nn.CrossEntropyLoss(), opt))
    x, y = rng.random((5, 3), dtype=np.float32), rng.integers(0, 2, 5)
    for _ in range(4):
        compiled(x, y)
    stats = compiled.stats(x, y)
    # (the ReLU also runs inside the first Linear, and its gradient inside the second Linear's gradient;
    # the weights' updates inside their gradients' calls: fuse_updates)
    assert stats["calls"] == stats["calls_traced"] - 3 - 2
    headers = [line for line in compiled.source.splitlines() if line.startswith("# ") and "<- op" in line]
    assert len([h for h in headers if "M2_1=" in h and "M2_2" not in h]) == 1  # one call updates both biases
    assert len([h for h in headers if "M2_u=" in h]) == 2


def _same_training(build, make_opt, x, y, steps):
    """``steps`` eager and ``steps`` compiled steps from the same initial parameters agree (losses,
    parameters); returns the compiled step."""
    results = []
    for compiled in (False, True):
        nn.manual_seed(4)
        model = build()
        fn = _step_of(model, nn.CrossEntropyLoss(), make_opt(model))
        step = tc.compile(fn) if compiled else fn
        losses = [float(step(x, y).numpy()) for _ in range(steps)]
        results.append((losses, model.state_dict()))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5)
    for k, v in results[0][1].items():
        np.testing.assert_allclose(results[1][1][k], v, rtol=1e-4, atol=1e-6)
    return step


def test_values_are_written_in_the_layouts_their_readers_copy_them_into(monkeypatch, tmp_path):
    import tensorcomp.assign_layouts as layouts
    import tensorcomp.step as step_module
    from tensorcomp.schedule import Layout
    batches = _batches(4, 64)  # (the batch size at which LeNet's kernels lay values out)
    x, y = batches[0]
    lenet = MODELS["lenet"]

    def timed_as(faster: bool):  # the kernels around a moved value measure faster (or slower) with the move
        def seconds(p, runs, ks, repeats=5):
            moved = any(isinstance(r, Layout) for k in ks for r in p.body[k].op.schedule)
            return 1.0 + (-0.5 if faster else 0.5) * moved
        return seconds
    # (the readers' pass, after this one, is timed for real: off here, ``test_reader_layouts`` tests it)
    monkeypatch.setattr(step_module, "choose_reader_layouts", lambda p, runs, resolve, key: (p, runs))
    monkeypatch.setattr(step_module, "ASSIGN_LAYOUTS", False)
    off = _train(*lenet, batches, True)
    monkeypatch.setattr(step_module, "ASSIGN_LAYOUTS", True)
    monkeypatch.setenv("TENSORCOMP_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setattr(layouts, "seconds", timed_as(True))
    monkeypatch.setattr(layouts, "faster", lambda *programs: True)  # (and the whole step with them)
    on = _train(*lenet, batches, True)
    _assert_same_training(off, on)
    # without the pass the kernels copy pooled, flattened and gradient values into their orders on
    # every call; with moves that pay, the calls making them write them so, and no kernel copies
    assert off[2].stats(x, y)["relayout_copies"] >= 4 and on[2].stats(x, y)["relayout_copies"] == 0
    program = on[2]._entry(()).program
    laid = [c for c in program.body if isinstance(c, tc.trace.Call) and
            any(isinstance(r, Layout) and r.tensor in c.op.outputs for r in c.op.schedule)]
    assert len(laid) >= 4 and "assign_layouts" in on[2].stats(x, y)["pass_seconds"]
    # the choice is stored with the program: the same program compiled again does not time anything
    monkeypatch.setattr(layouts, "seconds", None)
    assert _train(*lenet, batches, True)[2].stats(x, y)["relayout_copies"] == 0
    # moves that do not pay are not made
    monkeypatch.setenv("TENSORCOMP_CACHE_DIR", str(tmp_path / "b"))
    monkeypatch.setattr(layouts, "seconds", timed_as(False))
    assert _train(*lenet, batches, True)[2].stats(x, y)["relayout_copies"] == off[2].stats(x, y)["relayout_copies"]
    # nor those the kernels alone favour when the whole step does not run faster with them (it ran
    # 1.8 ms against 1.0 with three such moves once: the kernels timed alone, at a noisy moment)
    monkeypatch.setenv("TENSORCOMP_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setattr(layouts, "seconds", timed_as(True))
    monkeypatch.setattr(layouts, "faster", lambda *programs: False)
    assert _train(*lenet, batches, True)[2].stats(x, y)["relayout_copies"] == off[2].stats(x, y)["relayout_copies"]


def test_an_activation_runs_inside_the_convolution_that_makes_its_input():
    """fuse_epilogues: the ReLU after a convolution becomes statements of the convolution's call; the
    value before the ReLU is no output of it, since the ReLU's gradient reads the ReLU's output
    (gradients_from_outputs); the step still trains as the eager one does."""
    def build():
        nn.manual_seed(3)
        return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    x = rng.random((4, 1, 6, 6), dtype=np.float32)
    y = rng.integers(0, 3, 4)
    step = _same_training(build, lambda m: optim.SGD(m.parameters(), lr=0.1), x, y, 5)
    headers = [line for line in step.source.splitlines() if line.startswith("# ")]
    fused = headers[0]
    assert fused.startswith("# O_b=v") and "O_a=v" not in fused and "relu" not in "".join(headers[1:3])
    stats = step.stats(x, y)
    assert stats["calls"] < stats["calls_traced"]


@pytest.mark.parametrize("kind, before, derivative", [
    ("relu", "where(X[i0, i1] > 0, 1, 0)", "where(Y[i0, i1] > 0, 1, 0)"),
    ("tanh", "(1 - tanh(X[i0, i1]) ** 2)", "(1 - Y[i0, i1] * Y[i0, i1])"),
    ("sigmoid", "(sigmoid(X[i0, i1]) * (1 - sigmoid(X[i0, i1])))", "Y[i0, i1] * (1 - Y[i0, i1])"),
    ("gelu", "(0.5 * (1 + erf(X[i0, i1] * 0.7071067811865476)) + 0.5 * X[i0, i1] * (1.1283791670955126 * "
             "exp(-(X[i0, i1] * 0.7071067811865476) ** 2) * 0.7071067811865476))", None)])
def test_an_activation_gradient_reads_the_activation_output(kind, before, derivative):
    """gradients_from_outputs (golden before/after): the gradient of relu, tanh, sigmoid (and exp) is
    rewritten on the activation's output, ``dX = dO * f'(Y)``, reading the value the activation call
    made; gelu's derivative needs its input and keeps it. Compiled and eager training agree."""
    from ops.activation import activation
    from tensorcomp.output_gradients import gradients_from_outputs
    act = activation(kind, 2)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(5, 6), nn.Linear(6, 3)

        def forward(self, x):
            return self.b(tc.tensor.apply(act, self.a(x)))
    x = rng.random((7, 5), dtype=np.float32)
    y = rng.integers(0, 3, 7)
    step = _same_training(Net, lambda m: optim.SGD(m.parameters(), lr=0.1), x, y, 4)
    traced = step._entry(()).traced
    calls = [c for c in traced.body if isinstance(c, tc.trace.Call)]
    fwd = next(c for c in calls if c.op is act)
    grad = next(c for c in calls if getattr(c.op, "base", None) is act)
    assert grad.op.source == f"dX[i0, i1] += dO[i0, i1] * {before}"  # as derived: it reads X, the input
    after = next(c for c in gradients_from_outputs(traced).body if c.outputs == grad.outputs)
    if derivative is None:
        assert after == grad
    else:
        assert after.op.source == f"dX[i0, i1] = dO[i0, i1] * {derivative}" and after.inputs[1] == fwd.outputs[0]


def test_a_gradient_reads_the_forward_values_it_would_recompute():
    """keep_forward_values: a custom op with temporaries (a softmax over a product); its gradient op,
    which recomputes the forward statements whose values it reads, instead reads them from the
    forward call (they become outputs of its call); the compiled step trains as the eager one does."""
    attend = tc.op("A[n, j] += X[n, i] * W[j, i]\nM[n] = max(A[n, j])\nE[n, j] = exp(A[n, j] - M[n])\n"
                   "Z[n] += E[n, j]\nP[n, j] = E[n, j] / Z[n]")
    w0 = rng.standard_normal((6, 8)).astype(np.float32)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(w0.copy())
            self.pool = nn.MaxPool2d(2)
            self.head = nn.Linear(6, 3)

        def forward(self, x):
            h = self.pool(x).reshape(x.shape[0], 8)
            return self.head(attend(h, self.w))
    x = rng.random((5, 2, 4, 4), dtype=np.float32)
    y = rng.integers(0, 3, 5)
    step = _same_training(Net, lambda m: optim.Adam(m.parameters(), lr=0.05), x, y, 6)
    source = step.source
    forward = next(line for line in source.splitlines() if line.startswith("# ") and "<- op 'A[n, j] +=" in line)
    assert all(f"{t}=v" in forward for t in ("P", "A", "M", "E", "Z"))  # the forward call keeps its values
    header = next(line for line in source.splitlines() if "<- op 'dE_part[n, j]" in line)
    block = source[source.index(header):].split("\n# ")[0]
    assert all(f"{t}=v" in header for t in ("A", "M", "E", "Z"))  # read from the forward call ...
    mine = header.split("=")[1].split(" ")[0]  # the gradient call's value: its temporaries are mine_T
    assert not [line for line in block.splitlines() for t in "AMEZ" if line.startswith(f"{mine}_{t}[")]
    assert "max(" not in block  # ... not recomputed


def test_an_optimizer_update_runs_inside_the_call_writing_its_gradient():
    """fuse_updates (golden before/after): a Linear's weight update (SGD with momentum) reads its flat
    gradient in a kernel of its own; after the pass the gradient call runs the update's statements
    over the weight's indices, writing the new weight and buffer in their shape (the views back), and
    the flat views go. The bias (1-d) keeps the merged update kernel. Compiled and eager agree."""
    from tensorcomp.step import STEP, merge_calls
    from tensorcomp.trace import program_source
    from tensorcomp.updates import fuse_updates
    x = rng.random((7, 5), dtype=np.float32)
    y = rng.integers(0, 3, 7)
    step = _same_training(lambda: nn.Linear(5, 3), lambda m: optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
                          x, y, 5)
    p = step._entry(()).traced
    for step_pass in STEP[:STEP.index(fuse_updates)]:
        p = step_pass(p)
    assert STEP.index(fuse_updates) + 1 == STEP.index(merge_calls)
    before, after = program_source(p).splitlines(), program_source(fuse_updates(p)).splitlines()
    assert "# v15 = view of v10 (shape (15,), byte offset 0, strides (4,))" in before
    assert "v18[i] = v16[i] - v12[2] * where(v12[3] > 0, v15[i] + v12[1] * v16[i] + v12[0] * (v12[0] * v14[i] + " \
           "v15[i] + v12[1] * v16[i]), v12[0] * v14[i] + v15[i] + v12[1] * v16[i])" in before
    k = next(k for k, line in enumerate(after) if line.startswith("# dW_a=v10, dB_a=v11, B2_u=v27, P2_u=v25 <- op"))
    assert after[k + 1:k + 6] == [
        "v10_dY_a[n, o] += v9[n, o]",
        "v11[o] += v9[n, o]",
        "v10[o, i] += v10_dY_a[n, o] * v0[n, i]",
        "v27[u0, u1] = v12[0] * v13[u0, u1] + v10[u0, u1] + v12[1] * v2[u0, u1]",
        "v25[u0, u1] = v2[u0, u1] - v12[2] * where(v12[3] > 0, v10[u0, u1] + v12[1] * v2[u0, u1] + v12[0] * "
        "(v12[0] * v13[u0, u1] + v10[u0, u1] + v12[1] * v2[u0, u1]), v12[0] * v13[u0, u1] + v10[u0, u1] + "
        "v12[1] * v2[u0, u1])"]
    assert not [line for line in after if "= view of v10 " in line or "= view of v18 " in line]
    assert "v24[i] = v22[i] - v12[2] * where(v12[3] > 0, v21[i] + v12[1] * v22[i] + v12[0] * (v12[0] * v20[i] + " \
           "v21[i] + v12[1] * v22[i]), v12[0] * v20[i] + v21[i] + v12[1] * v22[i])" in after  # (the bias's)


def test_gradient_calls_equal_to_plain_ops_take_their_epilogues():
    """gradient_calls.as_plain: a gradient op whose statements a plain op computes over the same
    domains becomes that op's call (inputs it never reads dropped), so fuse_epilogues runs the
    ReLU's gradient inside the Linear gradient before it; a strided convolution's gradient (its
    input gradient keeps the input's shape, which the scatter alone does not reach) and a max pool's
    (a plain op would divide by the integer tie count in float64) stay gradient ops."""
    from tensorcomp.gradient_calls import as_plain
    from tensorcomp.trace import Call
    specs = lambda *arrays: [tc.trace.spec_of(a) for a in arrays]  # noqa: E731
    relu = tc.grad(tc.op("O[i, j] = relu(X[i, j])"), "X")
    x, d = (rng.standard_normal((4, 5)).astype(np.float32) for _ in range(2))
    plain = as_plain(Call(relu, (), (0, 1), (2,)), specs(x, d))  # values 0, 1: X, dO
    assert type(plain.op) is tc.Op and plain.op.inputs == ("dO", "X") and plain.inputs == (1, 0)
    np.testing.assert_array_equal(plain.op(d, x), relu(x, d))
    conv = tc.grad(tc.op("C[n, y, f] += I[n, 2*y + k, c] * W[k, c, f]"), ["I", "W"])
    i, w, g = (np.zeros(s, np.float32) for s in [(2, 10, 3), (3, 3, 4), (2, 4, 4)])
    assert as_plain(Call(conv, (), (0, 1, 2), (3, 4)), specs(i, w, g)) is None
    pool = tc.grad(tc.op("O[n, y] = max(X[n, 2*y + k])", ranges={"k": 2}), "X")
    assert as_plain(Call(pool, (), (0, 1), (2,)), specs(np.zeros((2, 8), np.float32),
                                                         np.zeros((2, 4), np.float32))) is None


def test_outputs_option_returns_tensors_later_statements_read():
    op = tc.op("C[i, j] += A[i, k] * B[k, j]\nZ[i, j] = C[i, j] + 1\nO[i, j] = relu(Z[i, j])", outputs=("Z", "O"))
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 5))
    z, o = op(a, b)
    np.testing.assert_allclose(z, a @ b + 1, rtol=1e-12)
    np.testing.assert_allclose(o, np.maximum(a @ b + 1, 0), rtol=1e-12)
    with pytest.raises(tc.ArgumentError) as e:
        tc.op("O[i] = A[i]", outputs=("Q",))
    assert str(e.value) == "op 'O[i] = A[i]': outputs must name written tensors, each once (written: O), got ('Q',)"
    with pytest.raises(tc.ArgumentError) as e:
        tc.grad(op, "A")
    assert str(e.value) == ("tc.grad: op 'C[i, j] += A[i, k] * B[k, j]; Z[i, j] = C[i, j] + 1; O[i,...': outputs Z "
                            "are read by later statements (outputs=); differentiate the op without outputs= instead")


def test_a_layer_that_makes_its_op_on_every_call_compiles():
    """Ops made inside ``forward`` (a new, equal op object per call) are the same op to the tracer: two
    traces agree, equal calls are shared and merged as for one object."""
    class Gate(nn.Module):
        def forward(self, x):
            return tc.op("T[n, i] = X[n, i] * X[n, i]\nO[n, i] = X[n, i] / (1 + exp(-X[n, i])) + 0.01 * T[n, i]")(x)

    def build():
        nn.manual_seed(5)
        return nn.Sequential(nn.Linear(6, 8), Gate(), nn.Linear(8, 3))
    x, y = rng.random((5, 6), dtype=np.float32), rng.integers(0, 3, 5)
    results = []
    for compiled in (False, True):
        model = build()
        fn = _step_of(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), 1e-2))
        step = tc.compile(fn) if compiled else fn
        results.append([float(step(x, y).numpy()) for _ in range(6)])
    assert step.replays == 5
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5)


NEW_PROCESS = """
import os, sys
import numpy as np, tensorcomp as tc
from tensorcomp import nn, optim
if os.environ.get("FORBID_PLANNING"):  # nothing may be planned: kernels from manifests, the step stored
    def planned(*args, **kwargs):
        raise AssertionError("planned")
    sys.modules["tensorcomp.compiler"].run = planned
nn.manual_seed(0)
model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
lossf, opt = nn.CrossEntropyLoss(), optim.Adam(model.parameters())
def step(x, y):
    opt.zero_grad()
    loss = lossf(model(tc.Tensor(x)), y)
    loss.backward()
    opt.step()
    return loss
f = tc.compile(step)
rng = np.random.default_rng(1)
x, y = rng.standard_normal((5, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, 5)
losses = [float(f(x, y).data) for _ in range(3)]
print(repr(losses), f.traces, sorted(f.stats(x, y)["pass_seconds"]))
"""


def test_a_new_process_replays_a_stored_step_without_planning(tmp_path):
    """A process with the cache warm traces the step's first call dry and replays what the passes made
    of that program in an earlier process (``step_cache``), planning nothing; it trains as that
    process did."""
    import os
    import subprocess
    import sys

    def run(**env):
        out = subprocess.run([sys.executable, "-c", NEW_PROCESS], capture_output=True, text=True,
                             env=dict(os.environ, TENSORCOMP_CACHE_DIR=str(tmp_path), **env))
        assert out.returncode == 0, out.stderr
        return out.stdout.strip().splitlines()[-1]
    cold = run()
    warm = run(FORBID_PLANNING="1")
    losses = cold.split("]")[0] + "]"
    assert warm == f"{losses} 1 ['stored_step']"
    assert cold.endswith(" 2 ['assign_layouts', 'eliminate_dead', 'fuse_epilogues', 'fuse_updates', "
                         "'gradients_from_outputs', "
                         "'keep_forward_values', 'merge_calls', 'resolve_kernels', 'share_common']")


def test_a_dry_trace_compiles_nothing_and_its_outputs_are_laid_out_as_the_kernels_write(monkeypatch, tmp_path):
    """A dry trace records each call with zero-filled outputs in the axis orders its kernel writes
    (planned where the kernel is neither built nor on disk), without compiling a kernel."""
    from tensorcomp.runtime import jit
    from tensorcomp.schedule.records import Layout
    from tensorcomp.trace import Call, trace
    monkeypatch.setenv("TENSORCOMP_CACHE_DIR", str(tmp_path))
    nn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 6, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 4, 3), nn.Flatten(),
                          nn.Linear(4 * 3 * 3, 5))
    transposed = tc.op("Y[n, k] = X[n, k] * 2", schedule=(Layout("Y", (1, 0)),))  # (writes Y column by column)

    def fn(x):
        loss = transposed(model(tc.Tensor(x))).sum()
        loss.backward()
        return loss
    x = np.random.default_rng(0).standard_normal((8, 2, 12, 12)).astype(np.float32)
    before = jit.object_counts()["llvm"]
    _, dry = trace(fn, "fn", (x,), [x], dry=True)
    assert jit.object_counts()["llvm"] == before
    _, wet = trace(fn, "fn", (x,), [x])
    assert jit.object_counts()["llvm"] > before
    def sources(p):
        return [c.op.source for c in p.body if isinstance(c, Call)]
    assert sources(dry) == sources(wet)
    assert dry.specs == wet.specs  # (every value's shape, dtype and strides, as the kernels wrote them)
    assert ((8, 5), np.dtype(np.float32), (4, 32)) in dry.specs
