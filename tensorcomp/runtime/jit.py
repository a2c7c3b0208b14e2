"""JIT-compile LLVM IR for the host CPU and hand back callable kernels.

One MCJIT engine per process holds every kernel's module. Compilation runs
LLVM's -O3 pipeline for the host CPU's name and features (AVX2/AVX-512 when
present), so the loop vectorizer targets the machine it runs on.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from typing import Callable

import llvmlite.binding as llvm

_lock = threading.Lock()
_state: dict[str, object] = {}


def _init() -> tuple[llvm.TargetMachine, llvm.ExecutionEngine]:
    if "engine" not in _state:
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        target = llvm.Target.from_default_triple()
        tm = target.create_target_machine(cpu=llvm.get_host_cpu_name(),
                                          features=llvm.get_host_cpu_features().flatten(),
                                          opt=3, jit=True, codemodel="jitdefault")
        backing = llvm.parse_assembly("")
        _state["tm"] = tm
        _state["engine"] = llvm.create_mcjit_compiler(backing, tm)
        _state["compiled"] = 0
    return _state["tm"], _state["engine"]  # type: ignore[return-value]


def host_target() -> str:
    """The CPU the kernels are compiled for, e.g. 'x86_64 znver4 +avx2,+avx512f,...'."""
    llvm.initialize_native_target()
    feats = sorted(k for k, v in llvm.get_host_cpu_features().items() if v and k.startswith(("avx", "fma", "sse")))
    return f"{llvm.get_default_triple()} {llvm.get_host_cpu_name()} {','.join(feats)}"


def _veclib() -> dict[str, str]:
    """``llvm.<fn>.v<N>f<bits>`` -> glibc's libmvec function for it, for the vector widths this CPU
    runs (none when libmvec cannot be loaded). LLVM vectorizes ``exp`` and friends as intrinsics on
    vectors and then, with no vector math library, calls the scalar function once per lane."""
    if "veclib" in _state:
        return _state["veclib"]  # type: ignore[return-value]
    import ctypes.util
    names: dict[str, str] = {}
    try:
        llvm.load_library_permanently(ctypes.util.find_library("mvec") or "libmvec.so.1")
    except RuntimeError:
        _state["veclib"] = names
        return names
    feats = {k for k, v in llvm.get_host_cpu_features().items() if v}
    isa = {128: "b", 256: "d" if "avx2" in feats else "c" if "avx" in feats else None,
           512: "e" if "avx512f" in feats else None}
    for fn in ("exp", "log", "sin", "cos"):
        for bits, suffix in ((32, "f"), (64, "")):
            for width, letter in isa.items():
                lanes = width // bits
                name = f"_ZGV{letter}N{lanes}v_{fn}{suffix}"
                if letter is not None and llvm.address_of_symbol(name):
                    names[f"llvm.{fn}.v{lanes}f{bits}"] = name
    _state["veclib"] = names
    return names


def _use_veclib(mod: llvm.ModuleRef) -> llvm.ModuleRef:
    """The module with its vector math intrinsics calling libmvec (see ``_veclib``)."""
    table = _veclib()
    used = [f.name for f in mod.functions if f.name in table]
    if not used:
        return mod
    text = str(mod)
    for name in used:
        text = text.replace(f"@{name}(", f"@{table[name]}(")
    out = llvm.parse_assembly(text)
    out.verify()
    return out


def optimize(ir_text: str) -> llvm.ModuleRef:
    """Parse, verify and run the -O3 pipeline on a module (vector math calls go to libmvec)."""
    tm, _ = _init()
    mod = llvm.parse_assembly(ir_text)
    mod.triple = tm.triple
    mod.data_layout = str(tm.target_data)
    mod.verify()
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pto.loop_unrolling = True
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    return _use_veclib(mod)


def _array_data_offset() -> int | None:
    """Byte offset of the data pointer inside a NumPy array object, checked on live arrays."""
    import numpy as np
    probes = [np.empty(n, dtype) for n, dtype in ((3, np.float32), (7, np.int64), (0, np.float64))]
    for offset in range(8, 80, 8):
        if all(ctypes.c_void_p.from_address(id(a) + offset).value == a.ctypes.data for a in probes):
            return offset
    return None


ARRAY_DATA_OFFSET = _array_data_offset()


@dataclass
class Compiled:
    """A JIT-compiled kernel.

    ``fn`` takes data pointers (ints) and the scalar parameters; ``pyfn``, when
    present, takes the NumPy arrays themselves (see ``ARRAY_DATA_OFFSET``).
    Both release the GIL while the kernel runs.
    """

    name: str
    address: int
    fn: Callable
    pyfn: Callable | None
    stages: list[Callable]  # stage j: (buffers..., lo, hi, params...) runs slice [lo, hi) of nest j


def compile_kernel(ir_text: str, name: str, nbuffers: int, param_types: list, nstages: int = 0) -> Compiled:
    """Compile kernel ``name`` (and its ``{name}_py`` entry, if the IR has one) from LLVM IR text."""
    with _lock:
        _, engine = _init()
        mod = optimize(ir_text)
        engine.add_module(mod)
        engine.finalize_object()
        address = engine.get_function_address(name)
        py_address = engine.get_function_address(f"{name}_py")  # 0 when the IR has no Python entry
        stage_addresses = [engine.get_function_address(f"{name}_stage{j}") for j in range(nstages)]
        _state["compiled"] = int(_state["compiled"]) + 1  # type: ignore[arg-type]
    fn = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * nbuffers + param_types))(address)
    pyfn = ctypes.CFUNCTYPE(None, *([ctypes.py_object] * nbuffers + param_types))(py_address) \
        if py_address else None
    staged = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * nbuffers + [ctypes.c_int64] * 2 + param_types))
    return Compiled(name, address, fn, pyfn, [staged(a) for a in stage_addresses])


def compile_count() -> int:
    """How many kernels this process has compiled, CPU and GPU (to check that caching works)."""
    from . import cuda
    return int(_state.get("compiled", 0)) + cuda.modules_loaded()  # type: ignore[arg-type]
