"""The tuning database: sqlite under $TENSORCOMP_CACHE_DIR (default: the user's cache directory).

One row per (canonical op, shapes, dtypes, strides, target, CPU, schema version): the best schedule
(JSON records in canonical names), its time, and every measured trial. Several processes may tune
at once (sqlite's locking, a busy timeout, and "keep the faster" on write); a file that sqlite
cannot read is set aside with a warning and a new one is started.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
import warnings
from pathlib import Path

from ..errors import ArgumentError
from ..runtime import jit
from ..runtime import cuda
from ..runtime.objects import cache_dir
from ..schedule.records import Record, from_json, to_json
from . import canon

SCHEMA_VERSION = 2  # 2: statements are numbered after elementwise temporaries are folded (schedule.inline)


def db_path() -> Path:
    return cache_dir() / "tuning.sqlite"


def make_key(canonical: str, signature: tuple, target: str) -> str:
    text = json.dumps([SCHEMA_VERSION, canonical, repr(signature), target])
    return hashlib.sha256(text.encode()).hexdigest()


def _connect() -> sqlite3.Connection:
    path = db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(2):
        try:
            con = sqlite3.connect(path, timeout=30)
            con.execute("CREATE TABLE IF NOT EXISTS tuned (key TEXT PRIMARY KEY, op TEXT, signature TEXT, "
                        "target TEXT, schedule TEXT, best_s REAL, trials TEXT, created REAL, schema INTEGER)")
            con.execute("SELECT count(*) FROM tuned").fetchone()
            return con
        except sqlite3.DatabaseError as exc:
            if attempt:
                raise
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            warnings.warn(f"tensorcomp: tuning database {path} is unreadable ({exc}); moved it to {aside} and "
                          "started a new one", RuntimeWarning, stacklevel=3)
            try:
                os.replace(path, aside)
            except OSError:
                pass
    raise AssertionError


# results this process could not write to the database (an unwritable cache location): key -> row
_UNSTORED: dict[str, tuple[str, float, str]] = {}
_WARNED: set[str] = set()


def _row(key: str) -> tuple[str, float, str] | None:
    """(schedule JSON, best seconds, trials JSON) stored for ``key``, if any (None when unreadable)."""
    if key in _UNSTORED:
        return _UNSTORED[key]
    if not db_path().exists():
        return None
    try:
        con = _connect()
        try:
            return con.execute("SELECT schedule, best_s, trials FROM tuned WHERE key = ? AND schema = ?",
                               (key, SCHEMA_VERSION)).fetchone()
        finally:
            con.close()
    except (sqlite3.Error, OSError):
        return None


def lookup(key: str) -> tuple[str, float] | None:
    """(schedule JSON, best seconds) stored for ``key``, if any."""
    row = _row(key)
    return (row[0], row[1]) if row else None


def store(key: str, op: str, signature: tuple, target: str, schedule: str, best_s: float, trials: list) -> bool:
    """Insert, or replace when this result is faster than the stored one. Returns False when the
    database cannot be written (the cache location is missing, read-only or not a directory): the
    result is then kept for this process only, with one warning per location."""
    try:
        con = _connect()
        try:
            with con:
                row = con.execute("SELECT best_s FROM tuned WHERE key = ?", (key,)).fetchone()
                if row is None or best_s < row[0]:
                    con.execute("INSERT OR REPLACE INTO tuned VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                (key, op, repr(signature), target, schedule, best_s, json.dumps(trials), time.time(),
                                 SCHEMA_VERSION))
        finally:
            con.close()
        return True
    except (sqlite3.Error, OSError) as exc:
        old = _UNSTORED.get(key)
        if old is None or best_s < old[1]:
            _UNSTORED[key] = (schedule, best_s, json.dumps(trials))
        where = str(db_path())
        if where not in _WARNED:
            _WARNED.add(where)
            warnings.warn(f"tensorcomp: cannot write the tuning database {where} ({type(exc).__name__}: {exc}); "
                          f"tuned schedules are kept for this process only (set TENSORCOMP_CACHE_DIR to a "
                          f"writable directory)", RuntimeWarning, stacklevel=2)
        return False


def entries() -> list[dict]:
    con = _connect()
    try:
        rows = con.execute("SELECT key, op, signature, target, schedule, best_s, created FROM tuned").fetchall()
    finally:
        con.close()
    return [dict(zip(("key", "op", "signature", "target", "schedule", "best_s", "created"), r)) for r in rows]


def clear() -> int:
    con = _connect()
    try:
        with con:
            n = con.execute("DELETE FROM tuned").rowcount
    finally:
        con.close()
    return n


def export(path: str) -> int:
    """Write every entry (with its trials) to a JSON file; returns the count."""
    con = _connect()
    try:
        rows = con.execute("SELECT key, op, signature, target, schedule, best_s, trials, created, schema "
                           "FROM tuned").fetchall()
    finally:
        con.close()
    cols = ("key", "op", "signature", "target", "schedule", "best_s", "trials", "created", "schema")
    try:
        Path(path).write_text(json.dumps([dict(zip(cols, r)) for r in rows], indent=1))
    except OSError as exc:
        raise ArgumentError(f"cache export: cannot write {path} ({type(exc).__name__}: {exc.strerror or exc}); give "
                            f"a file path in a writable directory") from None
    return len(rows)


def import_(path: str) -> int:
    """Merge entries from a JSON export (a faster stored result wins); returns the count read. A
    missing or unreadable file, or an entry that is not one ``export`` writes (its schedule included),
    is an ArgumentError naming the file and the entry; nothing is imported then."""
    try:
        items = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ArgumentError(f"cache import: no file {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArgumentError(f"cache import: {path} is not a JSON export of the tuning database ({exc}); write one "
                            f"with 'tensorcomp cache export FILE'") from None
    columns = ("key", "op", "signature", "target", "schedule", "best_s", "trials", "created", "schema")
    if not isinstance(items, list):
        raise ArgumentError(f"cache import: {path} holds a {type(items).__name__}, not a list of entries")
    for k, it in enumerate(items):
        bad = None
        if not isinstance(it, dict) or any(c not in it for c in columns):
            bad = f"it lacks {', '.join(c for c in columns if not isinstance(it, dict) or c not in it)}"
        elif not isinstance(it["best_s"], (int, float)) or not it["best_s"] > 0:
            bad = f"best_s is {it['best_s']!r}"
        else:
            try:
                from_json(it["schedule"])
            except Exception as exc:  # any malformed schedule: report it, import nothing
                bad = f"its schedule does not parse ({type(exc).__name__}: {exc})"
        if bad:
            raise ArgumentError(f"cache import: entry {k} of {path} is not a tuning result: {bad}")
    con = _connect()
    try:
        with con:
            for it in items:
                row = con.execute("SELECT best_s FROM tuned WHERE key = ?", (it["key"],)).fetchone()
                if row is None or it["best_s"] < row[0]:
                    con.execute("INSERT OR REPLACE INTO tuned VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                tuple(it[c] for c in ("key", "op", "signature", "target", "schedule", "best_s",
                                                      "trials", "created", "schema")))
    finally:
        con.close()
    return len(items)


def signature(arrays: list, params: dict) -> tuple:
    """The part of a key the inputs make: shapes, strides, dtypes, and the parameters' types."""
    return (tuple((a.shape, a.strides, a.dtype.str) for a in arrays),
            tuple(sorted((k, type(v).__name__) for k, v in params.items())))


