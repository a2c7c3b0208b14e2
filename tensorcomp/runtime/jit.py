"""JIT-compile LLVM IR for the host CPU and hand back callable kernels.

One MCJIT engine per process holds every kernel's object code. Compilation runs
LLVM's -O3 pipeline for the host CPU's name and features (AVX2/AVX-512 when
present), so the loop vectorizer targets the machine it runs on. The vectorizer is told to prefer
no gathers and scatters (``_features``): with AVX-512 it otherwise reads strided windows (a 2x2
max pool's ``X[2*y + k]``) with ``vgather`` instructions, which were 2-3x slower here than the
shuffled wide loads it uses instead; ``TENSORCOMP_GATHERS=1`` lets it choose them again.

Object code is cached on disk under ``$TENSORCOMP_CACHE_DIR/objects`` (next to the
tuning database), one file per kernel named by a hash of its IR and of everything
else its code depends on (LLVM version, target CPU and features, vector math
library): a new process loads a kernel it has compiled before instead of running
LLVM again. ``TENSORCOMP_OBJECT_CACHE=0`` turns the cache off.
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass
from typing import Callable

import llvmlite.binding as llvm

from ..errors import TensorcompError
from . import cuda, objects

_lock = threading.Lock()
_state: dict[str, object] = {}


def _init() -> tuple[llvm.TargetMachine, llvm.ExecutionEngine]:
    if "engine" not in _state:
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        target = llvm.Target.from_default_triple()
        tm = target.create_target_machine(cpu=llvm.get_host_cpu_name(), features=_features(),
                                          opt=3, jit=True, codemodel="jitdefault")
        backing = llvm.parse_assembly("")
        _state["tm"] = tm
        _state["engine"] = llvm.create_mcjit_compiler(backing, tm)
        _state["compiled"] = 0
    return _state["tm"], _state["engine"]  # type: ignore[return-value]


def _features() -> str:
    """The host CPU's features for LLVM, plus the preference for shuffled loads over gathers (see
    the module docstring) unless ``TENSORCOMP_GATHERS`` is set to 1."""
    feats = _host_features().flatten()
    if os.environ.get("TENSORCOMP_GATHERS", "0").strip() in ("1", "true", "yes", "on"):
        return feats
    return ",".join(f for f in (feats, "+prefer-no-gather", "+prefer-no-scatter") if f)


def _host_features():
    """LLVM's feature map of the host CPU (asked once per process: every kernel and cache key reads it)."""
    if "features" not in _state:
        llvm.initialize_native_target()
        _state["features"] = llvm.get_host_cpu_features()
    return _state["features"]


def host_target() -> str:
    """The CPU the kernels are compiled for, e.g. 'x86_64 znver4 +avx2,+avx512f,...'."""
    if "host" not in _state:
        feats = sorted(k for k, v in _host_features().items() if v and k.startswith(("avx", "fma", "sse")))
        _state["host"] = f"{llvm.get_default_triple()} {llvm.get_host_cpu_name()} {','.join(feats)}"
    return _state["host"]


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
    feats = {k for k, v in _host_features().items() if v}
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


def _parsed(ir_text: str) -> llvm.ModuleRef:
    tm, _ = _init()
    mod = llvm.parse_assembly(ir_text)
    mod.triple = tm.triple
    mod.data_layout = str(tm.target_data)
    mod.verify()
    return mod


def optimize(ir_text: str) -> llvm.ModuleRef:
    """Parse, verify and run the -O3 pipeline on a module (vector math calls go to libmvec)."""
    tm, _ = _init()
    mod = _parsed(ir_text)
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




def _environment() -> tuple[str, ...]:
    """Everything besides its IR that a kernel's object code depends on."""
    tm, _ = _init()
    import llvmlite
    return (str(objects.OBJECT_FORMAT), llvmlite.__version__, str(llvm.llvm_version_info), tm.triple,
            llvm.get_host_cpu_name(), _features(), repr(sorted(_veclib().items())))


def _object_key(ir_text: str) -> str:
    """Hash of a kernel's IR and of all else its object code depends on."""
    return objects.hash_parts((*_environment(), ir_text))


def manifest_key(parts) -> str | None:
    """Key of a kernel manifest (see ``read_manifest``) for an op and call signature described by
    ``parts`` (strings), or None when the cache is off."""
    if objects.objects_dir() is None:
        return None
    return objects.hash_parts((*_environment(), objects.code_fingerprint(), *parts))


def _object_code(ir_text: str, key: str, optimized: bool = True) -> bytes:
    """Object code for ``ir_text``: from the cache, or optimized (unless told not to) and emitted (and
    cached)."""
    directory = objects.objects_dir()
    path = directory / f"{key}.o" if directory is not None else None
    obj = objects.read_object(path) if path is not None else None
    if obj is None:
        tm, _ = _init()
        obj = tm.emit_object(optimize(ir_text) if optimized else _parsed(ir_text))
        _state["llvm"] = int(_state.get("llvm", 0)) + 1  # type: ignore[arg-type]
        if path is not None:
            objects.write_object(directory, path, obj)
    else:
        _state["loaded"] = int(_state.get("loaded", 0)) + 1  # type: ignore[arg-type]
    return obj


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
    stages: list[Callable]  # stage j: (its buffers..., lo, hi, params...) runs slice [lo, hi) of nest j


