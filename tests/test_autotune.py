"""The tuner and its database (small ops and few trials: correctness, not speed)."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

import tensorcomp as tc
from tensorcomp.autotune import database, search, space
from tensorcomp.autotune.database import stored_schedule
from tensorcomp.autotune import canon
from tensorcomp.autotune.canon import canonical_source, rename_records
from tensorcomp.cli import main
from tensorcomp.schedule.default import layout_candidates

rng = np.random.default_rng(5)
CAPS = "O[n, y, x, co, p, r] += I[n, 2*y + ky, 2*x + kx, ci, p, q] * W[ky, kx, ci, co, q, r]"


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORCOMP_CACHE_DIR", str(tmp_path))
    return tmp_path


def caps_inputs():
    return (rng.standard_normal((2, 9, 9, 4, 2, 4)).astype(np.float32),
            rng.standard_normal((3, 3, 4, 8, 4, 4)).astype(np.float32))


def test_tune_verifies_stores_and_is_used_by_later_calls(cache):
    I, W = caps_inputs()
    op = tc.op(CAPS)
    ref = op(I, W)
    result = tc.tune(op, I, W, trials=4, progress=False)
    assert len(result.trials) == 5 and all("seconds" in t or "skipped" in t for t in result.trials)
    assert result.best_s <= result.default_s
    assert "tried 5 schedules" in result.summary()
    np.testing.assert_allclose(op(I, W), ref, rtol=1e-4, atol=1e-4)
    # a renamed op is the same canonical op: it finds the stored schedule, in its own names
    renamed = tc.op(CAPS.replace("W[", "K[").replace("ci", "c").replace("O[", "Out["))
    assert canonical_source(renamed.program) == canonical_source(op.program)
    found = stored_schedule(renamed, [I, W], {})
    rename = {n: n for n in ("I", "n", "y", "x", "co", "p", "r", "ky", "kx", "q")}
    rename.update(W="K", O="Out", ci="c")
    assert found == rename_records(result.schedule, rename)
    np.testing.assert_allclose(renamed(I, W), ref, rtol=1e-4, atol=1e-4)


def test_the_fastest_candidates_and_the_default_are_timed_again_before_one_wins(cache):
    I, W = caps_inputs()
    op = tc.op(CAPS)
    result = tc.tune(op, I, W, trials=6, progress=False)
    finals = {t["schedule"]: t["final_seconds"] for t in result.trials if "final_seconds" in t}
    timed = sorted(t["seconds"] for t in result.trials if "seconds" in t)
    assert "[]" in finals and 2 <= len(finals) <= 4
    # a finalist's final time is the best of all its timings, never above its first one
    assert all(t["final_seconds"] <= t["seconds"] for t in result.trials if "final_seconds" in t)
    assert result.best_s == min(finals.values()) and result.default_s == finals["[]"]
    assert tc.autotune.search.to_json(result.schedule) in finals
    assert min(finals.values()) <= timed[0]


def test_a_new_process_uses_the_database(cache):
    I, W = caps_inputs()
    op = tc.op(CAPS)
    result = tc.tune(op, I, W, trials=6, progress=False)
    code = (
        "import numpy as np, tensorcomp as tc\n"
        "from tensorcomp.autotune.database import stored_schedule\n"
        f"rng = np.random.default_rng(0)\n"
        f"I = rng.standard_normal({I.shape}).astype(np.float32)\n"
        f"W = rng.standard_normal({W.shape}).astype(np.float32)\n"
        f"op = tc.op({CAPS!r})\n"
        "print(repr(stored_schedule(op, [I, W], {})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, TENSORCOMP_CACHE_DIR=str(cache)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == repr(result.schedule)


def test_corrupt_database_is_set_aside(cache):
    (cache / "tuning.sqlite").write_bytes(b"this is not a database" * 100)
    op = tc.op("C[i, j] += A[i, k] * B[k, j]")
    a = rng.standard_normal((8, 8)).astype(np.float32)
    with pytest.warns(RuntimeWarning, match="is unreadable"):
        tc.tune(op, a, a, trials=1, progress=False)
    assert list(cache.glob("tuning.sqlite.corrupt-*"))
    assert len(database.entries()) == 1


def test_slower_results_do_not_replace_faster_ones(cache):
    database.store("k", "op", (), "cpu", "[]", 1.0, [])
    database.store("k", "op", (), "cpu", '[{"kind": "Layout", "perm": [1, 0], "tensor": "T0"}]', 2.0, [])
    assert database.lookup("k") == ("[]", 1.0)
    database.store("k", "op", (), "cpu", "[]", 0.5, [])
    assert database.lookup("k")[1] == 0.5


def test_cache_cli(cache, capsys, tmp_path):
    op = tc.op("C[i, j] += A[i, k] * B[k, j]")
    a = rng.standard_normal((8, 8)).astype(np.float32)
    tc.tune(op, a, a, trials=1, progress=False)
    assert main(["cache", "list"]) == 0
    assert "T0[x0, x1] += T1[x0, x2] * T2[x2, x1]" in capsys.readouterr().out
    assert main(["cache", "export", str(tmp_path / "db.json")]) == 0
    assert main(["cache", "clear"]) == 0
    assert "removed 1 entries" in capsys.readouterr().out
    assert main(["cache", "import", str(tmp_path / "db.json")]) == 0
    assert len(database.entries()) == 1


def test_tune_cli(cache, capsys):
    assert main(["tune", "C[i, j] += A[i, k] * B[k, j]", "--shape", "A=16x8", "--shape", "B=8x16",
                 "--trials", "2", "--budget", "20"]) == 0
    assert "best schedule" in capsys.readouterr().out


def test_tune_rejects_ops_with_schedules(cache):
    from tensorcomp.schedule import Split
    a = np.ones((4, 4))
    with pytest.raises(tc.ArgumentError, match="pass the op without schedule="):
        tc.tune(tc.op("O[i, j] = A[i, j]", schedule=(Split(0, "i", 2),)), a)
    with pytest.raises(tc.ArgumentError, match="tc.tune expects an op made by tc.op or tc.grad, got str"):
        tc.tune("O[i] = A[i]", a)


def test_derived_gradient_ops_are_tuned_and_keep_their_domains(cache):
    I, W = caps_inputs()
    op = tc.op(CAPS)
    g = tc.grad(op, "W")
    dO = rng.standard_normal(op(I, W).shape).astype(np.float32)
    ref = g(I, W, dO)
    result = tc.tune(g, I, W, dO, trials=4, progress=False)
    assert len(result.trials) == 5
    np.testing.assert_allclose(g(I, W, dO), ref, rtol=1e-4, atol=1e-4)
    # the key includes the forward op: same derived statements over other domains must not share it
    assert "# derived:" in g.canonical() and g.canonical().startswith(op.canonical())
    again = tc.grad(tc.op(CAPS), "W")
    assert stored_schedule(again, [I, W, dO], {}) == result.schedule



def test_a_gradient_ops_unused_input_is_neither_relaid_nor_lost_in_the_database(cache):
    # dB of a matmul takes B but never reads it; B's 1 KB rows would otherwise be padded (a copy per
    # call), and a record naming B had no canonical name to be stored under
    op = tc.op("C[i, j] += A[i, k] * B[k, j]")
    g = tc.grad(op, "B")
    A, B, dC = (rng.standard_normal((256, 256)).astype(np.float32) for _ in range(3))
    result = tc.tune(g, A, B, dC, trials=2, progress=False)
    assert all(getattr(r, "tensor", None) != "B" for t in result.trials for r in
               tc.autotune.search.from_json(t["schedule"]))
    assert stored_schedule(tc.grad(tc.op("C[i, j] += A[i, k] * B[k, j]"), "B"), [A, B, dC], {}) == result.schedule
    np.testing.assert_allclose(g(A, B, dC), A.T @ dC, rtol=1e-3, atol=1e-3)

def test_profile_times_op_calls_and_tune_hot_tunes_the_slowest_first(cache):
    from tensorcomp.autotune.hot import hottest, profile, tune_hot
    a = rng.standard_normal((256, 256)).astype(np.float32)
    b = rng.standard_normal((256, 256)).astype(np.float32)
    mm, add = tc.op("C[i, j] += A[i, k] * B[k, j]"), tc.op("C[i] = A[i] + B[i]")
    x = rng.standard_normal(8).astype(np.float32)
    mm(a, b), add(x, x)  # compiled outside the profile
    with profile() as prof:
        for _ in range(3):
            out = mm(a, b)
        add(x, x)
    rows = hottest(prof)
    assert [r[1] for r in rows] == [mm, add]  # slowest first
    assert rows[0][0] > 0 and np.array_equal(rows[0][2][0], a) and rows[0][2][0] is not a  # inputs copied
    assert tc.op("C[i] = A[i] + B[i]")(x, x) is not None and len(prof) == 2  # nothing recorded afterwards
    done = tune_hot(prof, budget_s=4)
    assert done[0]["op"] == mm.label and done[0]["tuned_ms"] <= done[0]["default_ms"]
    assert all(d["op"] != add.label for d in done)  # under 2% of the time: left alone
    assert stored_schedule(mm, [a, b], {}) is not None
    np.testing.assert_allclose(mm(a, b), out, rtol=1e-4, atol=1e-4)


def test_train_tunes_the_kernels_of_its_second_step(cache):
    from tensorcomp.train import train
    result = train("lenet", epochs=1, max_steps=6, progress=False, tune_s=6)
    assert result["tuned_ops"] >= 1 and result["tune_s"] > 0
    assert len(database.entries()) >= result["tuned_ops"]
    # the first step traces and compiles kernels; the second is the profiled one (run op by op),
    # neither compiling nor timed; tuning compiles the tuned schedules itself; the third traces again
    # and compiles the program. Its native call is built there too where every kernel's parallel
    # stages are known, else at the next step, which then counts as compiling: a tuned kernel no step
    # ran yet decides its stages at its first run, and which kernels the tuner keeps depends on timings
    assert result["compiling_steps"] in (2, 3) and result["steps"] == 6


def test_background_tuning_starts_only_when_enough_training_is_left(cache, monkeypatch):
    """A run whose steps left would end before the worker's kernels came back does not start it."""
    from tensorcomp import train as training
    short = training.train("lenet", epochs=1, max_steps=12, progress=False, tune_s=60, background=True)
    assert short["tuning"] == "skipped" and short["tuned_ops"] == 0 and short["steps"] == 12
    monkeypatch.setattr(training, "BACKGROUND_MIN_S", 0.0)
    started = training.train("lenet", epochs=1, max_steps=12, progress=False, tune_s=60, background=True)
    assert started["tuning"] == "background" and started["steps"] == 12


