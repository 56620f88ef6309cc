"""Small per-image torch work (a user's ``ToTensor`` / ``Normalize`` on one
image) on one intra-op thread.

Torch runs an element-wise op on a 224x224 image across all its OpenMP
threads; each such op then waits until every thread of the team has run. On
a busy 2-core machine a torchvision ``Resize + ToTensor + Normalize`` took
10-70 ms an image that way and 2.4 ms on one thread (``BENCHMARKS.md``, issue
23). The engine's batches keep every thread.

The count is set on OpenMP itself (threadpoolctl, which finds the OpenMP
runtime torch loaded), not by ``torch.set_num_threads``: that one also clears
oneDNN's cache of compiled convolutions, so that the engine's next batch
compiled them all again (measured: ResNet-50's batches ~10% slower inside
``compute_cams`` than alone, issue 23).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch

__all__ = ["one_intraop_thread"]


@contextlib.contextmanager
def one_intraop_thread() -> Iterator[None]:
    """Run the body with one OpenMP thread in this thread; the count comes
    back afterwards (a call into the OpenMP runtime, ~1 us). A no-op where
    torch already uses one thread (DataLoader workers), or where its OpenMP
    runtime is not found."""
    controllers = _openmp_controllers()
    if not controllers or torch.get_num_threads() <= 1:
        yield
        return
    counts = [controller.num_threads for controller in controllers]
    for controller in controllers:
        controller.set_num_threads(1)
    try:
        yield
    finally:
        for controller, count in zip(controllers, counts, strict=True):
            controller.set_num_threads(count)


@functools.cache
def _openmp_controllers() -> tuple:
    """The OpenMP runtimes loaded in this process (torch's among them), when
    torch's parallel backend is OpenMP (its native pool cannot be resized)."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return ()
    from threadpoolctl import ThreadpoolController

    controllers = ThreadpoolController().select(user_api="openmp").lib_controllers
    return tuple(controllers)
