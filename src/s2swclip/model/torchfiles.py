"""Reading the tensors of PyTorch files without running anything stored in them.

Weights and prompt files are untrusted user input. Two PyTorch formats reach us:

* ``torch.save`` files (``.pt``/``.pth``): :func:`torch_load_tensors` reads them with
  ``torch.load(weights_only=True)``, which unpickles tensors and plain containers only, and turns
  its failures into a one-line reason.
* TorchScript archives (``torch.jit.save``; the format of OpenAI's released CLIP ``.pt`` files).
  ``torch.jit.load`` would compile and run the TorchScript code stored in them (e.g. a
  ``__setstate__``), so :func:`read_torchscript_state_dict` reads them itself. The archive is a
  zip holding

  - ``<p>/data.pkl``: the pickled module tree. Each module is an object of a class
    ``__torch__.<module path>.<Class>`` whose state is a dict of attributes (tensors, submodules,
    plain values); tensors are ``torch._utils._rebuild_tensor_v2`` calls on storages named by
    persistent ids ``("storage", torch.<Type>Storage, key, location, numel)``;
  - ``<p>/data/<key>``: each storage's raw bytes, in the order of ``<p>/byteorder``;
  - ``<p>/code/__torch__/<module path>.py``: the classes' TorchScript source, whose class bodies
    declare ``__parameters__ = [...]`` and ``__buffers__ = [...]``.

  ``data.pkl`` is unpickled with an allow-list of globals (tensor rebuilding, storage types,
  ``OrderedDict``, TorchScript's typed-list/dict tags, ``torch.device``), each replaced by an
  inert function of this module; ``__torch__.*`` classes become inert placeholders that only keep
  their pickled state. Pickle's BUILD (which sets attributes, or calls ``__setstate__``) works
  on those placeholders only: the reader's own objects, tensors included, refuse it. The source
  files are only scanned, line by line, for the two declarations and for a ``__setstate__``
  method; nothing in them is compiled or run. A class with a ``__setstate__`` is refused: its
  restored state is whatever that code would compute, which a reader that runs nothing cannot
  reproduce. Memory is bounded by the file: the storage records must be stored uncompressed,
  and together no larger than the archive; data.pkl and the sources read are capped.

Both functions raise :class:`UnreadableFile`, a ``ValueError`` whose message is a one-line
reason; callers name the file and its role in the error they show.
"""

from __future__ import annotations

import ast
import collections
import io
import os
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import first_line

# a traced 24+12-layer CLIP (tests' S2SW-Tiny-24L) has a 63 kB data.pkl and 0.27 MB of source
_MAX_PICKLE_BYTES = 64 << 20
_MAX_CODE_BYTES = 64 << 20  # all source files read, together
_MAX_MODULE_DEPTH = 64
_READ_CHUNK = 16 << 20

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class UnreadableFile(ValueError):
    """A file that cannot be read safely; the message says why in one line."""


def _short(text: Any, limit: int = 80) -> str:
    """An untrusted string, quoted on one line and cut to ``limit`` characters."""
    s = repr(str(text))
    return s if len(s) <= limit else s[: limit - 4] + "...'"


