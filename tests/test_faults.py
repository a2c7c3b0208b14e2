"""A fault corpus around the core: nn layers, optimizers, state dicts and files, the train command, an
unwritable cache, NaN semantics. Each case asserts the error class and its text."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import tensorcomp as tc
from tensorcomp import nn, optim
from tensorcomp.data import DataLoader


@pytest.mark.parametrize("make,cls,message", [
    (lambda: nn.Linear(0, 3), tc.ArgumentError, "Linear(0, 3): in_features must be a positive int, got 0"),
    (lambda: nn.Linear(4, -2), tc.ArgumentError, "Linear(4, -2): out_features must be a positive int, got -2"),
    (lambda: nn.Linear(2.5, 3), tc.ArgumentError, "Linear(2.5, 3): in_features must be a positive int, got 2.5"),
    (lambda: nn.Conv2d(1, 4, 0), tc.ArgumentError, "Conv2d(1, 4): kernel_size must be positive, got 0"),
    (lambda: nn.Conv2d(2, 4, 3, groups=0), tc.ArgumentError, "Conv2d(2, 4): groups must be a positive int, got 0"),
    (lambda: nn.Conv2d(1, 4, 3, padding=-1), tc.ArgumentError, "Conv2d(1, 4): padding must be non-negative, got -1"),
    (lambda: nn.Conv2d(1, 4, 3, stride=(1,)), tc.ArgumentError, "Conv2d(1, 4): stride must be an int or 2 ints, got (1,)"),
    (lambda: nn.MaxPool2d(0), tc.ArgumentError, "MaxPool2d: kernel_size must be positive, got 0"),
    (lambda: nn.BatchNorm2d(0), tc.ArgumentError, "BatchNorm: num_features must be a positive int, got 0"),
    (lambda: nn.Embedding(0, 3), tc.ArgumentError, "Embedding: num_embeddings must be a positive int, got 0"),
])
def test_layer_constructors(make, cls, message):
    with pytest.raises(cls) as e:
        make()
    assert str(e.value) == message


def test_layer_inputs():
    with pytest.raises(tc.ShapeError) as e:
        nn.BatchNorm2d(3)(tc.Tensor(np.zeros((0, 3, 2, 2), np.float32)))
    assert str(e.value) == "BatchNorm(3): cannot take batch statistics of an empty batch (input shape (0, 3, 2, 2))"
    with pytest.raises(tc.ShapeError) as e:
        nn.Softmax()(tc.Tensor(np.float32(1.0)))
    assert str(e.value) == "Softmax(dim=-1): no axis -1 in an input of shape ()"


@pytest.mark.parametrize("make,message", [
    (lambda p: optim.Adam(p, lr=float("inf")), "Adam: lr must be a finite real number > 0.0, got inf"),
    (lambda p: optim.Adam(p, lr="abc"), "Adam: lr must be a finite real number > 0.0, got 'abc'"),
    (lambda p: optim.Adam(p, weight_decay=float("inf")), "Adam: weight_decay must be a finite real number >= 0.0, got inf"),
    (lambda p: optim.Adam(p, betas=(0.9,)), "Adam: betas must be a pair (beta1, beta2), got (0.9,)"),
    (lambda p: optim.Adam(p, eps=float("nan")), "Adam: eps must be a finite real number >= 0.0, got nan"),
    (lambda p: optim.SGD(p, lr=-0.1), "SGD: lr must be a finite real number > 0.0, got -0.1"),
    (lambda p: optim.Adam(None), "Adam: params must be an iterable of parameters (model.parameters()), got NoneType"),
    (lambda p: optim.Adam(np.zeros(3)), "Adam: params must be an iterable of parameters (model.parameters()), got ndarray"),
    (lambda p: optim.Adam([np.zeros(3)]), "Adam: parameter 0 is a ndarray, not a tensor; pass model.parameters() or "
                                          "tc.Tensor(..., requires_grad=True)"),
    (lambda p: optim.Adam({"w": p[0]}), "Adam: params must be an iterable of parameters (model.parameters()), got dict"),
    (lambda p: optim.SGD([], lr=0.1), "SGD: got an empty parameter list"),
])
def test_optimizer_arguments(make, message):
    with pytest.raises(tc.ArgumentError) as e:
        make([nn.Parameter(np.zeros(2))])
    assert str(e.value) == message


def test_a_gradient_of_another_dtype_never_changes_the_parameter():
    p = nn.Parameter(np.zeros(3))
    opt = optim.Adam([p])
    p.grad = np.ones(3)  # float64 for a float32 parameter
    with pytest.raises(tc.ArgumentError) as e:
        opt.step()
    assert str(e.value) == ("Adam: the gradient of parameter 0 is float64 of shape (3,) but the parameter is float32 "
                            "of shape (3,)")
    assert p.dtype == np.float32


def test_state_dicts_and_files(tmp_path):
    model = nn.Linear(2, 1)
    for bad, message in [([], "load_state_dict: expected a dict of parameter name -> array (as state_dict() gives), "
                              "got list"),
                         (None, "load_state_dict: expected a dict of parameter name -> array (as state_dict() gives), "
                                "got NoneType"),
                         ({"weight": "ab", "bias": np.zeros(1)}, "load_state_dict: weight must be a numeric array, "
                                                                 "got str")]:
        with pytest.raises(tc.ArgumentError) as e:
            model.load_state_dict(bad)
        assert str(e.value) == message
    with pytest.raises(tc.ArgumentError) as e:
        model.load(str(tmp_path / "missing.npz"))
    assert str(e.value) == f"Module.load: no file {tmp_path / 'missing.npz'}"
    good = tmp_path / "m.npz"
    model.save(str(good))
    for name, data in (("garbage.npz", b"not a zip at all"), ("truncated.npz", good.read_bytes()[:40])):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(tc.ArgumentError, match=f"Module.load: {tmp_path / name} is not a readable .npz state dict"):
            model.load(str(tmp_path / name))
    model.load(str(good))


@pytest.mark.parametrize("flags,message", [
    (["--epochs", "0"], "error: tensorcomp train: --epochs must be a positive integer, got 0"),
    (["--epochs", "-1"], "error: tensorcomp train: --epochs must be a positive integer, got -1"),
    (["--lr", "inf"], "error: tensorcomp train: --lr must be a finite number > 0, got inf"),
    (["--batch-size", "0"], "error: tensorcomp train: --batch-size must be a positive integer, got 0"),
])
def test_train_command_refuses_bad_flags(flags, message):
    run = subprocess.run([sys.executable, "-m", "tensorcomp.cli", "train", "lenet", *flags], capture_output=True,
                         text=True)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == message


def test_relu_and_max_propagate_nan_as_numpy():
    x = np.array([np.nan, -1.0, 2.0])
    np.testing.assert_array_equal(tc.op("O[i] = relu(X[i])")(x), np.maximum(x, 0))
    np.testing.assert_array_equal(tc.op("O[i] = max(X[i], 0.5)")(x), np.maximum(x, 0.5))
    assert np.isnan(tc.op("M = max(X[i])")(x))


def test_an_unwritable_cache_warns_once_and_tuning_still_returns(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a regular file where the cache directory should be")
    monkeypatch.setenv("TENSORCOMP_CACHE_DIR", str(blocker / "cache"))
    op = tc.op("C[i, j] += A[i, k] * B[k, j]")
    a = np.ones((8, 8), np.float32)
    np.testing.assert_allclose(op(a, a), a @ a)  # runs without disk caching
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = tc.tune(op, a, a, budget_s=2, progress=False)
    assert result.unsaved
    notes = [str(w.message) for w in caught if "cannot write the tuning database" in str(w.message)]
    assert len(notes) == 1 and "kept for this process only" in notes[0]
    assert tc.tune(op, a, a, budget_s=2, progress=False).stored  # found in this process
    np.testing.assert_allclose(op(a, a), a @ a)


@pytest.mark.parametrize("src,ranges", [
    ("O[i] = A[(i + 9223372036854775807) // 4611686018427387905]", {"i": 3}),
    ("O[i] = A[(i + 18446744073709551616) % 5]", {"i": 3}),
    ("O[i] = A[(2305843009213693952 * i) % 5]", {"i": 3}),
])
def test_index_arithmetic_beyond_64_bits_is_refused(src, ranges):
    with pytest.raises(tc.RangeError, match="beyond what 64-bit index arithmetic holds"):
        tc.op(src, ranges=ranges)(np.arange(5.0))


def test_a_division_whose_large_constant_comes_out_whole_is_computed_exactly():
    """``(i + 2**63) // 2**62`` is ``i // 2**62 + 2`` in the normal form of divisions: no term left
    beyond 64-bit arithmetic, so it runs, and gives what Python's integers give."""
    op = tc.op("O[i] = A[(i + 9223372036854775808) // 4611686018427387904]", ranges={"i": 3})
    np.testing.assert_array_equal(op(np.arange(5.0)), [2.0, 2.0, 2.0])


