"""Native worker threads that take a parallel stage's slices without the interpreter.

Handing a stage to Python threads (``concurrent.futures``) and waiting costs ~40-60 us here: the
operating system wakes a sleeping thread, and each side takes the interpreter's lock. Here the
workers wait in native code instead: a worker thread enters ``tc_pool_work`` once (through ctypes,
which releases the interpreter's lock) and spins on the pool's *ticket*; a stage posted while it
spins starts on it within a microsecond or so, the way OpenMP runtimes hand out parallel regions.
After ``SPIN_NS`` without a job it sleeps on a futex (Linux) and the next job's caller wakes it:
the core is free between steps, and the caller of a job never waits for a worker to wake — it takes
slices itself, so a job posted to sleeping workers starts on its own thread. Where there is no
futex, a worker that has spun long enough returns to Python and waits on an event that ``poke``
sets before each job.

The protocol (all in ``_ir``): the ticket is one 64-bit word, ``job number << 40 | slices << 20 |
next slice``. The caller stores the job (a trampoline, the stage's entry, its buffers, scalars and
range), zeroes ``finished`` and publishes a new ticket; every thread (caller included) claims the
next slice with a compare-and-swap of the ticket, runs it and adds one to ``finished``; the caller
returns when ``finished`` reaches the slice count. A slice's job cannot change under the thread that
claimed it (the next job is posted only after every slice finished), and the job number makes each
ticket unique. A worker about to sleep counts itself a sleeper and then looks at the ticket once
more; a caller publishes the ticket and then reads the sleeper count (both sequentially
consistent), so either the worker sees the job or the caller sees the sleeper and wakes it. A
trampoline (``trampoline``, one per entry signature) calls an entry of any signature from the
uniform ``(entry, buffers, lo, hi, scalars)``.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
import time
from typing import Sequence

import numpy as np

from . import jit

# A worker spins this long after its last slice before it sleeps: long enough to span the serial
# stages between a step's parallel ones, short enough to leave the core to others between steps
# (the background tuner runs at idle priority, which a spinning thread starves).
SPIN_NS = 200_000
MAX_SLICES = (1 << 20) - 1
FUTEX = {"x86_64": 202, "aarch64": 98}  # the futex system call's number (Linux)
FUTEX_WAIT_PRIVATE, FUTEX_WAKE_PRIVATE = 128, 129

# Pool words (int64, each group on its own cache line): 0 ticket; 8 finished; 16 workers in native
# code; 24.. the job: trampoline, entry, buffers, lo, hi, scalars; 32 quit; 40 sleeping workers;
# 48 the wake word (32 bits: the futex's).
TICKET, FINISHED, ACTIVE, JOB, QUIT, SLEEPERS, SEQ, WORDS = 0, 8, 16, 24, 32, 40, 48, 56


def _pause() -> str:
    return "call void @llvm.x86.sse2.pause()" if platform.machine() in ("x86_64", "AMD64") else ""


def _ir() -> str:
    pause = _pause()
    declare = "declare void @llvm.x86.sse2.pause()" if pause else ""
    futex = FUTEX.get(platform.machine()) if platform.system() == "Linux" else None
    if futex is None:  # no futex here: a worker that has spun long enough returns to Python and its event
        sleep = f"""  %slp = getelementptr i64, ptr %pool, i64 {SLEEPERS}
  br label %out"""
        wake = ""
    else:  # count itself a sleeper, look for work once more, then wait until the wake word changes
        sleep = f"""  %slp = getelementptr i64, ptr %pool, i64 {SLEEPERS}
  %seqp = getelementptr i64, ptr %pool, i64 {SEQ}
  %seq = load atomic i32, ptr %seqp seq_cst, align 8
  %sl0 = atomicrmw add ptr %slp, i64 1 seq_cst
  %tk = load atomic i64, ptr %pool seq_cst, align 8
  %tnext = and i64 %tk, 1048575
  %tk20 = lshr i64 %tk, 20
  %tn = and i64 %tk20, 1048575
  %posted = icmp ult i64 %tnext, %tn
  %q2 = load atomic i64, ptr %qp seq_cst, align 8
  %quit2 = icmp ne i64 %q2, 0
  %awake = or i1 %posted, %quit2
  br i1 %awake, label %unsleep, label %block
