"""Small per-image torch work (a user's ``ToTensor`` / ``Normalize`` on one
image) on one intra-op thread.

Torch runs an element-wise op on a 224x224 image across all its OpenMP
threads; each such op then waits until every thread of the team has run. On
a busy 2-core machine a torchvision ``Resize + ToTensor + Normalize`` took
10-70 ms an image that way and 2.4 ms on one thread (``BENCHMARKS.md``, issue
23). The engine's batched passes keep every thread.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch

__all__ = ["one_intraop_thread"]


@contextlib.contextmanager
def one_intraop_thread() -> Iterator[None]:
    """Run the body with ``torch.set_num_threads(1)``; the caller's count is
    restored afterwards (setting it costs well under a microsecond). A no-op
    where torch already uses one thread (DataLoader workers)."""
    threads = torch.get_num_threads()
    if threads <= 1 or not _openmp_backend():
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@functools.cache
def _openmp_backend() -> bool:
    """Torch's native thread pool cannot change its size once used (it warns
    and keeps it): the count is only changed under OpenMP, the usual backend."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()