def test_values_that_do_not_fit_are_refused():
    with pytest.raises(tc.ParseError, match="integer literal 99999999999999999999 does not fit in 64 bits"):
        tc.op("O[i] = A[i] + 99999999999999999999")
    with pytest.raises(tc.DtypeError) as e:
        tc.op("O[i] = A[i] * s")(np.ones(2), s=2 ** 70)
    assert str(e.value) == ("op 'O[i] = A[i] * s': scalar parameter 's' is 1180591620717411303424, which does not fit "
                            "in 64 bits; pass a float (e.g. 1.18059e+21) if a float is meant")


def test_a_bool_byte_other_than_one_reads_as_true():
    b = np.array([0, 1, 2, 255], np.uint8).view(np.bool_)
    np.testing.assert_array_equal(tc.op("O[i] = where(B[i], 1, 0)")(b), np.where(b, 1, 0))


def test_an_output_larger_than_memory_is_refused_before_allocation():
    with pytest.raises(tc.ShapeError, match=r"output O of shape \(1048576, 1048576\) \(float64\) would need "
                                            r"8,796,093,022,208 bytes, more than this machine's"):
        tc.op("O[i, j] = A[i] * B[j]")(np.ones(2 ** 20), np.ones(2 ** 20))


def _idx(ndim_dims, payload, kind=0x08):
    dims = b"".join(d.to_bytes(4, "big") for d in ndim_dims)
    return bytes([0, 0, kind, len(ndim_dims)]) + dims + payload