block:
  %seq64 = zext i32 %seq to i64
  %w = call i64 (i64, ...) @syscall(i64 {futex}, ptr %seqp, i64 {FUTEX_WAIT_PRIVATE}, i64 %seq64, ptr null)
  br label %unsleep"""
        wake = f"""  %seqp = getelementptr i64, ptr %pool, i64 {SEQ}
  %old = atomicrmw add ptr %seqp, i32 1 seq_cst
  %w = call i64 (i64, ...) @syscall(i64 {futex}, ptr %seqp, i64 {FUTEX_WAKE_PRIVATE}, i64 2147483647)"""
    return f"""
{declare}
declare i64 @syscall(i64, ...)
declare i32 @sched_yield()
declare i32 @clock_gettime(i32, ptr)

define internal i64 @now() {{
  %ts = alloca [2 x i64], align 8
  %r = call i32 @clock_gettime(i32 1, ptr %ts)
  %s = load i64, ptr %ts
  %p = getelementptr [2 x i64], ptr %ts, i64 0, i64 1
  %ns = load i64, ptr %p
  %m = mul i64 %s, 1000000000
  %t = add i64 %m, %ns
  ret i64 %t
}}

; claim and run slices of the job whose ticket is posted; returns how many this thread ran
define internal i64 @take(ptr %pool) {{
entry:
  br label %loop
loop:
  %ran = phi i64 [0, %entry], [%ran1, %done], [%ran, %claim]
  %t = load atomic i64, ptr %pool acquire, align 8
  %next = and i64 %t, 1048575
  %t20 = lshr i64 %t, 20
  %n = and i64 %t20, 1048575
  %has = icmp ult i64 %next, %n
  br i1 %has, label %claim, label %out
claim:
  %t1 = add i64 %t, 1
  %cas = cmpxchg ptr %pool, i64 %t, i64 %t1 acq_rel acquire
  %ok = extractvalue {{ i64, i1 }} %cas, 1
  br i1 %ok, label %run, label %loop
run:
  %jp = getelementptr i64, ptr %pool, i64 {JOB}
  %tramp = load ptr, ptr %jp
  %fp = getelementptr i64, ptr %pool, i64 {JOB + 1}
  %fn = load ptr, ptr %fp
  %bp = getelementptr i64, ptr %pool, i64 {JOB + 2}
  %bufs = load ptr, ptr %bp
  %lp = getelementptr i64, ptr %pool, i64 {JOB + 3}
  %lo = load i64, ptr %lp
  %hp = getelementptr i64, ptr %pool, i64 {JOB + 4}
  %hi = load i64, ptr %hp
  %sp = getelementptr i64, ptr %pool, i64 {JOB + 5}
  %scalars = load ptr, ptr %sp
  %span = sub i64 %hi, %lo
  %a0 = mul i64 %span, %next
  %a1 = udiv i64 %a0, %n
  %a = add i64 %lo, %a1
  %next1 = add i64 %next, 1
  %b0 = mul i64 %span, %next1
  %b1 = udiv i64 %b0, %n
  %b = add i64 %lo, %b1
  call void %tramp(ptr %fn, ptr %bufs, i64 %a, i64 %b, ptr %scalars)
  %fin = getelementptr i64, ptr %pool, i64 {FINISHED}
  %old = atomicrmw add ptr %fin, i64 1 release
  br label %done
done:
  %ran1 = add i64 %ran, 1
  br label %loop
out:
  ret i64 %ran
}}

