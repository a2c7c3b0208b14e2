"""Kernels that read a value as it is stored instead of copying it per call (``reader_layouts``)."""

import numpy as np

import tensorcomp as tc
import tensorcomp.step as step_module
from tensorcomp import nn, optim, reader_layouts
from tensorcomp.schedule.records import Layout

rng = np.random.default_rng(5)


def _train(compiled, batches):
    nn.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                          nn.Linear(84, 10))
    lossf, opt = nn.CrossEntropyLoss(), optim.Adam(model.parameters())

    def step(x, y):
        opt.zero_grad()
        loss = lossf(model(tc.Tensor(x)), y)
        loss.backward()
        opt.step()
        return loss
    f = tc.compile(step) if compiled else step
    return [float(f(x, y).data) for x, y in batches], model.state_dict(), f


def test_a_kernel_reads_a_value_as_stored_where_that_is_no_slower(monkeypatch, tmp_path):
    """The linear layers' kernels copy their activations transposed on every call (the other layout
    passes turned off here, so nothing moves the values); kernels reading them as stored, writing
    their outputs as before, replace them where timed no slower (forced here): no copy is left and
    the step trains as the eager one does. Where they are slower, the copies stay."""
    no_move = lambda p, runs, resolve, key: (p, runs)  # noqa: E731
    monkeypatch.setattr(step_module, "choose_layouts", no_move)
    monkeypatch.setattr(step_module, "choose_state_layouts", no_move)
    batches = [(rng.random((64, 1, 20, 20), dtype=np.float32), rng.integers(0, 10, 64)) for _ in range(5)]
    eager = _train(False, batches)

    monkeypatch.setenv("TENSORCOMP_CACHE_DIR", str(tmp_path / "slower"))
    monkeypatch.setattr(reader_layouts, "refuted", lambda *args: True)  # (the copying step is faster)
    kept = _train(True, batches)
    copies = kept[2].stats(*batches[0])["relayout_copies"]
    assert copies > 0

    monkeypatch.setenv("TENSORCOMP_CACHE_DIR", str(tmp_path / "no-slower"))
    monkeypatch.setattr(reader_layouts, "seconds", lambda *args: 0.0)
    monkeypatch.setattr(reader_layouts, "refuted", lambda *args: False)
    read = _train(True, batches)
    assert read[2].stats(*batches[0])["relayout_copies"] == 0
    entry = read[2]._entry(())
    for r, release in entry.runs:
        assert release is not None or not reader_layouts.copied_inputs(entry.program, r)
    # before and after: the same statements on the same values; the readers' schedules name the stored
    # order of what they used to copy (the activations, row-major: no copy) and keep their outputs'
    assert read[2].source == kept[2].source
    given = [r for item in entry.program.body if isinstance(item, tc.trace.Call) for r in item.op.schedule
             if isinstance(r, Layout) and r.tensor in item.op.inputs]
    assert given and all(r.perm == tuple(range(len(r.perm))) and not r.pad for r in given)
    for losses, state, _ in (kept, read):
        np.testing.assert_allclose(losses, eager[0], rtol=1e-5)
        for k in state:
            np.testing.assert_allclose(state[k], eager[1][k], rtol=1e-4, atol=1e-6, err_msg=k)