def _mnist_dir(tmp_path, **override):
    files = {
        "train-images-idx3-ubyte": _idx([2, 28, 28], bytes(2 * 784)),
        "train-labels-idx1-ubyte": _idx([2], bytes([1, 2])),
        "t10k-images-idx3-ubyte": _idx([1, 28, 28], bytes(784)),
        "t10k-labels-idx1-ubyte": _idx([1], bytes([3])),
    }
    files.update(override)
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path


@pytest.mark.parametrize("override,cls,text", [
    ({}, None, None),
    ({"train-labels-idx1-ubyte": _idx([2], bytes([1, 200]))}, tc.ArgumentError,
     "mnist: train label 1 is 200; MNIST labels are 0..9"),
    ({"t10k-labels-idx1-ubyte": _idx([1], bytes([3]), kind=0x0D)}, tc.DtypeError,
     "t10k-labels-idx1-ubyte holds IDX type 0x0d; MNIST files hold unsigned bytes (0x08)"),
    ({"train-images-idx3-ubyte": _idx([2, 28, 28], bytes(100))}, tc.ShapeError,
     "train-images-idx3-ubyte says 2x28x28 = 1568 bytes of data but holds 100"),
    ({"train-images-idx3-ubyte": b"garbage"}, tc.ArgumentError, "is not an IDX file"),
    ({"train-labels-idx1-ubyte": _idx([3], bytes([1, 2, 3]))}, tc.ShapeError, "mnist: 2 train images but 3 labels"),
    ({"t10k-images-idx3-ubyte": _idx([1, 28], bytes(28))}, tc.ShapeError, "t10k-images-idx3-ubyte has 2 axes; "
                                                                          "expected 3"),
])
def test_corrupt_mnist_files(tmp_path, override, cls, text):
    from tensorcomp.data import mnist
    root = _mnist_dir(tmp_path, **override)
    if cls is None:
        x, y, _, _ = mnist(str(root))
        assert x.shape == (2, 1, 28, 28) and list(y) == [1, 2]
        return
    with pytest.raises(cls) as e:
        mnist(str(root))
    assert text in str(e.value)


