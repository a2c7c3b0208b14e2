"""The on-disk cache under ``$TENSORCOMP_CACHE_DIR`` (default: the user's cache directory).

It holds the tuning database (``autotune.database``), and in ``objects/`` the kernels' object code
(one checksummed file per kernel, named by a hash of its IR and everything else its code depends on)
and the kernel manifests (``runtime.kernel``: what a new process needs to run a kernel it has run
before). ``TENSORCOMP_OBJECT_CACHE=0`` turns the object and manifest cache off.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

OBJECT_FORMAT = 1  # part of every object's key: bump when what an object file holds changes
MAX_OBJECT_BYTES = 512 << 20  # past this, the least recently used half of the objects is removed

_state: dict[str, str] = {}


def cache_dir() -> Path:
    env = os.environ.get("TENSORCOMP_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tensorcomp"


def objects_dir() -> Path | None:
    """The object-code cache directory, or None when the cache is off."""
    if os.environ.get("TENSORCOMP_OBJECT_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    return cache_dir() / "objects"


def hash_parts(parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def code_fingerprint() -> str:
    """Hash of this package's source: a kernel manifest made by other code is never used."""
    if "fingerprint" not in _state:
        root = Path(__file__).resolve().parent.parent
        files = sorted(root.rglob("*.py"))
        _state["fingerprint"] = hash_parts([str(f.relative_to(root)) + "\0" + f.read_text(errors="replace")
                                       for f in files])
    return _state["fingerprint"]  # type: ignore[return-value]


def _manifest_sum(key: str, body: str) -> str:
    """The checksum a manifest is stored with: of its key and its text, so a manifest edited, damaged
    or moved to another kernel's key is never trusted (a wrong output shape would be a wild write)."""
    return hashlib.sha256(f"{key}\0{body}".encode()).hexdigest()


def read_manifest(key: str, kind: str = "kernel") -> dict | None:
    """The manifest stored under ``key``: what a new process needs to run a kernel compiled before
    (its object code's key, stages, output and temporary shapes) without binding, scheduling,
    lowering or generating IR again. None when there is none or it cannot be read; one whose checksum
    does not match is removed (the kernel is then built again and a new manifest written)."""
    directory = objects_dir()
    if directory is None:
        return None
    path = directory / f"{key}.{kind}.json"
    try:
        stored = json.loads(path.read_text())
        if stored["sum"] == _manifest_sum(key, stored["manifest"]):
            return json.loads(stored["manifest"])
    except (OSError, ValueError, KeyError, TypeError):
        if not path.exists():
            return None
    try:
        path.unlink()
    except OSError:
        pass
    return None


def write_manifest(key: str, manifest: dict, kind: str = "kernel") -> None:
    """Store ``manifest`` under ``key`` with its checksum (atomically; a cache that cannot be written
    is skipped). ``kind`` names what it describes ("kernel"; "layouts": a compiled step's measured
    layout choices)."""
    directory = objects_dir()
    if directory is None:
        return
    path = directory / f"{key}.{kind}.json"
    body = json.dumps(manifest)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"sum": _manifest_sum(key, body), "manifest": body}))
        os.replace(tmp, path)
    except OSError:
        pass


def read_object(path) -> bytes | None:
    """The object in ``path`` if it is whole (its first 32 bytes are the SHA-256 of the rest); a
    damaged file is removed."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) > 32 and hashlib.sha256(data[32:]).digest() == data[:32]:
        try:
            os.utime(path)  # recently used: kept when the directory is trimmed
        except OSError:
            pass
        return data[32:]
    try:
        path.unlink()
    except OSError:
        pass
    return None


def write_object(directory, path, obj: bytes) -> None:
    """Write ``obj`` atomically (several processes may write the same kernel); trim the directory
    when it has grown past ``MAX_OBJECT_BYTES``. A cache that cannot be written is skipped."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(hashlib.sha256(obj).digest() + obj)
        os.replace(tmp, path)
        files = [(f.stat(), f) for f in directory.glob("*.o")]
        if sum(st.st_size for st, _ in files) > MAX_OBJECT_BYTES:
            for _, f in sorted(files, key=lambda t: t[0].st_mtime)[:len(files) // 2]:
                f.unlink(missing_ok=True)
    except OSError:
        pass


def cached_objects() -> list:
    """The object-code cache's files (none when the cache is off or empty)."""
    directory = objects_dir()
    return sorted(directory.glob("*.o")) if directory is not None and directory.is_dir() else []


def clear_objects() -> int:
    """Remove the object-code cache's files (and the kernel manifests and stored steps, which name
    kernels); returns how many objects were removed."""
    files = cached_objects()
    for f in files:
        f.unlink(missing_ok=True)
    directory = objects_dir()
    if directory is not None and directory.is_dir():
        for pattern in ("*.kernel.json", "*.step"):
            for f in directory.glob(pattern):
                f.unlink(missing_ok=True)
    return len(files)
