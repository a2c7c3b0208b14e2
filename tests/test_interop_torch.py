"""tensorcomp ops as torch custom operators: gradients against torch.autograd.gradcheck, opcheck,
torch.compile(fullgraph=True), zero copies, the capsule modules, and errors."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tensorcomp as tc  # noqa: E402
import tensorcomp.torch as tct  # noqa: E402
from tensorcomp import ops  # noqa: E402
from tensorcomp.errors import ArgumentError, DtypeError, ShapeError, UnknownNameError  # noqa: E402
from tensorcomp.torch.nn import ConvCapsules, DenseCapsules, Squash  # noqa: E402

CAPS = "O[n, y, x, co, p, r] += I[n, 2*y + ky, 2*x + kx, ci, p, q] * W[ky, kx, ci, co, q, r]"
SOFTMAX = "M[n] = max(X[n, c])\nE[n, c] = exp(X[n, c] - M[n])\nS[n] += E[n, c]\nY[n, c] = E[n, c] / S[n]"
gen = torch.Generator().manual_seed(3)


def t(*shape, grad=True):
    return torch.randn(*shape, dtype=torch.float64, generator=gen).requires_grad_(grad)


LIBRARY = [
    (lambda: ops.matmul(), [(3, 4), (4, 2)]),
    (lambda: ops.conv(2, stride=2, padding=1, channels_last=True), [(2, 7, 6, 3), (3, 3, 3, 4)]),
    (lambda: ops.pool("max", 2, 3, 2, padding=1), [(2, 3, 7, 7)]),
    (lambda: ops.softmax(3, 1), [(2, 4, 3)]),
    (lambda: ops.log_softmax(2), [(3, 5)]),
    (lambda: ops.activation("gelu_tanh", 2), [(3, 4)]),
    (lambda: ops.capsule_conv(2), [(2, 7, 7, 2, 4, 4), (3, 3, 2, 3, 4, 4)]),
    (lambda: ops.dense_votes(), [(2, 3, 4), (3, 2, 5, 4)]),
    (lambda: ops.squash(3), [(2, 3, 4)]),
]


@pytest.mark.parametrize("make, shapes", LIBRARY)
def test_gradcheck_on_the_op_library(make, shapes):
    f = tct.wrap(make())
    assert torch.autograd.gradcheck(f, tuple(t(*s) for s in shapes))


@pytest.mark.parametrize("source, shapes, options", [
    (CAPS, [(2, 7, 7, 3, 2, 2), (3, 3, 3, 4, 2, 2)], {}),
    (SOFTMAX, [(4, 6)], {}),  # four statements
    ("O[n, y, x] = max(I[n, 2*y + ky, 2*x + kx])", [(2, 9, 9)], {"ranges": {"ky": 3, "kx": 3}}),
    ("U[n, i, j, d] += X[n, i, k] * W[i % 4, j, d, k]", [(2, 8, 3), (4, 2, 5, 3)], {}),  # a %-shared weight
    ("S[n] += X[n, c] * X[n, c]\nY[n, c] = X[n, c] / sqrt(S[n] + 1.0)\nZ[n] += Y[n, c]",
     [(3, 5)], {}),  # two outputs
])
def test_gradcheck_on_multi_statement_and_multi_output_ops(source, shapes, options):
    f = tct.op(source, **options)
    assert torch.autograd.gradcheck(f, tuple(t(*s) for s in shapes))


def test_gradgradcheck_through_the_derived_gradient_op():
    f = tct.op(SOFTMAX)
    assert torch.autograd.gradgradcheck(f, (t(3, 4),))


def test_scalar_parameters_by_keyword_and_opcheck():
    axpy = tct.op("O[i] = A[i] * s + B[i]")
    a, b = t(5), t(5)
    assert torch.allclose(axpy(a, b, s=2.5), a * 2.5 + b)
    assert torch.autograd.gradcheck(lambda a, b: axpy(a, b, s=-1.5), (a, b))
    result = torch.library.opcheck(axpy.overload, (a, b, 2.0))
    assert set(result.values()) == {"SUCCESS"}
    caps = tct.op(CAPS)
    result = torch.library.opcheck(caps.overload, (t(2, 7, 7, 3, 2, 2), t(3, 3, 3, 4, 2, 2)))
    assert set(result.values()) == {"SUCCESS"}


def test_torch_compile_fullgraph_forward_and_backward_match_eager():
    caps = tct.op(CAPS)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 12, 3)
            self.w = torch.nn.Parameter(0.1 * torch.randn(3, 3, 3, 2, 2, 2, generator=gen))

        def forward(self, x):
            h = torch.relu(self.conv(x))  # (N, 12, 9, 9) -> capsules (N, 9, 9, 3, 2, 2)
            h = h.view(h.shape[0], 3, 2, 2, 9, 9).permute(0, 4, 5, 1, 2, 3)
            return (caps(h, self.w) ** 2).sum()

    net = Net()
    x = torch.randn(2, 3, 11, 11, generator=gen)
    eager = net(x)
    eager.backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    compiled = torch.compile(net, fullgraph=True)
    out = compiled(x)
    out.backward()
    assert torch.allclose(out, eager, rtol=1e-5)
    for g, p in zip(grads, net.parameters()):
        assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-5)


class Recording(tc.Op):
    """An op that keeps the arrays it was called with and the arrays it returned."""

    def __call__(self, *arrays, **params):
        self.seen = arrays
        self.returned = super().__call__(*arrays, **params)
        return self.returned


def test_no_copies_in_or_out():
    op = Recording("O[i, j] = A[i, j] * 2.0 + B[j, i]")
    f = tct.wrap(op)
    a = torch.randn(64, 32)
    b = torch.randn(64, 32).t()  # a transposed view: read through its strides, not copied
    out = f(a, b)
    assert [x.ctypes.data for x in op.seen] == [a.data_ptr(), b.data_ptr()]
    assert op.seen[1].strides == (4, 128)
    assert out.data_ptr() == op.returned.ctypes.data
    assert torch.allclose(out, a * 2 + b.t())


def test_outputs_follow_eager_torch_dtypes_and_int_inputs():
    pick = tct.op("O[n] += X[n, c] * where(T[n] == c, 1.0, 0.0)")
    x = torch.randn(3, 4, dtype=torch.float32, requires_grad=True)
    labels = torch.tensor([0, 3, 1])
    out = pick(x, labels)
    assert out.dtype == torch.float32 and torch.allclose(out, x[torch.arange(3), labels])
    out.sum().backward()
    assert torch.equal(x.grad, torch.nn.functional.one_hot(labels, 4).float())


def test_capsule_modules_match_a_pure_torch_capsnet_layer():
    torch.manual_seed(0)
    layer = DenseCapsules(6, 4, 3, 5, iterations=3).double()
    x = t(2, 6, 4)

    def squash(s):
        q = (s * s).sum(-1, keepdim=True)
        return s * q / ((1 + q) * torch.sqrt(q + 1e-9))

    votes = torch.einsum("nik,ijdk->nijd", x, layer.weight)
    b = torch.zeros(votes.shape[:3], dtype=torch.float64)
    for it in range(3):
        v = squash((torch.softmax(b, dim=2).unsqueeze(-1) * votes).sum(1))
        if it < 2:
            b = b + (votes * v.unsqueeze(1)).sum(-1)
    assert torch.allclose(layer(x), v, atol=1e-10)
    assert torch.allclose(Squash()(x), squash(x))
    assert torch.autograd.gradcheck(lambda w: tct.wrap(ops.dense_votes())(x, w), (layer.weight,))
    conv = ConvCapsules(2, 3, kernel_size=3, stride=2)
    poses, acts = conv(torch.randn(2, 7, 7, 2, 4, 4), torch.rand(2, 7, 7, 2))
    assert poses.shape == (2, 3, 3, 3, 4, 4) and acts.shape == (2, 3, 3, 3)
    (poses.sum() + acts.sum()).backward()
    assert conv.weight.grad is not None and conv.beta_a.grad is not None


def test_capsule_modules_compile_without_graph_breaks():
    layer = DenseCapsules(6, 4, 3, 5)
    squash = Squash(3)
    x = torch.randn(2, 6, 4)
    eager = layer(squash(x)).sum()
    compiled = torch.compile(lambda x: layer(squash(x)).sum(), fullgraph=True)
    assert torch.allclose(compiled(x), eager, rtol=1e-5)
    with pytest.raises(ShapeError) as e:
        squash(torch.randn(2, 3))
    assert str(e.value) == "Squash(rank=3): expected a rank-3 tensor, got shape (2, 3)"


def test_bad_inputs_raise_errors_naming_the_op_the_argument_and_the_value():
    f = tct.op("C[i, j] += A[i, k] * B[k, j]")
    a = torch.randn(2, 3)
    with pytest.raises(DtypeError) as e:
        f(a.half(), a.t())
    assert str(e.value) == ("op 'C[i, j] += A[i, k] * B[k, j]': input A has dtype torch.float16, which tensorcomp does "
                            "not support; use torch.float32, float64, int32, int64 or bool")
    with pytest.raises(ArgumentError) as e:
        f(a)
    assert str(e.value) == "op 'C[i, j] += A[i, k] * B[k, j]': takes 2 input tensors (A, B) but 1 was given"
    with pytest.raises(ArgumentError) as e:
        f(a, np.ones((3, 2)))
    assert str(e.value) == ("op 'C[i, j] += A[i, k] * B[k, j]': input B must be a torch.Tensor, got ndarray; "
                            "hint: torch.as_tensor(x)")
    with pytest.raises(ShapeError, match=r"index 'k' has extent 3 in A \(axis 1, shape \(2, 3\)\) but 4 in B"):
        f(a, torch.randn(4, 2))
    axpy = tct.op("O[i] = A[i] * s + B[i]")
    with pytest.raises(UnknownNameError) as e:
        axpy(a[0], a[0], s=1.0, t=2.0)
    assert str(e.value) == ("op 'O[i] = A[i] * s + B[i]': unexpected keyword argument 't'; the op's scalar "
                            "parameters are: s")
    with pytest.raises(ArgumentError) as e:
        axpy(a[0], a[0])
    assert str(e.value) == ("op 'O[i] = A[i] * s + B[i]': scalar parameter 's' was not given; pass it as a keyword, "
                            "op(..., s=value)")
    with pytest.raises(ArgumentError) as e:
        tct.wrap("C[i] = A[i]")
    assert str(e.value) == "tensorcomp.torch.wrap expects an op made by tc.op or tc.grad, got str"


def test_meta_tensors_get_shapes_from_range_inference():
    caps = tct.op(CAPS)
    out = caps(torch.empty(4, 14, 14, 8, 4, 4, device="meta"), torch.empty(3, 3, 8, 16, 4, 4, device="meta"))
    assert out.shape == (4, 6, 6, 16, 4, 4) and out.device.type == "meta"
