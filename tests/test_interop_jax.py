"""tensorcomp ops as JAX functions: values and gradients under jax.jit against torch.autograd (float64)."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
torch = pytest.importorskip("torch")
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

import tensorcomp.jax as tcj  # noqa: E402
import tensorcomp.torch as tct  # noqa: E402
from tensorcomp.errors import ArgumentError, DtypeError  # noqa: E402

rng = np.random.default_rng(5)
CASES = [
    ("O[n, y, x, co, p, r] += I[n, 2*y + ky, 2*x + kx, ci, p, q] * W[ky, kx, ci, co, q, r]", {},
     [(2, 7, 7, 3, 2, 2), (3, 3, 3, 4, 2, 2)]),
    ("M[n] = max(X[n, c])\nE[n, c] = exp(X[n, c] - M[n])\nS[n] += E[n, c]\nY[n, c] = E[n, c] / S[n]", {}, [(4, 6)]),
    ("O[n, y, x] = max(I[n, 2*y + ky, 2*x + kx])", {"ranges": {"ky": 3, "kx": 3}}, [(2, 9, 9)]),
    ("U[n, i, j, d] += X[n, i, k] * W[i % 4, j, d, k]", {}, [(2, 8, 3), (4, 2, 5, 3)]),
]


@pytest.mark.parametrize("source, options, shapes", CASES)
def test_jit_grad_matches_torch_autograd(source, options, shapes):
    arrays = [rng.standard_normal(s) for s in shapes]
    f = tcj.op(source, **options)
    loss = jax.jit(lambda *xs: jnp.sum(jnp.sin(f(*xs))))
    grads = jax.jit(jax.grad(lambda *xs: jnp.sum(jnp.sin(f(*xs))), argnums=tuple(range(len(arrays)))))(*arrays)
    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    reference = torch.sin(tct.op(source, **options)(*tensors)).sum()
    reference.backward()
    assert np.allclose(float(loss(*arrays)), reference.item(), rtol=1e-12)
    for g, x in zip(grads, tensors):
        assert np.allclose(np.asarray(g), x.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_against_jax_itself_with_vmap_second_order_and_scalars():
    softmax = tcj.op(CASES[1][0])
    x = rng.standard_normal((3, 5))
    assert np.allclose(softmax(x), jax.nn.softmax(x, axis=1))
    assert jax.vmap(softmax)(np.stack([x, 2 * x])).shape == (2, 3, 5)
    ours = jax.grad(lambda y: jnp.sum(jax.grad(lambda z: jnp.sum(softmax(z) ** 2))(y)))(x)
    theirs = jax.grad(lambda y: jnp.sum(jax.grad(lambda z: jnp.sum(jax.nn.softmax(z, axis=1) ** 2))(y)))(x)
    assert np.allclose(ours, theirs, atol=1e-12)
    axpy = tcj.op("O[i] = A[i] * s + B[i]")
    ga, gb = jax.grad(lambda a, b: jnp.sum(axpy(a, b, s=2.5) ** 2), argnums=(0, 1))(jnp.ones(3), jnp.zeros(3))
    assert np.allclose(ga, 12.5) and np.allclose(gb, 5.0)


def test_integer_inputs_get_no_gradient():
    pick = tcj.op("O[n] += X[n, c] * where(T[n] == c, 1.0, 0.0)")
    g = jax.grad(lambda x: jnp.sum(pick(x, jnp.array([2, 0]))))(jnp.ones((2, 3)))
    assert np.array_equal(g, [[0, 0, 1], [1, 0, 0]])


def test_bad_inputs_raise_errors_naming_the_op_and_the_argument():
    f = tcj.op("O[i] = A[i] * s")
    with pytest.raises(DtypeError) as e:
        f(jnp.ones(3, jnp.complex64), s=1.0)
    assert str(e.value) == ("op 'O[i] = A[i] * s': input A has dtype complex64, which tensorcomp does not support; "
                            "use float32, float64, int32, int64 or bool")
    with pytest.raises(ArgumentError) as e:
        f(jnp.ones(3), s=jnp.float32(2.0) + jnp.zeros(()))
    assert str(e.value).startswith("op 'O[i] = A[i] * s': scalar parameter 's' must be a Python number, got ")
    with pytest.raises(ArgumentError) as e:
        f(jnp.ones(3))
    assert str(e.value) == ("op 'O[i] = A[i] * s': scalar parameter 's' was not given; pass it as a keyword, "
                            "op(..., s=value)")