def test_with_budget_left_after_every_candidate_tiles_are_tried_with_other_reduction_blocks(cache):
    op = tc.op("C[i, j] += A[i, k] * B[k, j]")
    a = rng.standard_normal((8, 2048)).astype(np.float32)
    b = rng.standard_normal((2048, 16)).astype(np.float32)
    result = tc.tune(op, a, b, budget_s=60, progress=False)
    assert result.tuning_s < 50  # it ran out of candidates, not of time
    bound = tc.compiler.plan(op, [tc.ArraySpec.of(x) for x in (a, b)], {}, {}, upto="fold_elementwise").bound
    layouts = [c for _, c in layout_candidates(op.inputs, bound, [a, b]) if c]
    first = {search.to_json(c) for c in space.tile_candidates(op, bound, [a, b], layouts)}
    extra = {search.to_json(c) for c in space.tile_candidates(op, bound, [a, b], layouts,
                                                              chunks=space.EXTRA_CHUNKS)} - first
    logged = {t["schedule"] for t in result.trials}
    assert extra and extra <= logged
    np.testing.assert_allclose(op(a, b), a @ b, rtol=1e-3, atol=1e-3)


def test_candidates_compile_in_worker_processes_before_they_are_timed(cache, monkeypatch):
    from tensorcomp.autotune.precompile import Precompiler
    from tensorcomp.schedule import Reorder, Split
    monkeypatch.setenv("TENSORCOMP_NUM_THREADS", "2")
    op = tc.op("C[i, j] += A[i, k] * B[k, j]")
    a, b = rng.standard_normal((40, 30)), rng.standard_normal((30, 20))
    cands = [(Split(0, "i", 4), Reorder(0, ("i_o", "j", "k", "i_i"))), (Reorder(0, ("j", "i", "k")),)]
    pre = Precompiler(op, [a, b], {})
    assert len(pre.workers) == 2
    pre.ready(cands, deadline=float("inf"))
    assert len(list((cache / "objects").glob("*.kernel.json"))) == 2
    monkeypatch.setattr(tc.compiler, "run", lambda *args, **kwargs: pytest.fail("planned in the tuning process"))
    for cand in cands:  # loaded from what the workers compiled
        trial = op.with_schedule(cand, use_tuned=False)
        np.testing.assert_allclose(trial(a, b), a @ b, rtol=1e-12, atol=1e-12)
    # an op the workers cannot make alike (here: told to make another one): the tuner compiles alone
    other = tc.op("C[i, j] += A[i, k] * B[k, j]")
    monkeypatch.setattr(other, "recipe", lambda: ["op", "C[i, j] += 2.0 * A[i, k] * B[k, j]", {}, {}, {}, "[]", True])
    pre = Precompiler(other, [a, b], {})
    pre.ready([(Reorder(0, ("i", "k", "j")),)], deadline=float("inf"))
    assert pre.checked and pre.workers == []
    # a gradient op: the workers make it as tc.grad of its base op (Op.recipe)
    g = tc.grad(op, "A")
    assert g.recipe() == ["grad", ["op", "C[i, j] += A[i, k] * B[k, j]", {}, {}, {}, "[]", True], "A"]
    d = rng.standard_normal((40, 20))
    cands = [(Reorder(0, ("k", "i", "j")),), (Split(0, "i", 4), Reorder(0, ("i_o", "k", "j", "i_i")))]
    pre = Precompiler(g, [a, b, d], {})
    pre.ready(cands, deadline=float("inf"))
    assert pre.workers  # what they compiled is what this process looks up
    for cand in cands:
        trial = g.with_schedule(cand, use_tuned=False)
        np.testing.assert_allclose(trial(a, b, d), d @ b.T, rtol=1e-12, atol=1e-12)