; a worker: take slices while jobs come; after spin_ns without one, sleep on the futex (where there
; is one; else return to Python), or return when told to quit
define i64 @tc_pool_work(ptr %pool, i64 %spin_ns) {{
entry:
  %act = getelementptr i64, ptr %pool, i64 {ACTIVE}
  %a0 = atomicrmw add ptr %act, i64 1 seq_cst
  %start = call i64 @now()
  br label %loop
loop:
  %last = phi i64 [%start, %entry], [%t2, %worked], [%last, %spin], [%last, %idle], [%t4, %unsleep]
  %spins = phi i64 [0, %entry], [0, %worked], [%spins1, %spin], [%spins1, %idle], [0, %unsleep]
  %qp = getelementptr i64, ptr %pool, i64 {QUIT}
  %q = load atomic i64, ptr %qp monotonic, align 8
  %quit = icmp ne i64 %q, 0
  br i1 %quit, label %out, label %try
try:
  %ran = call i64 @take(ptr %pool)
  %any = icmp ne i64 %ran, 0
  br i1 %any, label %worked, label %wait
worked:
  %t2 = call i64 @now()
  br label %loop
wait:
  {pause}
  %spins1 = add i64 %spins, 1
  %m = and i64 %spins1, 255
  %check = icmp eq i64 %m, 0
  br i1 %check, label %idle, label %spin
spin:
  br label %loop
idle:
  %y = call i32 @sched_yield()
  %t3 = call i64 @now()
  %d = sub i64 %t3, %last
  %long = icmp sgt i64 %d, %spin_ns
  br i1 %long, label %sleep, label %loop
sleep:
{sleep}
unsleep:
  %sl1 = atomicrmw sub ptr %slp, i64 1 seq_cst
  %t4 = call i64 @now()
  br label %loop
out:
  %a1 = atomicrmw sub ptr %act, i64 1 seq_cst
  ret i64 0
}}

; wake every sleeping worker (a job was posted, or quit was set)
define void @tc_pool_wake(ptr %pool) {{
{wake}
  ret void
}}

define i64 @tc_now() {{
  %t = call i64 @now()
  ret i64 %t
}}

define void @tc_pool_nothing(i64 %lo, i64 %hi) {{
  ret void
}}

