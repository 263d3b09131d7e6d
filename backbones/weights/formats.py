"""Reading weight files without running code (torch zip/legacy, arrays-only pickles,
safetensors), and atomic writes."""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

# Legacy (non-zip) torch.save files start with this pickled number (torch.serialization).
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class WeightsFormatError(ValueError):
    """A weights file that cannot be read or whose format is unknown; names the file."""


class UnsafeWeightsError(WeightsFormatError):
    """A weights file that needs code beyond tensors, arrays and containers to be unpickled."""


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays and scalars, and containers; anything else is refused."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            # Protocol 5 pickles rebuild arrays from their bytes with _frombuffer.
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("collections", "OrderedDict"),
            # Python 3 writes bytes for Python 2 readers as _codecs.encode(str, "latin1").
            ("_codecs", "encode"),
        }
    )

    def __init__(self, file: io.BufferedIOBase, path: str) -> None:
        super().__init__(file, encoding="latin1")  # Detectron's pickles come from Python 2
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise UnsafeWeightsError(
            f"{self._path}: refusing to unpickle '{module}.{name}': a weights pickle needs only "
            "numpy arrays and containers, and unpickling anything else can run code. If you "
            "trust this file, load it with trusted=True (BACKBONES.TRUST_WEIGHTS_FILE True, or "
            "--trusted in tools/convert_weights.py)."
        )


def _numpy_safe_globals() -> list[Any]:
    from numpy import dtypes

    multiarray = getattr(np, "_core", None) or np.core
    found = [multiarray.multiarray._reconstruct, multiarray.multiarray.scalar, np.ndarray]
    return found + [np.dtype] + [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]


def _torch_load(f: Any, path: str, trusted: bool) -> Any:
    if trusted:
        return torch.load(f, map_location="cpu", weights_only=False)
    try:
        # Detectron2 and older tools store numpy arrays in .pth files: admit those, nothing else.
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        match = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"'{match.group(1)}'" if match else "objects other than tensors"
        raise UnsafeWeightsError(
            f"{path}: refusing to load {what} with torch.load(weights_only=True): loading it "
            "could run code. If you trust this file, load it with trusted=True "
            "(BACKBONES.TRUST_WEIGHTS_FILE True, or --trusted in tools/convert_weights.py)."
        ) from None


def read_file(
    path: str | os.PathLike, *, trusted: bool = False, progress: Callable | None = None
) -> Any:
    """The object stored in a weights file, read without executing code unless ``trusted``.

    torch files (zip or legacy) go through ``torch.load(weights_only=True)`` with numpy arrays
    admitted; plain pickles through an unpickler that admits only numpy arrays, scalars and
    containers; ``.safetensors`` through safetensors.

    Args:
        path: a local file.
        trusted: allow arbitrary pickled objects (runs code from the file: trusted files only).
        progress: optional ``file -> seekable binary file`` applied to the open file, e.g. one
            that reads it into memory behind a progress bar.

    Raises:
        FileNotFoundError: no such file.
        UnsafeWeightsError: the file needs other objects and ``trusted`` is False.
        WeightsFormatError: truncated, empty, or not a weights file.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Weights file not found: {path}")
    if os.path.getsize(path) == 0:
        raise WeightsFormatError(f"{path}: the file is empty")
    with open(path, "rb") as raw:
        head = raw.read(16)
    if path.endswith(".safetensors") or (len(head) > 9 and head[8:10] == b'{"'):
        return _read_safetensors(path)
    try:
        with open(path, "rb") as raw:
            f = progress(raw) if progress else raw
            if zipfile.is_zipfile(f):
                f.seek(0)
                return _torch_load(f, path, trusted)
            f.seek(0)
            if trusted:
                first = pickle.Unpickler(f, encoding="latin1").load()
            else:
                first = _ArraysOnlyUnpickler(f, path).load()
            if isinstance(first, int) and first == _TORCH_LEGACY_MAGIC:
                f.seek(0)
                return _torch_load(f, path, trusted)
            return first
    except WeightsFormatError:
        raise
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, zipfile.BadZipFile) as e:
        raise WeightsFormatError(
            f"{path}: not a readable weights file (truncated or not a torch/pickle file): {e}"
        ) from None


def _read_safetensors(path: str) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as e:
        raise WeightsFormatError(
            f"{path}: reading .safetensors needs `pip install safetensors`"
        ) from e
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own SafetensorError
        raise WeightsFormatError(f"{path}: not a readable .safetensors file: {e}") from None


def atomic_write(path: str | os.PathLike, write: Callable[[Any], Any]) -> None:
    """Write through ``write(binary file)`` into a temporary file next to ``path``, then rename
    it over ``path``: a crash or a full disk never leaves a truncated file under the real name."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