def compile_kernel(ir_text: str, name: str, nbuffers: int, param_types: list,
                   stage_buffers: tuple[int, ...] = ()) -> Compiled:
    """Compile kernel ``name`` (and its ``{name}_py`` and ``{name}_stage{j}`` entries, if the IR has
    them) from LLVM IR text. Every symbol of the IR starting with ``name`` is renamed after a hash of
    the IR: equal kernels share one copy in the process, and the object-code cache's key does not
    depend on the name. ``stage_buffers``: how many buffers each stage entry takes."""
    key = _object_key(ir_text)
    final = f"tc_{key}"

    def code() -> bytes:
        text = ir_text.replace(f'@"{name}', f'@"{final}').replace(f"@{name}", f"@{final}")
        return _object_code(text, key)
    compiled = _link(key, code, name, nbuffers, param_types, stage_buffers)
    assert compiled is not None
    return compiled


def load_compiled(key: str, nbuffers: int, param_types: list, stage_buffers: tuple[int, ...]) -> Compiled | None:
    """The kernel whose object code is cached under ``key`` (``Compiled.name`` is ``tc_<key>``), or None
    when it is not (any more) in the cache."""
    def code() -> bytes | None:
        directory = objects.objects_dir()
        obj = objects.read_object(directory / f"{key}.o") if directory is not None else None
        if obj is not None:
            _state["loaded"] = int(_state.get("loaded", 0)) + 1  # type: ignore[arg-type]
        return obj
    return _link(key, code, f"tc_{key}", nbuffers, param_types, stage_buffers)


def _link(key: str, code: Callable, name: str, nbuffers: int, param_types: list,
          stage_buffers: tuple[int, ...]) -> Compiled | None:
    """Add the object code ``code()`` gives (None: give up) for kernel ``tc_<key>`` to the engine unless
    it is there already, and wrap its entries."""
    final = f"tc_{key}"
    nstages = len(stage_buffers)
    with _lock:
        _, engine = _init()
        loaded: dict = _state.setdefault("symbols", {})  # type: ignore[assignment]
        if final not in loaded:
            obj = code()
            if obj is None:
                return None
            engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
            engine.finalize_object()
            loaded[final] = (engine.get_function_address(final),
                             engine.get_function_address(f"{final}_py"),  # 0 when the IR has no Python entry
                             [engine.get_function_address(f"{final}_stage{j}") for j in range(nstages)])
        address, py_address, stage_addresses = loaded[final]
        if not address or not all(stage_addresses):
            raise TensorcompError(f"kernel {name}: its object code has no entry '{name}' or stages "
                                  f"0..{nstages - 1}; hint: this is a bug in code generation, please report it")
        name = final
        _state["compiled"] = int(_state["compiled"]) + 1  # type: ignore[arg-type]
    fn = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * nbuffers + param_types))(address)
    pyfn = ctypes.CFUNCTYPE(None, *([ctypes.py_object] * nbuffers + param_types))(py_address) \
        if py_address else None
    staged = [ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * n + [ctypes.c_int64] * 2 + param_types))(a)
              for n, a in zip(stage_buffers, stage_addresses)]
    return Compiled(name, address, fn, pyfn, staged)


def compile_module(ir_text: str, names: tuple[str, ...], cached: bool = True, optimized: bool = True) -> dict[str, int]:
    """Compile a runtime module (not a kernel: its symbols keep their names, so each is compiled once
    per process) and return the addresses of its functions ``names``. ``cached=False``: code that
    holds this process's addresses, never written to the object-code cache; ``optimized=False``: no
    -O3 pipeline (straight-line calls gain nothing from it)."""
    with _lock:
        tm, engine = _init()
        loaded: dict = _state.setdefault("modules", {})
        if names[0] not in loaded:
            key = _object_key(ir_text + ("" if optimized else "\n; not optimized"))
            obj = _object_code(ir_text, key, optimized) if cached else \
                tm.emit_object(optimize(ir_text) if optimized else _parsed(ir_text))
            engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
            engine.finalize_object()
            for name in names:
                loaded[name] = engine.get_function_address(name)
            _state["compiled"] = int(_state["compiled"]) + 1  # type: ignore[arg-type]
        if not all(loaded.get(name) for name in names):
            raise TensorcompError(f"runtime module: no function among {names}; hint: this is a bug, please report it")
        return {name: loaded[name] for name in names}


def object_counts() -> dict[str, int]:
    """Kernels this process ran LLVM for (``llvm``) and loaded from the object-code cache instead
    (``loaded``); kernels equal to one already loaded take neither."""
    return {"llvm": int(_state.get("llvm", 0)), "loaded": int(_state.get("loaded", 0))}  # type: ignore[arg-type]


def compile_count() -> int:
    """How many kernels (and runtime modules: a native step, its copy loops) this process has built, CPU
    and GPU, whether LLVM compiled their code or it came from the object-code cache (to check that an
    op's kernel cache works; a training step that built one counts as compiling)."""
    return int(_state.get("compiled", 0)) + cuda.modules_loaded()  # type: ignore[arg-type]
