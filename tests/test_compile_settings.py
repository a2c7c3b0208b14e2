"""tc.compile and settings Python changes between calls: optimizer hyperparameters (a learning-rate
schedule) and modules' training mode. A compiled step replays without running Python, so such a
value must either live in a tensor the program reads (hyperparameters) or guard the program (modes)."""

import itertools

import numpy as np
import pytest

import tensorcomp as tc
from tensorcomp import nn, optim

rng = np.random.default_rng(11)
_NAMES = itertools.count()
X = rng.standard_normal((8, 10)).astype(np.float32)
Y = rng.integers(0, 3, 8)


def _net():
    nn.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))


def _training_step(model, opt, compiled: bool, name: str):
    """A step (zero_grad, forward, cross-entropy, backward, update), compiled or not, under a name of
    its own (a program that agreed in an earlier test would compile at once)."""
    lossf = nn.CrossEntropyLoss()

    def step(x, y):
        opt.zero_grad()
        loss = lossf(model(tc.Tensor(x)), y)
        loss.backward()
        opt.step()
        return loss
    step.__qualname__ = f"{name}{next(_NAMES)}"
    return tc.compile(step) if compiled else step


def _schedule(make_opt, compiled: bool, steps: int = 6):
    """Losses and final parameters of training with the learning rate (and weight decay) changed
    before every step, as a schedule would."""
    model = _net()
    opt = make_opt(model.parameters())
    f = _training_step(model, opt, compiled, "scheduled")
    losses = []
    for k in range(steps):
        opt.lr = 0.2 * 0.5 ** k
        opt.wd = 0.01 * k
        losses.append(float(f(X, Y).numpy()))
    return losses, [p.numpy().copy() for p in model.parameters()], f


@pytest.mark.parametrize("make_opt", [
    lambda ps: optim.SGD(ps, 0.1, momentum=0.9),
    lambda ps: optim.SGD(ps, 0.1, momentum=0.9, nesterov=True),
    lambda ps: optim.Adam(ps, 0.1),
    lambda ps: optim.AdamW(ps, 0.1),
], ids=["sgd-momentum", "nesterov", "adam", "adamw"])
def test_a_learning_rate_set_between_compiled_steps_takes_effect(make_opt):
    eager_losses, eager_params, _ = _schedule(make_opt, compiled=False)
    losses, params, f = _schedule(make_opt, compiled=True)
    assert f.replays >= 4  # (the schedule's steps after the second ran compiled)
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-6)
    for a, b in zip(params, eager_params):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # and the schedule mattered: a constant learning rate trains to other parameters
    model, lossf = _net(), nn.CrossEntropyLoss()
    opt = make_opt(model.parameters())
    for _ in range(6):
        opt.zero_grad()
        lossf(model(tc.Tensor(X)), Y).backward()
        opt.step()
    assert not np.allclose(model.parameters()[0].numpy(), params[0], rtol=1e-3)


def test_hyperparameters_set_later_are_checked():
    opt = optim.Adam(_net().parameters())
    with pytest.raises(tc.ArgumentError) as e:
        opt.lr = -0.5
    assert str(e.value) == "Adam: lr must be a finite real number > 0.0, got -0.5"
    with pytest.raises(tc.ArgumentError) as e:
        opt.b2 = 1.0
    assert str(e.value) == "Adam: betas[1] must be a finite real number [0.0, 1.0), got 1.0"
    sgd = optim.SGD(_net().parameters(), momentum=0.9)
    with pytest.raises(tc.ArgumentError) as e:
        sgd.nesterov = "yes"
    assert str(e.value) == "SGD: nesterov must be True or False, got 'yes'"
    assert opt.lr == 1e-3 and sgd.nesterov is False  # (a refused value leaves the old one)
    sgd.momentum = 0.5
    assert sgd.momentum == 0.5


def test_a_compiled_forward_follows_the_training_mode():
    nn.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.Dropout(0.5), nn.Linear(16, 3))
    forward = tc.compile(lambda x: model(tc.Tensor(x)))
    for _ in range(3):
        forward(X)
    assert forward.replays >= 1
    model.eval()
    expect = model(tc.Tensor(X)).numpy()
    for _ in range(3):  # (traced again for eval mode, then compiled)
        np.testing.assert_allclose(forward(X).numpy(), expect, rtol=1e-6)
    model.train()
    replays = forward.replays
    trained = forward(X).numpy()
    assert forward.replays == replays + 1  # (the training-mode program, replayed: no new trace)
    assert not np.allclose(trained, expect)


def test_module_settings_set_later_are_traced_again():
    nn.manual_seed(0)
    norm, drop = nn.BatchNorm1d(16), nn.Dropout(0.5)
    model = nn.Sequential(nn.Linear(10, 16), norm, drop, nn.Linear(16, 3))
    forward = tc.compile(lambda x: model(tc.Tensor(x)))
    for _ in range(3):
        forward(X)
    drop.p = 0.0  # (no dropout: the output is the eager one, whatever the random numbers)
    norm.eps = 0.5
    expect = model(tc.Tensor(X)).numpy()
    traces = forward.traces
    for _ in range(3):
        np.testing.assert_allclose(forward(X).numpy(), expect, rtol=1e-5)
    assert forward.traces > traces


def test_a_parameter_frozen_between_compiled_steps_stays_frozen():
    """requires_grad=False set later (fine-tuning a head over a frozen layer): the compiled step is
    traced again, computes no gradient for the frozen layer and leaves it as it was; unfrozen, the
    first program replays."""
    def train(compiled):
        model = _net()
        first = model[0]
        f = _training_step(model, optim.SGD(model.parameters(), 0.1, momentum=0.9), compiled, "freezing")
        frozen = []
        for k in range(8):
            first.weight.requires_grad = first.bias.requires_grad = not 3 <= k < 6
            f(X, Y)
            frozen.append(first.weight.numpy().copy())
        return frozen, model.parameters()[-1].numpy().copy()
    eager, eager_head = train(False)
    compiled, head = train(True)
    assert np.array_equal(compiled[2], compiled[5])  # (not updated while frozen: the momentum too)
    for a, b in zip(compiled, eager):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(head, eager_head, rtol=1e-5, atol=1e-7)


def test_gradients_accumulated_over_two_calls_compile_both_programs():
    """Forward and backward compiled, the update outside every second call (accumulating gradients
    over two batches): the calls alternate between a program run with the gradients None and one
    that adds to them. Both compile (a trace waits per set of guards), and the first, which never
    read the gradients because they were None, does not replay over gradients that are set."""
    batches = [(rng.standard_normal((8, 10)).astype(np.float32), rng.integers(0, 3, 8)) for _ in range(4)]

    def train(compiled):
        model, lossf = _net(), nn.CrossEntropyLoss()
        opt = optim.Adam(model.parameters(), 0.01)

        def forward_backward(x, y):
            loss = lossf(model(tc.Tensor(x)), y)
            loss.backward()
            return loss
        forward_backward.__qualname__ = f"accumulating{next(_NAMES)}"
        f = tc.compile(forward_backward) if compiled else forward_backward
        losses = []
        for k in range(12):
            losses.append(float(f(*batches[k % 4]).numpy()))
            if k % 2:
                opt.step()
                opt.zero_grad()
        return losses, model.parameters()[0].numpy().copy(), f
    eager, eager_w, _ = train(False)
    losses, w, f = train(True)
    np.testing.assert_allclose(losses, eager, rtol=1e-5)
    np.testing.assert_allclose(w, eager_w, rtol=1e-5, atol=1e-7)
    assert f.traces == 4 and f.replays == 10  # (each program: traced twice, compiled at its second trace)
