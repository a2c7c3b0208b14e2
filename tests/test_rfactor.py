"""Rfactor: reductions cut into pieces reduced into copies (run on threads), then combined."""

import numpy as np
import pytest

import tensorcomp as tc
from tensorcomp.autotune import canon
from tensorcomp.errors import ScheduleError
from tensorcomp.schedule import Reorder, Rfactor, Split, from_json, to_json
from tensorcomp.schedule.rfactor import default_rfactor


def _kernel_bound(op, specs, kinds):
    """The bound op its kernels run (after elementwise folding)."""
    from tensorcomp import compiler
    return compiler.plan(op, specs, kinds, {}, upto="fold_elementwise").bound

rng = np.random.default_rng(7)


def test_dot_product_in_uneven_pieces_matches_float64():
    a, b = rng.standard_normal(1000), rng.standard_normal(1000)
    dot = tc.op("s += A[i] * B[i]", schedule=(Rfactor(0, "i", 3),))
    text = str(dot.loopnest(a, b))
    # 1000 values in pieces of 334: the last piece is shorter (334 + 334 + 332)
    assert "for i_o in range(0, 3):  # parallel" in text
    assert "s_rf0[i_o] += A[i_i + 334*i_o] * B[i_i + 334*i_o]" in text
    assert "s += s_rf0[i_o]" in text
    np.testing.assert_allclose(dot(a, b), np.dot(a, b), rtol=1e-12)


@pytest.mark.parametrize("reduce, ref", [("max", np.max), ("min", np.min)])
def test_max_and_min_combine_with_their_own_reduction(reduce, ref):
    x = rng.standard_normal((3, 50, 7)).astype(np.float32)
    op = tc.op(f"m[a] = {reduce}(X[a, i, j])", schedule=(Rfactor(0, "i", 4),))
    assert f"m[a] = {reduce}(m[a], m_rf0[i_o, a])" in str(op.loopnest(x))
    np.testing.assert_array_equal(op(x), ref(x, axis=(1, 2)))


def test_strided_reduction_index_keeps_every_read_in_bounds():
    # k's pieces are 0..1 and 2: the preimage of the domain drops k = 3 (k_o = 1, k_i = 1)
    x, w = rng.standard_normal(21), rng.standard_normal(3)
    op = tc.op("O[y] += I[2*y + k] * W[k]", schedule=(Rfactor(0, "k", 2),))
    want = np.array([sum(x[2 * y + k] * w[k] for k in range(3)) for y in range(10)])
    np.testing.assert_allclose(op(x, w), want, rtol=1e-12)


def test_integer_sum_is_exact():
    x = rng.integers(-1000, 1000, size=(2, 999), dtype=np.int64)
    op = tc.op("s[a] += X[a, i]", schedule=(Rfactor(0, "i", 5),))
    np.testing.assert_array_equal(op(x), x.sum(axis=1))


def test_other_records_keep_naming_their_statements():
    a, b = rng.standard_normal((6, 40)), rng.standard_normal(5)
    source = "T[i] += A[i, k]\nO[i, j] = T[i] * B[j]"
    op = tc.op(source, schedule=(Rfactor(0, "k", 2), Split(0, "k_i", 4), Reorder(1, ("j", "i"))))
    text = str(op.loopnest(a, b))
    assert "for k_i_o in range(0, 5):" in text  # the Split on statement 0's piece loop
    assert text.index("for j in range(0, 5)") < text.index("O[i, j] = T[i] * B[j]")  # statement 1 reordered
    assert text.index("for j in range(0, 5)") > text.index("T[i] += T_rf0[k_o, i]")
    np.testing.assert_allclose(op(a, b), a.sum(axis=1)[:, None] * b[None, :], rtol=1e-12)


def test_records_round_trip_through_json_and_canonical_names():
    rec = (Rfactor(0, "k", 4), Split(0, "k_i", 8))
    assert from_json(to_json(rec)) == rec
    op = tc.op("C[i, j] += A[i, k] * B[k, j]")
    m = canon.names_map(op.program)
    assert canon.rename_records(rec, m) == (Rfactor(0, "x2", 4), Split(0, "x2_i", 8))


@pytest.mark.parametrize("source, record, message", [
    ("O[i] = A[i] * 2.0", Rfactor(0, "i", 2),
     "Rfactor: statement 0 (O[i] = A[i] * 2.0) does not reduce; only a statement that combines several values "
     "into each element (+=, max(...), ...) can be factored"),
    ("O[i] += A[i, k]", Rfactor(0, "i", 2),
     "Rfactor: statement 0 (O[i] += A[i, k]): 'i' is written by it (it indexes O); its reduction indices are: k"),
    ("O[i] += A[i, k]", Rfactor(0, "j", 2),
     "Rfactor: statement 0 (O[i] += A[i, k]): it has no index 'j'; its reduction indices are: k"),
    ("O[i] += A[i, k]", Rfactor(0, "k", 9),
     "Rfactor: statement 0 cannot cut 'k' (5 values) into 9 parts; use at most 5"),
])
def test_illegal_rfactor_says_what_it_would_break(source, record, message):
    op = tc.op(source, schedule=(record,))
    with pytest.raises(ScheduleError) as e:
        op(np.ones((4, 5)) if "k" in source else np.ones(4))
    assert str(e.value) == f"op '{source}': {message}"


