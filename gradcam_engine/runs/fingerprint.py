"""Fingerprints that tell two models or two preprocessings apart, so that a run
is never resumed with other weights or other transforms.

- weights: SHA-1 over every ``state_dict`` entry's name, dtype, shape and
  bytes. A retrained or fine-tuned model differs; the same weights loaded
  again match. ResNet-50 (102 MB of float32): ~0.06 s on this project's CPU;
  a later run of the same model object reuses its digest while every entry's
  CRC-32 (ISA-L, ~4 ms for those 102 MB) is unchanged.
- transforms: their repr without memory addresses; for a plain function or
  lambda its qualified name plus a hash of its code, constants, defaults and
  closure values (two lambdas that print alike differ); for an object with
  the default repr, its class plus its attributes. Plus the transform
  geometry (``config["geometry"]``) when the run records one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
import types
import weakref
from typing import Any

import torch
from isal import isal_zlib
from torch import nn

__all__ = [
    "weights_fingerprint",
    "transforms_fingerprint",
    "description_fingerprint",
    "describe",
]

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_DEFAULT_REPR = re.compile(r"^<[\w.]+ object>$")


_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_DIGESTS_LOCK = threading.Lock()  # the App's server runs operators in threads


def weights_fingerprint(module: nn.Module) -> str:
    """SHA-1 hex digest of ``module.state_dict()`` (names, dtypes, shapes, bytes)."""
    entries = list(_state_entries(module))
    # Cheap content check of every entry: weights changed in place (training,
    # load_state_dict, p.data.mul_) change it, so the digest is recomputed.
    check = tuple(
        (header, isal_zlib.crc32(data) if data is not None else None)
        for header, data in entries
    )
    with _DIGESTS_LOCK:
        known = _DIGESTS.get(module)
    if known is not None and known[0] == check:
        return known[1]
    digest = hashlib.sha1()
    for header, data in entries:
        digest.update(header.encode())
        if data is not None:
            digest.update(data)
    with _DIGESTS_LOCK:
        _DIGESTS[module] = (check, digest.hexdigest())
    return digest.hexdigest()


def _state_entries(module: nn.Module):
    """``(header, bytes or None)`` per ``state_dict`` entry, in order."""
    for name, value in module.state_dict().items():
        if not isinstance(value, torch.Tensor):  # extra state: hash its repr
            yield f"{name}={describe(value)}", None
            continue
        tensor = value.detach().cpu()
        if tensor.is_sparse:
            tensor = tensor.to_dense()
        if tensor.is_quantized:
            tensor = tensor.int_repr()
        tensor = tensor.contiguous().reshape(-1)
        yield (
            f"{name}:{tensor.dtype}:{tuple(value.shape)}",
            tensor.view(torch.uint8).numpy().data,
        )


def transforms_fingerprint(transforms: Any, geometry: Any = None) -> str:
    """SHA-1 hex digest of :func:`describe` ``(transforms)`` and ``geometry``
    (a JSON-able description of the transform geometry, or None)."""
    return description_fingerprint(describe(transforms, deep=True), geometry)


def description_fingerprint(description: str, geometry: Any = None) -> str:
    """:func:`transforms_fingerprint` from a ``describe(transforms, deep=True)``
    already made (a run describes its transforms once)."""
    text = description
    if geometry is not None:
        text += "\ngeometry=" + json.dumps(geometry, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()


def describe(obj: Any, deep: bool = False) -> str:
    """A stable description of ``obj`` (no memory addresses). ``deep`` adds a
    hash of a function's code and of an anonymous object's attributes."""
    if isinstance(obj, functools.partial):
        args = ", ".join(describe(a, deep) for a in obj.args)
        kwargs = ", ".join(f"{k}={describe(v, deep)}" for k, v in obj.keywords.items())
        return f"partial({describe(obj.func, deep)}, {args}, {kwargs})"
    if isinstance(obj, types.FunctionType):
        name = f"{obj.__module__}.{obj.__qualname__}"
        return f"{name} (code sha1 {_code_hash(obj)})" if deep else name
    if isinstance(obj, types.BuiltinFunctionType | type):
        return f"{getattr(obj, '__module__', '?')}.{obj.__qualname__}"
    text = _ADDRESS.sub("", repr(obj))
    if deep and _DEFAULT_REPR.match(text):
        attrs = sorted(getattr(obj, "__dict__", {}).items())
        state = ", ".join(f"{k}={describe(v, deep)}" for k, v in attrs)
        call = type(obj).__dict__.get("__call__")
        code = _code_hash(call) if isinstance(call, types.FunctionType) else ""
        return f"{text[:-1]}({state}) code sha1 {code}>"
    return text


def _code_hash(fn: types.FunctionType) -> str:
    digest = hashlib.sha1()
    _hash_code(fn.__code__, digest)
    for value in (*(fn.__defaults__ or ()), *(fn.__kwdefaults__ or {}).items()):
        digest.update(describe(value, deep=True).encode())
    for cell in fn.__closure__ or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell (a name not yet bound)
            value = None
        digest.update(describe(value, deep=True).encode())
    return digest.hexdigest()[:16]


def _hash_code(code: types.CodeType, digest) -> None:
    digest.update(code.co_code)
    digest.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):  # nested functions and lambdas
            _hash_code(const, digest)
        else:
            digest.update(repr(const).encode())
