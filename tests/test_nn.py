"""The nn layer: layers against numpy, gradients by finite differences, optimizers in closed form."""

import numpy as np
import pytest

import tensorcomp as tc
from tensorcomp import nn, optim
from tensorcomp.data import DataLoader, mnist

rng = np.random.default_rng(2)


def fd_check(module, x, eps=1e-3, tol=2e-2):
    """Parameters' gradients of sum(module(x) * c) against central differences (float32 parameters)."""
    out = module(tc.Tensor(x))
    c = rng.standard_normal(out.shape).astype(np.float32)
    module.zero_grad()
    loss = tc.Tensor(c)  # weights for the directional derivative
    y = module(tc.Tensor(x))
    y.backward(c)
    for name, p in module.named_parameters():
        v = rng.standard_normal(p.shape).astype(np.float32)
        analytic = float((p.grad * v).sum())
        base = p.data.copy()
        p.data = (base + eps * v).astype(np.float32)
        plus = float((module(tc.Tensor(x)).data * c).sum())
        p.data = (base - eps * v).astype(np.float32)
        minus = float((module(tc.Tensor(x)).data * c).sum())
        p.data = base
        numeric = (plus - minus) / (2 * eps)
        assert abs(analytic - numeric) <= tol * max(1.0, abs(numeric)), (name, analytic, numeric)
    del loss


def test_linear_forward_and_gradient():
    layer = nn.Linear(5, 3)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    np.testing.assert_allclose(layer(tc.Tensor(x)).data, x @ layer.weight.data.T + layer.bias.data, rtol=1e-5)
    fd_check(layer, x)


def test_conv_pool_flatten_stack_gradients():
    nn.manual_seed(0)  # (initial weights independent of the tests run before: no ReLU/max kink near them)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 2))
    x = rng.standard_normal((2, 2, 4, 4)).astype(np.float32)
    fd_check(model, x)


def test_conv2d_matches_a_loop_reference():
    conv = nn.Conv2d(2, 3, 3, padding=1)
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = np.zeros((1, 3, 5, 5), np.float32)
    for f in range(3):
        for i in range(5):
            for j in range(5):
                ref[0, f, i, j] = (xp[0, :, i:i + 3, j:j + 3] * conv.weight.data[f]).sum() + conv.bias.data[f]
    np.testing.assert_allclose(conv(tc.Tensor(x)).data, ref, rtol=1e-4, atol=1e-5)


def test_cross_entropy_value_and_gradient():
    logits = tc.Tensor(rng.standard_normal((4, 3)).astype(np.float32), requires_grad=True)
    target = np.array([0, 2, 1, 2])
    loss = nn.CrossEntropyLoss()(logits, target)
    z = logits.data - logits.data.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    assert abs(loss.item() - (-logp[np.arange(4), target].mean())) < 1e-5
    loss.backward()
    p = np.exp(logp)
    p[np.arange(4), target] -= 1
    np.testing.assert_allclose(logits.grad, p / 4, rtol=1e-4, atol=1e-6)


def test_adam_matches_the_closed_form():
    p = nn.Parameter(np.array([1.0, -2.0, 3.0]))
    opt = optim.Adam([p], lr=0.1, betas=(0.9, 0.99), eps=1e-8)
    m = v = np.zeros(3)
    ref = p.data.astype(np.float64).copy()
    for t in range(1, 4):
        g = np.array([0.5, -1.0, 2.0]) * t
        p.grad = g.astype(np.float32)
        opt.step()
        m = 0.9 * m + 0.1 * g
        v = 0.99 * v + 0.01 * g * g
        ref = ref - 0.1 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.99 ** t)) + 1e-8)
    np.testing.assert_allclose(p.data, ref, rtol=1e-5)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_matches_the_closed_form(nesterov):
    p = nn.Parameter(np.array([1.0, -2.0]))
    opt = optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=nesterov)
    buf = np.zeros(2)
    ref = p.data.astype(np.float64).copy()
    for t in range(1, 4):
        g = np.array([0.5, -1.0]) * t
        p.grad = g.astype(np.float32)
        opt.step()
        gd = g + 0.01 * ref
        buf = 0.9 * buf + gd
        ref = ref - 0.1 * (gd + 0.9 * buf if nesterov else buf)
    np.testing.assert_allclose(p.data, ref, rtol=1e-5)