def test_cli_flags_and_cache_import(tmp_path):
    def cli(*argv):
        return subprocess.run([sys.executable, "-m", "tensorcomp.cli", *argv], capture_output=True, text=True,
                              env={**os.environ, "TENSORCOMP_CACHE_DIR": str(tmp_path / "cache")})
    run = cli("show", "C[i] = A[i]", "--shape", "A=99999999999999999999x3")
    assert run.returncode == 2 and "extents must lie in [0, 2**62)" in run.stderr
    run = cli("show", "C[i] = A[i]", "--shape", "A=3", "--dtype", "A=foo")
    assert run.returncode == 2 and "dtype of A must be one of float32, float64, int32, int64, bool; got 'foo'" in run.stderr
    run = cli("cache", "import", str(tmp_path / "missing.json"))
    assert run.returncode == 2 and run.stderr.strip() == f"error: cache import: no file {tmp_path / 'missing.json'}"
    (tmp_path / "bad.json").write_text('[{"key": "k"}]')
    run = cli("cache", "import", str(tmp_path / "bad.json"))
    assert run.returncode == 2 and "entry 0 of" in run.stderr and "is not a tuning result: it lacks op" in run.stderr
    (tmp_path / "data").mkdir()
    run = cli("train", "lenet", "--data", str(tmp_path / "data"), "--epochs", "1")
    assert run.returncode == 2 and "error: mnist: no train-images-idx3-ubyte[.gz] in" in run.stderr


def test_deep_long_and_hostile_sources_compile_or_name_the_limit():
    long_sum = "O[i] = " + " + ".join(["A[i]"] * 400)
    try:
        np.testing.assert_allclose(tc.op(long_sum)(np.ones(3)), np.full(3, 400.0))
    except tc.ParseError as e:
        assert "nests too deeply to compile" in str(e)
    with pytest.raises(tc.ParseError):
        tc.op("O[i] = " + "(" * 900 + "A[i]" + ")" * 900)
    with pytest.raises(tc.ParseError, match="is 3000 characters long; names are at most 200"):
        tc.op("O[i] = " + "B" * 3000 + "[i]")
    with pytest.raises(tc.ArgumentError, match="a numpy masked array was passed, and ops do not apply masks"):
        tc.op("O[i] = A[i]")(np.ma.masked_array([1.0, 2.0], mask=[0, 1]))


def test_data_loader_arguments():
    from tensorcomp.data import DataLoader
    with pytest.raises(tc.ShapeError, match="DataLoader: 3 inputs but 2 targets"):
        DataLoader(np.zeros((3, 1)), np.zeros(2))
    with pytest.raises(tc.ShapeError, match="DataLoader: batch_size must be >= 1, got 0"):
        DataLoader(np.zeros((3, 1)), np.zeros(3), batch_size=0)


def test_an_integer_to_a_negative_integer_power_is_refused_as_numpy_does():
    with pytest.raises(tc.DtypeError, match="an integer to a negative integer power on line 1"):
        tc.op("O[i] = A[i] ** -2")(np.array([1, 2]))
    np.testing.assert_allclose(tc.op("O[i] = A[i] ** -2")(np.array([1.0, 2.0])), [1.0, 0.25])