# ------------------------------------------------------------------------------ torch.save files
def torch_load_tensors(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; failures raise :class:`UnreadableFile`."""
    if is_torchscript_archive(path):
        raise UnreadableFile("it is a TorchScript archive (a model with code), not a tensor file")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load fails in many types; each is "unreadable" to the user
        raise UnreadableFile(_load_failure_reason(e)) from None


def _load_failure_reason(e: Exception) -> str:
    """One line for a ``torch.load`` failure, without PyTorch's advice on loading it unsafely."""
    text = str(e)
    refused = re.search(r"GLOBAL ([\w.]+)", text)
    if refused:
        name = refused.group(1) if "." in refused.group(1) else f"builtins.{refused.group(1)}"
        return f"it refers to {name}, which is not tensor data; nothing was run"
    if isinstance(e, EOFError) or "EOF" in text:
        return "the file is empty or truncated"
    if "zip archive" in text:
        return "it is a corrupt zip archive (truncated, or not written by PyTorch)"
    first = first_line(e) if text.strip() else ""
    if (isinstance(e, (pickle.UnpicklingError, KeyError)) or not first
            or re.search(r"weights.only", first, re.I)):  # KeyError: an unknown legacy-format magic
        return "it is not a PyTorch tensor file"
    return f"{type(e).__name__}: {first}"


# ------------------------------------------------------------------------- TorchScript archives
def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a zip written by ``torch.jit.save`` (it has constants or code records)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/__torch__" in n for n in names)


def read_torchscript_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of a TorchScript archive, as ``torch.jit.load(path).state_dict()`` gives it.

    Keys are dotted attribute paths (``visual.conv1.weight``); for each module come its declared
    parameters, then its declared buffers (``None`` ones left out), then its submodules'
    entries. Values are CPU tensors (views of the archive's storages) with the archive's
    dtypes. Nothing stored in the archive is run. Raises :class:`UnreadableFile`.
    """
    try:
        with zipfile.ZipFile(path) as z:
            return _Archive(z, os.path.getsize(path)).state_dict()
    except UnreadableFile:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as e:
        raise UnreadableFile(f"corrupt zip archive ({_short(e)})") from None
    except OSError as e:
        raise UnreadableFile(f"the file cannot be read ({first_line(e)})") from None
    except RecursionError:
        raise UnreadableFile("data.pkl is nested too deeply") from None
    except Exception as e:  # a malformed pickle fails in many types; none of them ran anything
        raise UnreadableFile(f"malformed data.pkl ({type(e).__name__})") from None


@dataclass(frozen=True)
class _ClassDecl:
    """What a TorchScript class's source declares."""

    is_module: bool
    parameters: tuple[str, ...]
    buffers: tuple[str, ...]
    has_setstate: bool


class _ArchiveObject:
    """Inert stand-in for an object of a TorchScript class: it only keeps its pickled state."""

    qualname = ""
    decl = _ClassDecl(False, (), (), False)
    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _Sealed:
    """Refuses pickle's BUILD, so data.pkl cannot set attributes on this reader's objects."""

    def __setstate__(self, state: Any) -> None:
        raise UnreadableFile("data.pkl tries to modify an object it did not create")


@dataclass(frozen=True)
class _StorageType(_Sealed):
    """Stand-in for ``torch.<Type>Storage`` in a persistent id: only names the dtype."""

    dtype: torch.dtype


@dataclass(frozen=True)
class _Storage(_Sealed):
    """A storage read from the archive: flat tensor [numel] of its dtype."""

    data: torch.Tensor


@dataclass(frozen=True)
class _TensorRecord(_Sealed):
    """A tensor of data.pkl, wrapped: a bare tensor would accept BUILD (``Tensor.__setstate__``)."""

    tensor: torch.Tensor


@dataclass(frozen=True)
class _Allowed(_Sealed):
    """An allow-listed global: this module's inert function standing for it."""

    function: Any

    def __call__(self, *args: Any) -> Any:
        return self.function(*args)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any,
                    hooks: Any, metadata: Any = None) -> _TensorRecord:
    """``torch._utils._rebuild_tensor_v2``, checked: a strided view [*size] of ``storage``."""
    ok = (isinstance(storage, _Storage) and isinstance(size, tuple) and isinstance(stride, tuple)
          and len(size) == len(stride) <= 64 and type(offset) is int and offset >= 0
          and all(type(x) is int and x >= 0 for x in size + stride)
          and type(requires_grad) is bool and isinstance(hooks, dict) and not hooks
          and metadata is None)
    if not ok:
        raise UnreadableFile("data.pkl holds a malformed tensor record")
    numel = storage.data.numel()
    if all(size):
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        in_bounds = last < numel
    else:
        in_bounds = offset <= numel
    if not in_bounds:
        raise UnreadableFile("data.pkl holds a tensor reaching past its storage")
    return _TensorRecord(storage.data.as_strided(size, stride, offset))


def _typed_list(values: Any) -> list:
    """``torch.jit._pickle.build_{int,double,bool,tensor}list``: the list itself."""
    if not isinstance(values, list):
        raise UnreadableFile("data.pkl holds a malformed typed list")
    return values


def _restore_type_tag(value: Any, type_str: Any) -> Any:
    """``torch.jit._pickle.restore_type_tag``: the value (its TorchScript type is not needed)."""
    return value


def _device(*args: Any) -> tuple:
    """``torch.device``: kept as inert data (devices of attributes are not needed)."""
    return ("device", *args)


_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _Allowed(_rebuild_tensor),
    ("collections", "OrderedDict"): _Allowed(collections.OrderedDict),
    ("torch.jit._pickle", "build_intlist"): _Allowed(_typed_list),
    ("torch.jit._pickle", "build_doublelist"): _Allowed(_typed_list),
    ("torch.jit._pickle", "build_boollist"): _Allowed(_typed_list),
    ("torch.jit._pickle", "build_tensorlist"): _Allowed(_typed_list),
    ("torch.jit._pickle", "restore_type_tag"): _Allowed(_restore_type_tag),
    ("torch", "device"): _Allowed(_device),
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
}