; the caller: post a job of n slices, take slices too, return when all have finished
define void @tc_pool_run(ptr %pool, ptr %tramp, ptr %fn, ptr %bufs, i64 %lo, i64 %hi, ptr %scalars, i64 %n) {{
entry:
  %jp = getelementptr i64, ptr %pool, i64 {JOB}
  store ptr %tramp, ptr %jp
  %fp = getelementptr i64, ptr %pool, i64 {JOB + 1}
  store ptr %fn, ptr %fp
  %bp = getelementptr i64, ptr %pool, i64 {JOB + 2}
  store ptr %bufs, ptr %bp
  %lp = getelementptr i64, ptr %pool, i64 {JOB + 3}
  store i64 %lo, ptr %lp
  %hp = getelementptr i64, ptr %pool, i64 {JOB + 4}
  store i64 %hi, ptr %hp
  %sp = getelementptr i64, ptr %pool, i64 {JOB + 5}
  store ptr %scalars, ptr %sp
  %fin = getelementptr i64, ptr %pool, i64 {FINISHED}
  store atomic i64 0, ptr %fin monotonic, align 8
  %t = load atomic i64, ptr %pool monotonic, align 8
  %job = lshr i64 %t, 40
  %job1 = add i64 %job, 1
  %job2 = and i64 %job1, 16777215
  %hiword = shl i64 %job2, 40
  %nword = shl i64 %n, 20
  %ticket = or i64 %hiword, %nword
  store atomic i64 %ticket, ptr %pool seq_cst, align 8
  %slp = getelementptr i64, ptr %pool, i64 {SLEEPERS}
  %sleepers = load atomic i64, ptr %slp seq_cst, align 8
  %asleep = icmp ne i64 %sleepers, 0
  br i1 %asleep, label %wake, label %work
wake:
  call void @tc_pool_wake(ptr %pool)
  br label %work
work:
  %ran = call i64 @take(ptr %pool)
  br label %wait
wait:
  %spins = phi i64 [0, %work], [%spins1, %again], [%spins1, %yield]
  %f = load atomic i64, ptr %fin acquire, align 8
  %all = icmp eq i64 %f, %n
  %spins1 = add i64 %spins, 1
  br i1 %all, label %out, label %again
again:
  {pause}
  %m = and i64 %spins1, 1023
  %check = icmp eq i64 %m, 0
  br i1 %check, label %yield, label %wait
yield:
  %y = call i32 @sched_yield()
  br label %wait
out:
  ret void
}}
"""


_lock = threading.Lock()
_state: dict = {}


def _functions() -> dict[str, int]:
    if "functions" not in _state:
        names = ("tc_pool_work", "tc_pool_run", "tc_pool_nothing", "tc_pool_wake", "tc_now")
        _state["functions"] = jit.compile_module(_ir(), names)
    return _state["functions"]


def clock_address() -> int:
    """Address of ``i64 tc_now()``: the monotonic clock in nanoseconds (for timing native code)."""
    return _functions()["tc_now"]


def trampoline(buffers: int, scalar_types: Sequence[type]) -> int:
    """Address of ``void (entry, i64 *buffers, i64 lo, i64 hi, i64 *scalars)`` calling an entry that
    takes ``buffers`` pointers, ``lo``, ``hi`` and scalars of ``scalar_types`` (ctypes c_int64 or
    c_double; each read from one 64-bit word)."""
    kinds = "".join("d" if t is ctypes.c_double else "i" for t in scalar_types)
    key = (buffers, kinds)
    table = _state.setdefault("trampolines", {})
    if key not in table:
        lines, args = [], []
        for k in range(buffers):
            lines.append(f"  %bp{k} = getelementptr ptr, ptr %bufs, i64 {k}\n  %b{k} = load ptr, ptr %bp{k}")
            args.append(f"ptr %b{k}")
        args += ["i64 %lo", "i64 %hi"]
        for k, c in enumerate(kinds):
            ty = "double" if c == "d" else "i64"
            lines.append(f"  %sp{k} = getelementptr i64, ptr %scalars, i64 {k}\n  %s{k} = load {ty}, ptr %sp{k}")
            args.append(f"{ty} %s{k}")
        types = ", ".join(a.split()[0] for a in args)
        name = f"tc_trampoline_{buffers}_{kinds or 'none'}"
        text = (f"define void @{name}(ptr %fn, ptr %bufs, i64 %lo, i64 %hi, ptr %scalars) {{\n"
                + "\n".join(lines) + f"\n  call void %fn({', '.join(args)})\n  ret void\n}}\n")
        assert types  # (lo, hi at least)
        table[key] = jit.compile_module(text, (name,))[name]
    return table[key]


class Pool:
    """``workers`` native worker threads (the caller of a job is one more)."""

    def __init__(self, workers: int) -> None:
        fns = _functions()
        self.workers = workers
        self._words = np.zeros(WORDS + 8, np.int64)  # (+8: room to align to a cache line)
        start = (-self._words.ctypes.data % 64) // 8
        self.words = self._words[start:start + WORDS]
        self.address = self.words.ctypes.data
        self._work = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64)(fns["tc_pool_work"])
        self.run_job = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                                        ctypes.c_int64)(fns["tc_pool_run"])
        self.run_address = fns["tc_pool_run"]
        # one caller at a time posts jobs (the ticket has one job); a second thread finds it held
        self.lock = threading.Lock()
        self._events = [threading.Event() for _ in range(workers)]
        self._threads = [threading.Thread(target=self._worker, args=(e,), daemon=True,
                                          name=f"tensorcomp-{k}") for k, e in enumerate(self._events)]
        for t in self._threads:
            t.start()

    def _worker(self, event: threading.Event) -> None:
        while True:
            event.wait()
            event.clear()
            if self.words[QUIT]:
                return
            self._work(self.address, SPIN_NS)

    def poke(self) -> None:
        """Wake the workers that sleep (they spin for the next jobs until idle again)."""
        if self.words[ACTIVE] < self.workers:
            for e in self._events:
                e.set()

    def run(self, entry: int, tramp: int, buffers: np.ndarray, lo: int, hi: int, scalars: np.ndarray,
            slices: int) -> None:
        """Run ``entry`` (through its trampoline ``tramp``) over ``[lo, hi)`` in ``slices`` slices,
        taken by the workers and the calling thread (which holds ``lock``)."""
        self.poke()
        self.run_job(self.address, tramp, entry, buffers.ctypes.data, lo, hi, scalars.ctypes.data,
                     min(slices, MAX_SLICES))

    def hand_off_seconds(self) -> float:
        """What a job of empty slices costs the caller with the workers awake (median of 20)."""
        fns = _functions()
        tramp, empty = trampoline(0, ()), np.zeros(1, np.int64)
        self.poke()
        for _ in range(2000):  # (wait for the workers to be in native code, a millisecond at most)
            if self.words[ACTIVE] >= self.workers:
                break
            time.sleep(1e-5)
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            with self.lock:
                self.run_job(self.address, tramp, fns["tc_pool_nothing"], empty.ctypes.data, 0, self.workers + 1,
                             empty.ctypes.data, self.workers + 1)
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]

    def close(self) -> None:
        self.words[QUIT] = 1
        ctypes.CFUNCTYPE(None, ctypes.c_void_p)(_functions()["tc_pool_wake"])(self.address)
        for e in self._events:
            e.set()


def get(workers: int) -> Pool:
    """The process's pool with at least ``workers`` workers (a child process after a fork makes its own)."""
    with _lock:
        pool = _state.get("pool")
        if pool is None or pool.workers < workers or _state.get("pid") != os.getpid():
            if pool is not None and _state.get("pid") == os.getpid():
                pool.close()
            pool = _state["pool"] = Pool(workers)
            _state["pid"] = os.getpid()
        return pool