# -- property-based: whatever a caller passes, an op answers as numpy does or raises a TensorcompError --------

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_ANY_ARRAY = st.one_of(
    st.tuples(st.integers(0, 3), st.integers(0, 4)).map(lambda s: np.zeros(s, np.float32) + 0.5),
    st.integers(0, 5).map(lambda n: np.arange(n, dtype=np.int64)),
    st.sampled_from([np.float64(2.0), np.array(["a", "b"]), np.array([True, False]), None, "text", [1.0, 2.0],
                     np.zeros((2, 3), np.complex64), np.zeros((2, 3), ">f4"), np.ones((3, 4))[:, ::2],
                     np.array([np.nan, np.inf, -np.inf])]),
)


@given(a=_ANY_ARRAY, b=_ANY_ARRAY)
def test_op_calls_with_any_arguments_answer_or_raise_clearly(a, b):
    op = tc.op("C[i, j] += A[i, k] * B[k, j]")
    try:
        out = op(a, b)
    except tc.TensorcompError:
        return
    np.testing.assert_allclose(out, np.asarray(a) @ np.asarray(b), rtol=1e-6)


@given(t=st.lists(st.integers(-2 ** 63, 2 ** 63 - 1), min_size=1, max_size=6),
       e=st.integers(1, 5), dtype=st.sampled_from([np.int64, np.int32, np.uint8, np.float32, np.bool_]))
def test_index_tensors_of_any_values_and_dtypes_answer_or_raise_clearly(t, e, dtype):
    table = np.arange(e * 2, dtype=np.float64).reshape(e, 2)
    index = np.asarray(t).astype(dtype) if dtype is not np.bool_ else np.asarray(t) > 0
    op = tc.op("O[i, d] = E[T[i], d]")
    try:
        out = op(table, index)
    except tc.TensorcompError:  # a float, bool or unsupported (uint8) index tensor, or a value outside E
        assert index.dtype not in (np.int64, np.int32) or ((index < 0) | (index >= e)).any()
        return
    np.testing.assert_array_equal(out, table[index.astype(np.int64)])


def _message(fn) -> tuple[type, str]:
    try:
        fn()
    except tc.TensorcompError as exc:
        return type(exc), str(exc)
    raise AssertionError("no error")


