"""Data-parallel training and distributed tuning on MPI: 2 ranks on localhost, bounded by timeouts."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tensorcomp import distributed as dist
from tensorcomp.data import DataLoader

MPIEXEC = str(Path(sys.executable).parent / "mpiexec") if (Path(sys.executable).parent / "mpiexec").exists() \
    else shutil.which("mpiexec")


def mpi_ready() -> bool:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return MPIEXEC is not None


needs_mpi = pytest.mark.skipif(not mpi_ready(), reason="needs the dist extra (mpi4py, mpich)")


def run(args: list[str], cache: Path, timeout: float = 300, threads: str | None = "1") -> subprocess.CompletedProcess:
    env = dict(os.environ, TENSORCOMP_CACHE_DIR=str(cache))
    env.pop("TENSORCOMP_NUM_THREADS", None)
    if threads is not None:
        env["TENSORCOMP_NUM_THREADS"] = threads
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)


def test_one_process_without_mpi_is_rank_0_of_1():
    dist.init()
    assert (dist.rank(), dist.size(), dist.is_main()) == (0, 1, True)
    assert dist.shard(10) == slice(0, 10)
    dist.agree("anything", 3)  # nothing to compare with


def test_sharded_loader_gives_each_rank_its_part_of_every_global_batch():
    x = np.arange(70, dtype=np.float32)[:, None]
    y = np.arange(70)
    whole = [yb for _, yb in DataLoader(x, y, 16, seed=4)]
    parts = [[yb for _, yb in DataLoader(x, y, 16, seed=4, rank=r, ranks=3)] for r in range(3)]
    for k, batch in enumerate(whole):
        assert np.array_equal(np.concatenate([p[k] for p in parts]), batch)
        assert max(len(p[k]) for p in parts) - min(len(p[k]) for p in parts) <= 1
    assert [len(b) for b in parts[0]][-1] == 2  # the last global batch of 6 shared as 2 + 2 + 2
    with pytest.raises(ValueError, match="a global batch of 2 cannot be shared by 3 ranks; use batch_size >= 3"):
        DataLoader(x, y, 2, rank=0, ranks=3)


STEPS = """
import sys, numpy as np
from tensorcomp import distributed as dist
from tensorcomp.train import fit
model, result = fit("lenet", epochs=1, batch_size=32, max_steps=6, progress=False, distributed=True, check_every=3)
params = np.concatenate([p.data.ravel() for p in model.parameters()])
if dist.is_main():
    np.save(sys.argv[1], params)
    print(result["ranks"])
"""


@needs_mpi
def test_two_ranks_train_like_one_process(tmp_path):
    script = tmp_path / "steps.py"
    script.write_text(STEPS)
    one = run([sys.executable, str(script), str(tmp_path / "one.npy")], tmp_path / "c1")
    assert one.returncode == 0, one.stderr
    two = run([MPIEXEC, "-n", "2", sys.executable, str(script), str(tmp_path / "two.npy")], tmp_path / "c2")
    assert two.returncode == 0, two.stderr
    assert one.stdout.split() == ["1"] and two.stdout.split() == ["2"]
    a, b = np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy")
    # the same samples per step, gradients summed in another order: equal to float32 rounding
    assert np.allclose(a, b, rtol=1e-4, atol=1e-5), np.abs(a - b).max()


@needs_mpi
def test_train_nproc_2_reports_ranks_once(tmp_path):
    out = run([sys.executable, "-m", "tensorcomp.cli", "train", "lenet", "--epochs", "1", "--nproc", "2", "--json",
               "--check-every", "20"], tmp_path, timeout=600, threads=None)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["ranks"] == 2 and result["steps"] == 63 and result["test_accuracy"] > 0.6
    assert result["reduced_bytes_per_step"] == 4 * 61706  # LeNet-5's parameters, float32


FAIL = """
import sys, time
from tensorcomp import distributed as dist
dist.init()
if dist.rank() == 1:
    raise ValueError("rank one gives up")
time.sleep(120)  # rank 0 would wait forever for rank 1
"""


@needs_mpi
def test_a_rank_that_raises_ends_the_job(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text(FAIL)
    t0 = time.perf_counter()
    out = run([MPIEXEC, "-n", "2", sys.executable, str(script)], tmp_path, timeout=100)
    assert out.returncode != 0 and time.perf_counter() - t0 < 60
    assert "tensorcomp.distributed: rank 1 of 2 failed, ending the job:" in out.stderr
    assert "ValueError: rank one gives up" in out.stderr


REDUCE = """
import numpy as np
from tensorcomp import distributed as dist, nn
dist.init()
layer = nn.Linear(3, 2)
for p in layer.parameters():
    p.grad = np.full(p.data.shape, dist.rank() + 1.0, np.float32)
assert dist.allreduce_gradients(layer, weight=0.5) == 4 * 8
assert all(np.all(p.grad == 1.5) for p in layer.parameters())
print("ok")
"""


@needs_mpi
def test_allreduce_gradients_sums_weighted_gradients_in_place(tmp_path):
    script = tmp_path / "reduce.py"
    script.write_text(REDUCE)
    out = run([MPIEXEC, "-n", "2", sys.executable, str(script)], tmp_path, timeout=100)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("ok") == 2  # (the ranks' lines may interleave)


DISAGREE = """
from tensorcomp import distributed as dist, nn
dist.init()
dist.broadcast_parameters(nn.Linear(4, 3 + dist.rank()))
"""


@needs_mpi
def test_ranks_with_different_models_fail_at_start(tmp_path):
    script = tmp_path / "disagree.py"
    script.write_text(DISAGREE)
    out = run([MPIEXEC, "-n", "2", sys.executable, str(script)], tmp_path, timeout=100)
    assert out.returncode != 0
    assert "tensorcomp.distributed: ranks disagree on the model's parameters (shapes, dtypes): rank 0 has " \
           "[((3, 4), '<f4'), ((3,), '<f4')], rank 1 has [((4, 4), '<f4'), ((4,), '<f4')]" in out.stderr


@needs_mpi
def test_two_ranks_tune_together_and_rank_0_alone_stores(tmp_path):
    out = run([MPIEXEC, "-n", "2", sys.executable, "-m", "tensorcomp.cli", "tune", "C[i, j] += A[i, k] * B[k, j]",
               "--shape", "A=96x64", "--shape", "B=64x80", "--budget", "6"], tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("best schedule:") == 1 and "on 2 ranks" in out.stdout
    listing = run([sys.executable, "-m", "tensorcomp.cli", "cache", "list"], tmp_path)
    assert "# 1 tuned entries" in listing.stdout