_CLASS_LINE = re.compile(r"class\s+(\w+)\s*(?:\(\s*([\w.]*)\s*\))?\s*:")
_DECL_LINE = re.compile(r"\s+(__parameters__|__buffers__)\s*=\s*(\[.*\])\s*$")
_SETSTATE_LINE = re.compile(r"\s+def\s+__setstate__\s*\(")


def _scan_classes(source: str) -> dict[str, _ClassDecl]:
    """The classes a TorchScript source file defines, from its top-level class blocks."""
    found: dict[str, dict[str, Any]] = {}
    current = None
    for line in source.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            match = _CLASS_LINE.match(line)
            current = match.group(1) if match else None
            if current is not None:
                found[current] = {"base": match.group(2) or "", "__parameters__": (),
                                  "__buffers__": (), "setstate": False}
            continue
        if current is None:
            continue
        decl = _DECL_LINE.match(line)
        if decl:
            try:
                names = ast.literal_eval(decl.group(2))
            except (ValueError, SyntaxError, RecursionError, MemoryError):
                names = None
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise UnreadableFile(f"class {current} declares malformed {decl.group(1)}")
            found[current][decl.group(1)] = tuple(names)
        elif _SETSTATE_LINE.match(line):
            found[current]["setstate"] = True
    return {name: _ClassDecl(c["base"] == "Module", c["__parameters__"], c["__buffers__"], c["setstate"])
            for name, c in found.items()}