def test_more_layer_optimizer_and_state_misuse():
    lin = nn.Linear(3, 2)
    x = np.ones((2, 3), np.float32)
    cases = [
        (lambda: nn.BatchNorm2d(2, eps=-1), tc.ArgumentError, "BatchNorm: eps must be a finite number > 0, got -1"),
        (lambda: nn.BatchNorm2d(2, momentum=2), tc.ArgumentError, "BatchNorm: momentum must be a number in [0, 1], got 2"),
        (lambda: nn.BatchNorm2d(1)(tc.Tensor(np.ones((1, 1, 1, 1), np.float32))), tc.ShapeError,
         "BatchNorm(1): expected more than 1 value per channel in training, got input shape (1, 1, 1, 1) (every output "
         "would be 0); use a larger batch or eval()"),
        (lambda: nn.Dropout("a"), tc.ArgumentError, "Dropout: p must be a number in [0, 1), got 'a'"),
        (lambda: nn.Sequential(nn.ReLU(), 5), tc.ArgumentError, "Sequential: layer 1 is a int, not a Module"),
        (lambda: nn.Sequential(nn.ReLU(), nn.Tanh())[2], tc.ArgumentError,
         "Sequential: layer 2 does not exist; it has 2 layers"),
        (lambda: nn.Sequential(nn.ReLU())["0"], tc.ArgumentError,
         "Sequential: a layer index must be an int or a slice, got '0'"),
        (lambda: nn.Linear(3, 2, bias="no"), tc.ArgumentError, "Linear(3, 2): bias must be True or False, got 'no'"),
        (lambda: nn.MaxPool2d(2, padding=2), tc.ArgumentError,
         "MaxPool2d: padding 2 is more than half of kernel_size 2; a window could then hold padding only"),
        (lambda: lin([[1.0, 2.0, 3.0]]), tc.ArgumentError, "Linear: the input must be a tc.Tensor or a numpy array, got "
         "list; wrap it: tc.Tensor(np.asarray(x, np.float32))"),
        (lambda: optim.Adam([lin.weight, lin.bias, lin.weight]), tc.ArgumentError,
         "Adam: parameter 2 is parameter 0 again; each parameter is listed once (it would be updated twice per step)"),
        (lambda: lin.save(5), tc.ArgumentError, "Module.save: path must be a str or path, got int"),
        (lambda: lin.load_state_dict(lin.state_dict(), strict="yes"), tc.ArgumentError,
         "load_state_dict: strict must be True or False, got 'yes'"),
        (lambda: tc.Tensor(np.array(["a"])), tc.DtypeError,
         "tc.Tensor: data of dtype <U1 (ndarray); tensors hold bool, integer or floating-point numbers"),
        (lambda: tc.op("O[i] = A[i]", schedule=None), tc.ScheduleError,
         "op 'O[i] = A[i]': schedule must be a tuple of schedule records, got NoneType"),
        (lambda: tc.tune(tc.op("O[i] = A[i]"), np.ones(3), budget_s="x"), tc.ArgumentError,
         "op 'O[i] = A[i]': tc.tune budget_s must be a finite number of seconds > 0, got 'x'"),
        (lambda: tc.tune(tc.op("O[i] = A[i]"), np.ones(3), budget_s=float("nan")), tc.ArgumentError,
         "op 'O[i] = A[i]': tc.tune budget_s must be a finite number of seconds > 0, got nan"),
        (lambda: DataLoader([[1, 2]], [1], 1), tc.ArgumentError,
         "DataLoader: x must be a numpy array with a leading sample axis, got list"),
        (lambda: DataLoader(x, np.ones(2), 1, seed="s"), tc.ArgumentError,
         "DataLoader: seed must be a non-negative int, got 's'"),
    ]
    for make, cls, message in cases:
        assert _message(make) == (cls, message)
    lin.weight.grad = [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]
    assert _message(optim.SGD(lin.parameters(), lr=0.1).step) == (
        tc.ArgumentError, "SGD: the gradient of parameter 0 is a list; gradients are arrays of the parameter's dtype "
                          "and shape (as backward() leaves them)")


def test_unwritable_files_are_named(tmp_path):
    lin = nn.Linear(3, 2)
    cls, message = _message(lambda: lin.save(str(tmp_path / "no" / "such" / "m.npz")))
    assert cls is tc.ArgumentError and message.startswith(f"Module.save: cannot write {tmp_path}/no/such/m.npz (")
    assert message.endswith("); give a path in a writable directory")
    out = subprocess.run([sys.executable, "-m", "tensorcomp.cli", "cache", "export", str(tmp_path)],
                         capture_output=True, text=True, env=dict(os.environ, TENSORCOMP_CACHE_DIR=str(tmp_path / "c")))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"error: cache export: cannot write {tmp_path} (IsADirectoryError")


def test_batchnorm_statistics_travel_with_the_state_dict(tmp_path):
    """A state dict holds the running statistics too: a model saved and loaded evaluates the same."""
    nn.manual_seed(0)
    a = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    x = tc.Tensor(np.random.default_rng(0).standard_normal((4, 1, 6, 6)).astype(np.float32))
    a(x)  # training: the running estimates move
    assert {"layers.1.running_mean", "layers.1.running_var"} <= set(a.state_dict())
    a.save(str(tmp_path / "m.npz"))
    b = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    b.load(str(tmp_path / "m.npz"))
    np.testing.assert_array_equal(a.eval()(x).numpy(), b.eval()(x).numpy())
    partial = {"layers.0.weight": a.state_dict()["layers.0.weight"]}
    b.load_state_dict(partial, strict=False)  # the rest left as it is


