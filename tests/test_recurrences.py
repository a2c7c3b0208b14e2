"""Recurrences: a statement reads a tensor the op writes at the previous point of one index. Values against
loop references, gradients (back-propagation through the scan) against central differences, an RNN cell
over 20 steps, on tensors, and the errors for what is not a recurrence along one index."""

import numpy as np
import pytest

import tensorcomp as tc

rng = np.random.default_rng(12)

RNN = """
H[0, j] = tanh(H0[j])
S[t, j] += H[t - 1, k] * W[k, j]
H[t, j] = tanh(S[t, j] + X[t, j] * U[j])
"""


def _rnn_reference(h0, w, x, u):
    h = [np.tanh(h0)]
    for t in range(1, len(x)):
        h.append(np.tanh(h[-1] @ w + x[t] * u))
    return np.array(h)


def test_a_scan_is_linear_in_the_axis_and_matches_numpy():
    cs = tc.op("C[0] = X[0]\nC[i] = C[i - 1] + X[i]")
    assert isinstance(cs, tc.Recurrence) and cs.scan == "i" and cs.inputs == ("X",) and cs.outputs == ("C",)
    x = rng.standard_normal(50)
    np.testing.assert_allclose(cs(x), np.cumsum(x), rtol=1e-12)
    dc = rng.standard_normal(50)
    np.testing.assert_allclose(tc.grad(cs, "X")(x, dc), np.cumsum(dc[::-1])[::-1], rtol=1e-12)
    cp = tc.op("P[0, j] = X[0, j]\nP[i, j] = P[i - 1, j] * X[i, j]")
    x = rng.standard_normal((7, 3))
    np.testing.assert_allclose(cp(x), np.cumprod(x, 0), rtol=1e-12)


def test_an_rnn_cell_over_twenty_steps_and_its_gradients():
    rnn = tc.op(RNN)
    assert rnn.inputs == ("H0", "W", "X", "U") and rnn.outputs == ("H",)
    args = {"H0": rng.standard_normal(4), "W": 0.5 * rng.standard_normal((4, 4)), "X": rng.standard_normal((20, 4)),
            "U": rng.standard_normal(4)}
    out = rnn(*args.values())
    np.testing.assert_allclose(out, _rnn_reference(*args.values()), rtol=1e-12)
    dh = rng.standard_normal(out.shape)
    grads = tc.grad(rnn, list(rnn.inputs))(*args.values(), dh)
    eps = 1e-6
    for name, g in zip(rnn.inputs, grads):
        v = rng.standard_normal(args[name].shape)
        plus, minus = dict(args), dict(args)
        plus[name], minus[name] = args[name] + eps * v, args[name] - eps * v
        numeric = ((_rnn_reference(*plus.values()) - _rnn_reference(*minus.values())) * dh).sum() / (2 * eps)
        assert abs(float((g * v).sum()) - numeric) < 1e-6 * max(1.0, abs(numeric)), name


def test_on_tensors_it_records_gradients():
    rnn = tc.op(RNN)
    w = tc.Tensor(0.5 * rng.standard_normal((3, 3)), requires_grad=True)
    h0, x, u = rng.standard_normal(3), rng.standard_normal((5, 3)), rng.standard_normal(3)
    h = rnn(h0, w, x, u)
    assert isinstance(h, tc.Tensor) and h.shape == (5, 3)
    h.sum().backward()
    np.testing.assert_allclose(w.grad, tc.grad(rnn, "W")(h0, w.data, x, u, np.ones((5, 3))), rtol=1e-12)


@pytest.mark.parametrize("src,cls,text", [
    ("C[0, 0] = X[0, 0]\nC[i, j] = C[i - 1, j - 1] + X[i, j]", tc.ScheduleError,
     "reads C shifted along 2 indices; a recurrence is carried by one index only"),
    ("C[0] = X[0]\nC[i] = C[i - 2] + X[i]", tc.ScheduleError, "a recurrence reads the previous point (i - 1)"),
    ("C[i] = C[i - 1] + X[i]", tc.RangeError, "C is read at i - 1 but has no initial value"),
    ("C[0] = X[0]\nC[i] = C[i - 1] + X[i - 1]", tc.ScheduleError, "reads input X along the scan index 'i' in a form "
                                                                  "a step cannot slice"),
])
def test_what_is_not_a_recurrence_along_one_index_is_refused(src, cls, text):
    with pytest.raises(cls) as e:
        tc.op(src)
    assert text in str(e.value)


def test_a_compiled_step_refuses_a_recurrence_rather_than_freezing_it():
    cs = tc.op("C[0] = X[0]\nC[i] = C[i - 1] + X[i]")
    with pytest.raises(tc.TraceError, match="is a recurrence, which a compiled step cannot hold yet"):
        tc.compile(lambda x: cs(tc.Tensor(x)))(np.ones(4))


def test_nn_rnn_matches_torch_values_and_gradients():
    torch = pytest.importorskip("torch")
    from tensorcomp import nn
    tc.nn.manual_seed(3)
    layer = nn.RNN(4, 5)
    ref = torch.nn.RNN(4, 5, dtype=torch.float64)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(ref, name + "_l0").copy_(torch.tensor(getattr(layer, name).data.astype(np.float64)))
    for p in layer.parameters():  # float64 throughout, to compare with torch in float64
        p.data = p.data.astype(np.float64)
    x, h0 = rng.standard_normal((7, 3, 4)), rng.standard_normal((3, 5))
    out, hn = layer(tc.Tensor(x), h0)
    tout, thn = ref(torch.tensor(x), torch.tensor(h0)[None])
    np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(hn.data, thn.detach().numpy(), rtol=1e-12)
    g = rng.standard_normal(out.shape)
    (out * tc.Tensor(g)).sum().backward()
    (tout * torch.tensor(g)).sum().backward()
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        np.testing.assert_allclose(getattr(layer, name).grad, getattr(ref, name + "_l0").grad.numpy(), rtol=1e-10,
                                   err_msg=name)