class _Archive:
    """One open TorchScript archive; see the module docstring for its layout."""

    def __init__(self, z: zipfile.ZipFile, file_size: int):
        self.z = z
        infos = z.infolist()
        self.records = {i.filename: i for i in infos}
        if len(self.records) != len(infos):
            raise UnreadableFile("the zip archive repeats a record name")
        pickles = [n for n in self.records if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise UnreadableFile("not a TorchScript archive (no single <name>/data.pkl record)")
        self.prefix = pickles[0][: -len("/data.pkl")]
        order = self.records.get(f"{self.prefix}/byteorder")
        byteorder = self._read(order, 16).decode("ascii", "replace").strip() if order else "little"
        if byteorder != sys.byteorder:
            raise UnreadableFile(f"its tensors are stored {_short(byteorder)}-endian, this machine "
                                 f"is {sys.byteorder}-endian")
        self.budget = file_size  # stored records cannot hold more bytes than the file
        self.code_budget = _MAX_CODE_BYTES
        self.storages: dict[str, _Storage] = {}
        self.classes: dict[str, type[_ArchiveObject]] = {}
        self.sources: dict[str, dict[str, _ClassDecl]] = {}

    def _read(self, info: zipfile.ZipInfo, limit: int) -> bytes:
        with self.z.open(info) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise UnreadableFile(f"record {_short(info.filename)} exceeds the reader's size limit "
                                 f"({limit >> 20} MiB)")
        return data

    def state_dict(self) -> dict[str, torch.Tensor]:
        data = self._read(self.records[f"{self.prefix}/data.pkl"], _MAX_PICKLE_BYTES)
        root = _Unpickler(io.BytesIO(data), self).load()
        if not isinstance(root, _ArchiveObject) or not root.decl.is_module:
            raise UnreadableFile("data.pkl does not hold a module")
        out: dict[str, torch.Tensor] = {}
        self._collect(root, "", out, set(), 0)
        return out

    def _collect(self, module: _ArchiveObject, prefix: str, out: dict[str, torch.Tensor],
                 seen: set[int], depth: int) -> None:
        """Add ``module``'s parameters, buffers, then its submodules' entries to ``out``."""
        if depth > _MAX_MODULE_DEPTH:
            raise UnreadableFile("the module tree is nested too deeply")
        if id(module) in seen:
            raise UnreadableFile("the module tree shares or loops a submodule")
        seen.add(id(module))
        state = module.state
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise UnreadableFile(f"module {_short(module.qualname)} has no attribute dict")
        for name in module.decl.parameters + module.decl.buffers:
            if name not in state:
                raise UnreadableFile(f"module {_short(module.qualname)} lacks its tensor {_short(name)}")
            value = state[name]
            if value is None:
                continue
            if not isinstance(value, _TensorRecord):
                raise UnreadableFile(f"{_short(prefix + name)} is not a tensor")
            out[prefix + name] = value.tensor
        for name, value in state.items():
            if isinstance(value, _ArchiveObject) and value.decl.is_module:
                self._collect(value, f"{prefix}{name}.", out, seen, depth + 1)

    def placeholder(self, module: str, name: str) -> type[_ArchiveObject]:
        """The inert class standing for TorchScript class ``module.name`` (one per class)."""
        qualname = f"{module}.{name}"
        if qualname in self.classes:
            return self.classes[qualname]
        parts = module.split(".")
        if not all(re.fullmatch(r"\w+", p) for p in parts) or not re.fullmatch(r"\w+", name):
            raise UnreadableFile(f"data.pkl names a malformed class {_short(qualname)}")
        if module not in self.sources:
            info = self.records.get(f"{self.prefix}/code/{'/'.join(parts)}.py")
            source = self._read(info, self.code_budget) if info else b""
            self.code_budget -= len(source)
            source = source.decode("utf-8", "replace")
            self.sources[module] = _scan_classes(source)
        decl = self.sources[module].get(name)
        if decl is None:
            raise UnreadableFile(f"the archive has no source for class {_short(qualname)}")
        if decl.has_setstate:
            raise UnreadableFile(f"class {_short(qualname)} restores itself with its own "
                                 f"__setstate__ code, which is not run here; only plain "
                                 f"module trees (traced or scripted CLIP models) are read")
        cls = type(name, (_ArchiveObject,), {"qualname": qualname, "decl": decl})
        self.classes[qualname] = cls
        return cls

    def storage(self, key: Any, dtype: torch.dtype, numel: Any) -> _Storage:
        """The storage ``<prefix>/data/<key>`` holding ``numel`` values of ``dtype``."""
        if not isinstance(key, str) or not re.fullmatch(r"\w+", key) or type(numel) is not int or numel < 0:
            raise UnreadableFile("data.pkl holds a malformed storage reference")
        if key in self.storages:
            found = self.storages[key].data
            if found.dtype != dtype or found.numel() != numel:
                raise UnreadableFile(f"storage {key} is referenced with two different types")
            return self.storages[key]
        info = self.records.get(f"{self.prefix}/data/{key}")
        if info is None:
            raise UnreadableFile(f"the storage record data/{key} is missing")
        nbytes = numel * dtype.itemsize
        if info.file_size != nbytes:
            raise UnreadableFile(f"the storage record data/{key} holds {info.file_size} bytes, "
                                 f"its reference says {nbytes}")
        if info.compress_type != zipfile.ZIP_STORED:
            raise UnreadableFile(f"the storage record data/{key} is compressed (torch.jit.save "
                                 f"stores them uncompressed)")
        self.budget -= nbytes
        if self.budget < 0:
            raise UnreadableFile("its storage records add up to more bytes than the file holds")
        buf = torch.empty(nbytes, dtype=torch.uint8)
        view = memoryview(buf.numpy())
        got = 0
        with self.z.open(info) as f:
            while got < nbytes:
                n = f.readinto(view[got: got + _READ_CHUNK])
                if not n:
                    break
                got += n
        if got != nbytes:
            raise UnreadableFile(f"the storage record data/{key} is truncated")
        self.storages[key] = _Storage(buf.view(dtype))
        return self.storages[key]


class _Unpickler(pickle.Unpickler):
    """Unpickles ``data.pkl``: allow-listed globals only, storages from the archive."""

    def __init__(self, file: io.BytesIO, archive: _Archive):
        super().__init__(file)
        self.archive = archive

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return self.archive.placeholder(module, name)
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise UnreadableFile(f"data.pkl refers to {_short(f'{module}.{name}')}, which is not "
                                 f"tensor data; nothing was run")
        return allowed

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[3], str)):
            raise UnreadableFile("data.pkl holds a malformed storage reference")
        return self.archive.storage(pid[2], pid[1].dtype, pid[4])