def test_an_index_tensor_op_called_with_missing_or_low_rank_arrays():
    op = tc.op("O[i] = A[T[i]]")
    assert _message(lambda: op(np.ones(3, np.float32))) == (
        tc.ArgumentError, "op 'O[i] = A[T[i]]': takes 2 input tensors (A, T) but 1 was given; missing: T")
    assert _message(lambda: op(np.float32(1.0), np.zeros((4, 3), np.int64))) == (
        tc.ShapeError, "op 'O[i] = A[T[i]]': A has shape (), but index tensor T selects along its axis 0; give A the "
                       "rank the source indexes it with")


def test_odd_literals_in_a_source_raise_without_python_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _message(lambda: tc.op("O[i // 2, 6inan % 2] = A[i]"))[0] is tc.ParseError


def test_tensor_and_module_misuse():
    x = tc.Tensor(np.ones((2, 3), np.float32), requires_grad=True)
    lin = nn.Linear(3, 2)
    cases = [
        (lambda: x.item(), tc.ShapeError, ".item(): a tensor of shape (2, 3) (6 elements) is not one number; reduce "
                                          "it first (.sum(), .mean()) or read it with .numpy()"),
        (lambda: float(x), tc.ShapeError, "float(): a tensor of shape (2, 3) (6 elements) is not one number; reduce "
                                          "it first (.sum(), .mean()) or read it with .numpy()"),
        (lambda: x < "a", tc.ArgumentError, "tc.Tensor comparison (lt): cannot compare with a str; compare with a "
                                            "number, an array or a tensor"),
        (lambda: x.reshape("a"), tc.ArgumentError, "reshape: the new shape must be ints, got ('a',)"),
        (lambda: (x * 2).backward("a"), tc.ArgumentError,
         "backward(): grad must be a numeric array of the tensor's shape (2, 3), got str"),
        (lambda: (x * 2).backward(np.ones(5)), tc.ShapeError,
         "backward(): grad has shape (5,) but the tensor has shape (2, 3)"),
        (lambda: tc.Tensor(np.ones(3, np.int64), requires_grad=True), tc.DtypeError,
         "tc.Tensor: only floating-point tensors can require gradients, got int64"),
        (lambda: lin(), tc.ArgumentError, "Linear: Linear.forward() missing 1 required positional argument: 'x'"),
        (lambda: lin.train("yes"), tc.ArgumentError, "Linear.train: mode must be True or False, got 'yes'"),
        (lambda: nn.MarginLoss(m_plus=float("inf")), tc.ArgumentError,
         "MarginLoss: m_plus must be a finite number, got inf"),
        (lambda: nn.SpreadLoss(steps=0), tc.ArgumentError, "SpreadLoss: steps must be a positive int, got 0"),
        (lambda: optim.Adam(lin.parameters()).load_state_dict({"steps": np.zeros(1)}), tc.ArgumentError,
         "Adam.load_state_dict: missing ['exp_avg.0', 'exp_avg.1', 'exp_avg_sq.0', 'exp_avg_sq.1'], unexpected "
         "nothing (a state dict of an optimizer over other parameters?)"),
        (lambda: optim.SGD(lin.parameters()).zero_grad(set_to_none="no"), tc.ArgumentError,
         "SGD.zero_grad: set_to_none must be True or False, got 'no'"),
    ]
    for make, cls, message in cases:
        assert _message(make) == (cls, message)


def test_an_optimizer_state_dict_resumes_training_exactly():
    x = tc.Tensor(np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32))
    nn.manual_seed(0)
    a = nn.Linear(3, 2)
    opt_a = optim.Adam(a.parameters())

    def step(model, opt):
        opt.zero_grad()
        (model(x) * model(x)).sum().backward()
        opt.step()
    for _ in range(3):
        step(a, opt_a)
    b = nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    opt_b = optim.Adam(b.parameters())
    opt_b.load_state_dict(opt_a.state_dict())
    assert opt_b.t == 3
    for _ in range(2):
        step(a, opt_a)
        step(b, opt_b)
    np.testing.assert_array_equal(a.weight.numpy(), b.weight.numpy())
    opt_a.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(a.weight.grad, np.zeros((2, 3), np.float32))