def test_rfactor_parts_and_repeats_are_checked():
    with pytest.raises(ScheduleError) as e:
        tc.op("O[i] += A[i, k]", schedule=(Rfactor(0, "k", 1),))
    assert str(e.value) == ("op 'O[i] += A[i, k]': Rfactor parts must be an integer >= 2 (the pieces the reduction "
                            "over 'k' is cut into), got 1")
    op = tc.op("O[i] += A[i, k]", schedule=(Rfactor(0, "k", 2), Rfactor(0, "k", 3)))
    with pytest.raises(ScheduleError) as e:
        op(np.ones((4, 5)))
    assert str(e.value) == ("op 'O[i] += A[i, k]': Rfactor: statement 0 is factored twice (Rfactor(stmt=0, "
                            "index='k', parts=2) and Rfactor(stmt=0, index='k', parts=3)); a statement's reduction "
                            "can be cut along one index")


def test_default_factors_only_reductions_with_nothing_else_parallel():
    big = np.ones(1 << 20, np.float32)
    dot = tc.op("s += A[i] * B[i]")
    assert default_rfactor(dot.bind(big, big), 2) == (Rfactor(0, "i", 2),)
    assert default_rfactor(dot.bind(big, big), 1) == ()  # one thread: nothing to gain
    assert default_rfactor(dot.bind(big[:1000], big[:1000]), 2) == ()  # too small to repay the threads
    mv = tc.op("y[a] += X[a, k] * v[k]")
    assert default_rfactor(mv.bind((1, 1 << 20), (1 << 20,)), 4) == (Rfactor(0, "k", 4),)
    assert default_rfactor(mv.bind((8, 1 << 20), (1 << 20,)), 4) == ()  # 'a' runs on the threads already
    mm = tc.op("C[i, j] += A[i, k] * B[k, j]")
    assert default_rfactor(mm.bind((256, 256), (256, 256)), 2) == ()
    scheduled = (Split(0, "i", 4),)  # a statement the schedule already orders is left alone
    assert default_rfactor(dot.bind(big, big), 2, scheduled) == scheduled


def test_default_schedule_runs_a_big_dot_product_in_pieces(monkeypatch):
    monkeypatch.setenv("TENSORCOMP_NUM_THREADS", "2")
    a, b = rng.standard_normal(1 << 19), rng.standard_normal(1 << 19)
    dot = tc.op("s += A[i] * B[i]")
    assert "s_rf0[i_o]" in str(dot.loopnest(a, b))
    np.testing.assert_allclose(dot(a, b), np.dot(a, b), rtol=1e-10)


def test_the_tuner_tries_each_reduction_index_in_more_and_fewer_pieces():
    from tensorcomp.compiler import ArraySpec
    from tensorcomp.schedule.rfactor import rfactor_variants
    op = tc.op("s[a] += X[a, i, j]")
    bound = _kernel_bound(op, [ArraySpec.of((2, 512, 1024))], {})
    variants = rfactor_variants(bound, 2, (Rfactor(0, "j", 8),))
    assert {(v[-1].index, v[-1].parts) for v in variants} == {
        ("i", 2), ("i", 4), ("i", 8), ("i", 16), ("j", 2), ("j", 4), ("j", 16)}
    assert all(len(v) == 1 for v in variants)  # the base's own Rfactor replaced
    # many written elements (a matrix product's): nothing to factor; one thread: nothing either
    mm = tc.op("C[i, j] += A[i, k] * B[k, j]")
    assert rfactor_variants(_kernel_bound(mm, [ArraySpec.of((256, 256))] * 2, {}), 2, ()) == []
    assert rfactor_variants(bound, 1, ()) == []


def test_tuning_a_dot_product_times_other_pieces_and_keeps_a_verified_one(tmp_path, monkeypatch):
    from tensorcomp.target import num_threads
    monkeypatch.setenv("TENSORCOMP_CACHE_DIR", str(tmp_path))
    if num_threads() < 2:
        pytest.skip("one thread: nothing to factor")
    a = rng.standard_normal(1 << 20).astype(np.float32)
    op = tc.op("s += A[i] * B[i]")
    result = tc.tune(op, a, a, budget_s=10, progress=False)
    tried = [from_json(t["schedule"]) for t in result.trials if "seconds" in t]
    assert any(s and isinstance(s[-1], Rfactor) and s[-1].parts == num_threads() for s in tried)
    np.testing.assert_allclose(op(a, a), np.dot(a.astype(np.float64), a), rtol=1e-4)