def target_key(target: str = "cpu") -> str:
    """What a tuned schedule is specific to: the CPU model and features, or the GPU and its driver."""
    if target == "cuda":
        return cuda.device_key()
    return "cpu " + jit.host_target()


def op_key(op, arrays: list, params: dict, target: str = "cpu") -> str:
    """The database key of ``op`` (its canonical form) on inputs like ``arrays`` for ``target`` (and
    precision: a TF32 op's best schedule is its own)."""
    precision = getattr(op, "precision", "fp32")
    return make_key(op.canonical(), signature(arrays, params),
                    target_key(target) + (f" {precision}" if precision != "fp32" else ""))


def stored_schedule(op, arrays: list, params: dict, target: str = "cpu") -> tuple[Record, ...] | None:
    """The tuned schedule for these inputs from the database, in the op's own names."""
    if target == "cuda":
        if not cuda.available():  # op.code(target="cuda") without a GPU: the default schedule
            return None
    hit = lookup(op_key(op, arrays, params, target))
    if hit is None:
        return None
    back = {v: k for k, v in canon.names_map(op.program).items()}
    return canon.rename_records(from_json(hit[0]), back)


def stored_result(op, arrays: list, params: dict, target: str = "cpu") -> tuple[tuple[Record, ...], float, list] | None:
    """(schedule in the op's names, best seconds, trials) stored for these inputs, or None."""
    row = _row(op_key(op, arrays, params, target))
    if row is None:
        return None
    back = {v: k for k, v in canon.names_map(op.program).items()}
    try:
        trials = json.loads(row[2])
    except ValueError:
        trials = []
    return canon.rename_records(from_json(row[0]), back), row[1], trials


def store_result(op, arrays: list, params: dict, target: str, best: tuple[Record, ...], best_s: float,
                 trials: list) -> bool:
    """Store a tuning result for ``op`` on these inputs (the records in canonical names); False when
    the database could not be written (see ``store``)."""
    m = canon.names_map(op.program)
    return store(op_key(op, arrays, params, target), op.canonical(), signature(arrays, params), target_key(target),
          to_json(canon.rename_records(best, m)), best_s, trials)