def test_tuning_from_a_script_without_a_main_guard_runs_the_script_once(tmp_path):
    script = tmp_path / "tune_me.py"
    script.write_text("import numpy as np, tensorcomp as tc\nprint('script ran', flush=True)\n"
                      "a = np.ones((64, 64), np.float32)\n"
                      "tc.tune(tc.op('C[i, j] += A[i, k] * B[k, j]'), a, a, budget_s=3, progress=False)\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, TENSORCOMP_CACHE_DIR=str(tmp_path), TENSORCOMP_NUM_THREADS="2"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("script ran") == 1
    assert list(tmp_path.glob("objects/*.kernel.json"))  # the workers compiled candidates


def test_the_search_ends_when_its_best_is_near_the_machine_ceiling(cache, monkeypatch):
    monkeypatch.setattr(search, "gemm_ceiling", lambda dtype, again=False: 1e-3)  # any kernel is near it
    op = tc.op("C[i, j] += A[i, k] * B[k, j]")
    a = rng.standard_normal((64, 64)).astype(np.float32)
    result = tc.tune(op, a, a, budget_s=30, progress=False)
    assert len(result.trials) == 1 and result.tuning_s < 15  # the default alone: it already "reaches" it
    assert result.stopped.startswith("the best, ") and result.stopped.endswith(
        " of this machine's gemm (0.0 GFLOP/s)")
    assert "stopped early: the best, " in result.summary()
    monkeypatch.undo()
    assert search.gemm_ceiling("float32") > 1.0 and search.gemm_ceiling("int32") is None


def test_a_stored_result_is_not_tuned_again_unless_asked(cache):
    op = tc.op("C[i, j] += A[i, k] * B[k, j]")
    a = rng.standard_normal((48, 40)).astype(np.float32)
    b = rng.standard_normal((40, 56)).astype(np.float32)
    first = tc.tune(op, a, b, budget_s=4, progress=False)
    assert not first.stored
    again = tc.tune(tc.op("Z[x, y] += X[x, z] * Y[z, y]"), a, b, budget_s=60, progress=False)  # renamed: same entry
    assert again.stored and again.tuning_s < 2 and len(again.trials) == len(first.trials)
    assert again.summary().startswith("stored result, not searched again (retune=True / --retune searches again)")
    assert not tc.tune(op, a, b, budget_s=3, progress=False, retune=True).stored


def test_background_tuning_swaps_tuned_kernels_in_and_never_repeats(cache):
    from tensorcomp.autotune.background import BackgroundTuner
    from tensorcomp.autotune.hot import profile
    op = tc.op("C[i, j] += A[i, k] * B[k, j]")
    a = rng.standard_normal((64, 96)).astype(np.float32)
    b = rng.standard_normal((48, 96)).astype(np.float32).T  # a transposed view: tuned for its own strides
    with profile() as prof:
        op(a, b)
    tuner = BackgroundTuner.start(prof, budget_s=4)
    deadline = time.time() + 240
    ready = []
    while tuner.running and time.time() < deadline:
        ready += tuner.poll()
        time.sleep(0.2)
    ready += tuner.poll()
    tuner.stop()
    assert ready == [op] and "tuning_s" in tuner.done[0]
    assert stored_schedule(op, [a, b], {}) is not None
    np.testing.assert_allclose(op(a, b), a @ b, rtol=1e-4, atol=1e-4)
    with profile() as prof:
        op(a, b)
    again = BackgroundTuner.start(prof, budget_s=4)
    again.proc.wait(timeout=120)
    again.poll()
    assert again.done[0].get("stored") and again.done[0]["op"] == op.label


def test_tuned_schedules_of_ops_with_indices_named_i_and_o_rename_exactly(cache):
    """Loop names made by records (``i_o``, ``o_i``) are renamed by replaying the records, so an index
    named ``i`` or ``o`` is not taken for a split's suffix (nn.Linear's op uses both)."""
    from tensorcomp.schedule import Fuse, Reorder, Split
    op = tc.op("C[i, j] += A[i, k] * B[k, j]")
    m = canon.names_map(op.program)
    back = {v: k for k, v in m.items()}
    records = (Split(0, "i", 4), Split(0, "i_i", 2), Reorder(0, ("i_o", "j", "k", "i_i_o", "i_i_i")))
    assert rename_records(records, m) == (Split(0, "x0", 4), Split(0, "x0_i", 2),
                                          Reorder(0, ("x0_o", "x1", "x2", "x0_i_o", "x0_i_i")))
    assert rename_records(rename_records(records, m), back) == records
    lin = tc.op("Y[n, o] += X[n, i] * W[o, i]")
    m = canon.names_map(lin.program)
    fused = (Split(0, "o", 4), Fuse(0, "o_i", "i"), Reorder(0, ("n", "o_o", "o_i_i")))
    there = rename_records(fused, m)
    assert rename_records(there, {v: k for k, v in m.items()}) == fused
    a = rng.standard_normal((24, 20)).astype(np.float32)
    b = rng.standard_normal((20, 32)).astype(np.float32)
    tc.tune(op, a, b, budget_s=4, progress=False)
    for source in ("C[a, b] += A[a, c] * B[c, b]", "C[j, i] += A[j, k] * B[k, i]"):
        renamed = tc.op(source)
        np.testing.assert_allclose(renamed(a, b), a @ b, rtol=1e-4, atol=1e-4)
        assert renamed.schedule_for(a, b)[:len(stored_schedule(renamed, [a, b], {}))] == \
            stored_schedule(renamed, [a, b], {})


@pytest.mark.parametrize("k, row", enumerate(['not json', '[{"kind": "Nope", "stmt": 0}]', 'null',
                                              '[{"kind": "Split", "stmt": 0, "index": "x0", "factor": 0}]']))
def test_a_damaged_database_row_falls_back_to_the_default_with_a_warning(cache, k, row):
    op = tc.op("C[i, j] += A[i, k] * B[k, j]")
    a = rng.standard_normal((8 + k, 6)).astype(np.float32)  # (a signature of its own: no kernel from before)
    b = rng.standard_normal((6, 5)).astype(np.float32)
    key = database.op_key(op, [a, b], {})
    database.store(key, op.canonical(), database.signature([a, b], {}), database.target_key(), row, 1e-3, [])
    with pytest.warns(RuntimeWarning, match=r"the tuned schedule stored for these inputs cannot be used .*; running "
                                            r"the default schedule \(tensorcomp cache clear removes stored schedules\)"):
        out = tc.op("C[i, j] += A[i, k] * B[k, j]")(a, b)
    np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)
