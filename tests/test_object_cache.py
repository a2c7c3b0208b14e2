"""The on-disk cache of compiled kernels: a new process loads object code instead of running LLVM."""

import os
import subprocess
import sys

from tensorcomp.cli import main

CODE = """
import os, sys
import numpy as np, tensorcomp as tc
from tensorcomp.runtime import object_counts
if os.environ.get("FORBID_PLANNING"):  # a kernel run before must come from its manifest
    def planned(*args, **kwargs):
        raise AssertionError("planned")
    sys.modules["tensorcomp.compiler"].run = planned
a = np.arange(48, dtype=np.float32).reshape(6, 8)
out = tc.op("S[i] += A[i, j] * A[i, j] + 1.5")(a)
assert np.allclose(out, (a * a + 1.5).sum(1))
print(object_counts()["llvm"], object_counts()["loaded"], out.tolist())
"""


def run(cache, **env) -> tuple[int, int, str]:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                         env=dict(os.environ, TENSORCOMP_CACHE_DIR=str(cache), **env))
    assert out.returncode == 0, out.stderr
    llvm, loaded, values = out.stdout.strip().split(" ", 2)
    return int(llvm), int(loaded), values


def test_a_new_process_loads_compiled_kernels_and_a_damaged_one_is_rebuilt(tmp_path, monkeypatch, capsys):
    first = run(tmp_path)
    assert first[:2] == (1, 0)
    objects = list((tmp_path / "objects").glob("*.o"))
    assert len(objects) == 1
    second = run(tmp_path)
    assert second == (0, 1, first[2])
    # a damaged file (its checksum no longer matches) is never loaded: the kernel is compiled again
    data = bytearray(objects[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    objects[0].write_bytes(bytes(data))
    assert run(tmp_path) == (1, 0, first[2])
    assert run(tmp_path) == (0, 1, first[2])
    monkeypatch.setenv("TENSORCOMP_CACHE_DIR", str(tmp_path))
    assert main(["cache", "list"]) == 0
    assert "# 1 compiled kernels" in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0
    assert "and 1 compiled kernels" in capsys.readouterr().out
    assert not list((tmp_path / "objects").glob("*.o"))


def test_the_object_cache_can_be_turned_off(tmp_path):
    assert run(tmp_path, TENSORCOMP_OBJECT_CACHE="0")[:2] == (1, 0)
    assert run(tmp_path, TENSORCOMP_OBJECT_CACHE="0")[:2] == (1, 0)
    assert not (tmp_path / "objects").exists()


def test_a_new_process_runs_a_kernel_from_its_manifest_without_planning(tmp_path):
    first = run(tmp_path)
    assert len(list((tmp_path / "objects").glob("*.kernel.json"))) == 1
    assert run(tmp_path, FORBID_PLANNING="1") == (0, 1, first[2])
    # another thread count is another kernel (the default schedule depends on it): planned again
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                         env=dict(os.environ, TENSORCOMP_CACHE_DIR=str(tmp_path), FORBID_PLANNING="1",
                                  TENSORCOMP_NUM_THREADS="3"))
    assert "AssertionError: planned" in out.stderr
    # a manifest whose object code is gone is passed over: the kernel is compiled again
    for f in (tmp_path / "objects").glob("*.o"):
        f.unlink()
    assert run(tmp_path) == (1, 0, first[2])
    for f in (tmp_path / "objects").glob("*.kernel.json"):
        f.write_text("{not json")
    assert run(tmp_path)[2] == first[2]


def test_an_edited_or_moved_manifest_is_never_trusted(tmp_path, monkeypatch):
    """A manifest is checked against its key and text: one digit of an output shape changed, or a
    manifest copied to another kernel's key, is set aside and the kernel built again (a wrong shape
    trusted would be an out-of-bounds write)."""
    import json
    first = run(tmp_path)
    (path,) = (tmp_path / "objects").glob("*.kernel.json")
    good = path.read_text()
    stored = json.loads(good)
    manifest = json.loads(stored["manifest"])
    manifest["outputs"][0][0][0] += 1  # one digit of the output shape
    path.write_text(json.dumps({"sum": stored["sum"], "manifest": json.dumps(manifest)}))
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                         env=dict(os.environ, TENSORCOMP_CACHE_DIR=str(tmp_path), FORBID_PLANNING="1"))
    assert "AssertionError: planned" in out.stderr  # not loaded from the edited manifest
    assert run(tmp_path)[2] == first[2]  # built again, right values, a good manifest written
    from tensorcomp.runtime import objects
    monkeypatch.setenv("TENSORCOMP_CACHE_DIR", str(tmp_path))
    other = tmp_path / "objects" / ("0" * 32 + ".kernel.json")
    other.write_text(path.read_text())  # a valid manifest under another kernel's key
    assert objects.read_manifest("0" * 32) is None and not other.exists()
    assert objects.read_manifest(path.name[:-len(".kernel.json")]) is not None


def test_llvm_prefers_shuffled_loads_to_gathers_unless_asked(monkeypatch):
    """The target features ask LLVM for shuffled wide loads instead of gathers (and they are part of
    the object key: a kernel built either way is cached apart); TENSORCOMP_GATHERS=1 leaves them out."""
    from tensorcomp.runtime import jit
    monkeypatch.delenv("TENSORCOMP_GATHERS", raising=False)
    assert jit._features().endswith("+prefer-no-gather,+prefer-no-scatter")
    assert jit._features() in jit._environment()
    monkeypatch.setenv("TENSORCOMP_GATHERS", "1")
    assert "prefer-no-gather" not in jit._features()


PLAN = """
import json
import numpy as np, tensorcomp as tc
from tensorcomp.compiler import ArraySpec
from tensorcomp.runtime import kernel as K
a = np.ones((2048, 512), np.float32)
op = tc.op("S[i] += A[i, j] * A[i, j]")
k = op.kernel_for([ArraySpec(a.shape, a.dtype, a.strides)], {})
before = [p if isinstance(p, bool) else None for p in k.plan], K.decided(k)
assert np.allclose(op(a), 512)
print(json.dumps([k.threads, before, [p if isinstance(p, bool) else None for p in k.plan]]))
"""


def test_a_kernels_thread_plan_is_stored_with_its_manifest(tmp_path):
    """Which parallel stages go to the threads is decided by timing the first call; the decision is
    stored with the kernel's manifest, so a new process runs them as decided from its first call."""
    import json

    def plan_run():
        out = subprocess.run([sys.executable, "-c", PLAN], capture_output=True, text=True,
                             env=dict(os.environ, TENSORCOMP_CACHE_DIR=str(tmp_path), TENSORCOMP_NUM_THREADS="2"))
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])
    threads, (before, known), after = plan_run()
    assert threads == 2 and before == [] and not known and any(isinstance(p, bool) for p in after)
    threads, (before, known), again = plan_run()
    assert before == after and known and again == after