def test_optimizer_hyperparameters_are_checked():
    p = nn.Parameter(np.zeros(2))
    with pytest.raises(tc.ArgumentError, match=r"Adam: lr must be a finite real number > 0.0, got -1"):
        optim.Adam([p], lr=-1)
    with pytest.raises(tc.ArgumentError, match=r"Adam: betas\[0\] must be a finite real number \[0.0, 1.0\), got 1.5"):
        optim.Adam([p], betas=(1.5, 0.9))
    with pytest.raises(tc.ArgumentError, match="SGD: nesterov=True needs a momentum > 0"):
        optim.SGD([p], lr=0.1, nesterov=True)


def test_bad_layer_inputs():
    with pytest.raises(tc.ShapeError) as info:
        nn.Linear(5, 3)(tc.Tensor(np.zeros((2, 4), np.float32)))
    assert str(info.value) == "Linear(5, 3): expected 5 features on axis 1, got shape (2, 4)"
    with pytest.raises(tc.ShapeError) as info:
        nn.Conv2d(1, 2, 3)(tc.Tensor(np.zeros((2, 28, 28), np.float32)))
    assert str(info.value) == "Conv2d(1, 2): expected an input of rank 4, got shape (2, 28, 28)"
    with pytest.raises(tc.ShapeError) as info:
        nn.CrossEntropyLoss()(tc.Tensor(np.zeros((4, 3), np.float32)), np.zeros(5, np.int64))
    assert str(info.value) == "CrossEntropyLoss: expected integer targets of shape (4,), got int64 of shape (5,)"


def test_state_dict_round_trip(tmp_path):
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    a.save(tmp_path / "m.npz")
    b.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    with pytest.raises(tc.ShapeError, match=r"load_state_dict: weight has shape \(3, 3\)"):
        b.load_state_dict({"weight": np.zeros((3, 3)), "bias": np.zeros(2)})
    assert repr(a) == "Linear(in_features=3, out_features=2)"


def test_mnist_and_loader():
    xtr, ytr, xte, yte = mnist()
    assert xtr.shape == (4000, 1, 28, 28) and xte.shape == (1000, 1, 28, 28) and xtr.dtype == np.float32
    loader = DataLoader(xtr, ytr, batch_size=64, seed=1)
    batches = list(loader)
    assert len(batches) == len(loader) == 63 and batches[-1][0].shape[0] == 4000 - 62 * 64
    again = list(DataLoader(xtr, ytr, batch_size=64, seed=1))
    np.testing.assert_array_equal(batches[0][1], again[0][1])


def test_a_few_training_steps_reduce_the_loss():
    from tensorcomp.train import train
    result = train("lenet", epochs=1, max_steps=30, progress=False)
    assert result["steps"] == 30
    assert result["final_loss"] < result["initial_loss"] - 0.3, result
    assert result["test_accuracy"] > 0.3, result


def test_sequential_layers_by_index_slice_and_iteration():
    relu, tanh, lin = nn.ReLU(), nn.Tanh(), nn.Linear(3, 2)
    model = nn.Sequential(lin, relu, tanh)
    assert len(model) == 3 and model[0] is lin and model[-1] is tanh and list(model) == [lin, relu, tanh]
    head = model[:2]
    assert isinstance(head, nn.Sequential) and list(head) == [lin, relu]
    x = tc.Tensor(np.ones((2, 3), np.float32))
    np.testing.assert_allclose(head(x).numpy(), relu(lin(x)).numpy())
