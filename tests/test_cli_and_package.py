"""The console command and the installed package layout."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tensorcomp.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_show_prints_ranges_loop_nest_and_ir(capsys):
    assert main(["show", "O[n, y] += I[n, 2*y + k] * W[k]", "--shape", "I=2x9", "--shape", "W=3"]) == 0
    out = capsys.readouterr().out
    assert "O: (2, 4)" in out
    assert "line 1: n in [0, 2), y in [0, 4), k in [0, 3)" in out
    assert "{ [n, y, k] : 0 <= n <= 1 and 0 <= y <= 3 and 0 <= k <= 2 }" in out
    assert "      O[n, y] += I[n, k + 2*y] * W[k]" in out
    assert 'define void @"kernel"' in out


def test_show_with_dtype_and_range(capsys):
    assert main(["show", "O[y] = max(I[2*y + k])", "--shape", "I=8", "--dtype", "I=float64", "--range", "k=3",
                 "--range", "y=0:4", "--optimized"]) == 0
    out = capsys.readouterr().out
    assert "O: (4,)" in out and "double" in out


def test_show_reports_errors(capsys):
    assert main(["show", "O[i] += A[i, j]", "--shape", "A=3"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("error: op 'O[i] += A[i, j]': tensor A is indexed with 2 indices but the array passed "
                           "has rank 1 (shape (3,))")


def test_demo_runs_on_the_bundled_data(capsys):
    from tensorcomp.cli import cmd_demo
    import tensorcomp.cli as cli
    orig = cli.caps_demo
    cli.caps_demo = lambda: None  # the timing part is for people, not tests
    try:
        assert cmd_demo(None) == 0
    finally:
        cli.caps_demo = orig
    out = capsys.readouterr().out
    assert "predictions agree with numpy on 100.0% of digits" in out


def test_bundled_data_has_the_documented_split():
    from tensorcomp.data import mnist_5k
    d = mnist_5k()
    assert d["train_images"].shape == (4000, 28, 28) and d["test_images"].shape == (1000, 28, 28)
    assert d["train_images"].dtype.name == "uint8"


def test_plain_install_puts_ops_and_autodiff_inside_the_package(tmp_path):
    """`pip install .` (not editable) maps ops/ and autodiff/ to tensorcomp.ops / tensorcomp.autodiff."""
    target = tmp_path / "site"
    # with build isolation, as the README's install does: a new venv's own setuptools (65.x, no wheel)
    # cannot build this project, the isolated build environment gets what pyproject.toml asks for
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                           "--target", str(target), str(ROOT)], capture_output=True, text=True)
    if proc.returncode != 0 and "No module named" in proc.stderr:
        pytest.skip(f"pip cannot build here: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr
    assert (target / "tensorcomp" / "ops" / "conv.py").exists()
    assert (target / "tensorcomp" / "autodiff" / "__init__.py").exists()
    assert (target / "tensorcomp" / "data" / "mnist_5k.npz").exists()
    for sub in ("nn", "schedule", "codegen", "autotune", "lang", "domain", "runtime"):
        assert (target / "tensorcomp" / sub / "__init__.py").exists(), sub
    assert not (target / "ops").exists()
    code = ("import tensorcomp, tensorcomp.ops as o; import numpy as np; "
            "print(tensorcomp.__file__); print(o.matmul()(np.eye(2), np.eye(2)).sum())")
    env = dict(os.environ, PYTHONPATH=str(target))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.split()
    assert lines[0].startswith(str(target)) and lines[1] == "2.0"


def test_readme_tour_runs_as_written():
    import doctest
    text = (ROOT / "README.md").read_text()
    tour = text[text.index("## A five-minute tour"):text.index("The same from the shell")]
    block = tour[tour.index("```python") + len("```python"):tour.index("```", tour.index("```python") + 9)]
    test = doctest.DocTestParser().get_doctest(block, {}, "README tour", "README.md", 0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.failures == 0 and runner.tries >= 8


@pytest.mark.parametrize("section, needs", [("## Use it from PyTorch", "torch"), ("## Use it from JAX", "jax"),
                                            ("## A training step as one program", None)])
def test_readme_sections_run_as_written(section, needs):
    import doctest
    if needs:
        pytest.importorskip(needs)
    text = (ROOT / "README.md").read_text()
    part = text[text.index(section):]
    part = part[:part.index("\n## ", 4)]
    block = part[part.index("```python") + len("```python"):part.index("```", part.index("```python") + 9)]
    test = doctest.DocTestParser().get_doctest(block, {}, section, "README.md", 0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.failures == 0 and runner.tries >= 5