def scalar_words(values: Sequence) -> np.ndarray:
    """Scalars as 64-bit words (floats by their bits, as the trampolines read them)."""
    out = np.empty(len(values), np.int64)
    for k, v in enumerate(values):
        out[k] = np.float64(v).view(np.int64) if isinstance(v, float) else v
    return out


_entries: dict = {}  # id of a ctypes entry -> (the entry, kept so the id stays its own; address; trampoline)


def native(fn) -> tuple[int, int] | None:
    """(address, trampoline) of a stage entry compiled here (a ctypes function), else None."""
    found = _entries.get(id(fn))
    if found is None:
        if not isinstance(fn, ctypes._CFuncPtr):  # noqa: SLF001 - the base class of ctypes functions
            return None
        types = type(fn)._argtypes_  # noqa: SLF001
        pointers = sum(1 for t in types if t is ctypes.c_void_p)
        found = _entries[id(fn)] = (fn, ctypes.cast(fn, ctypes.c_void_p).value,
                                    trampoline(pointers, types[pointers + 2:]))
    return found[1:]


def run_stage(pool: Pool, fn, buffers: list[int], scalars: Sequence, lo: int, hi: int, slices: int) -> bool:
    """Run stage entry ``fn`` over ``[lo, hi)`` in ``slices`` slices on ``pool``; False (and nothing run)
    when ``fn`` is not native code or another thread is using the pool."""
    found = native(fn)
    if found is None or not pool.lock.acquire(blocking=False):
        return False
    try:
        pool.run(found[0], found[1], np.array(buffers, np.int64), lo, hi, scalar_words(scalars), slices)
    finally:
        pool.lock.release()
    return True
