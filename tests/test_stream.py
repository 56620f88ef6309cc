"""How compute_cams streams: DataLoader workers only on cores torch leaves free."""

from __future__ import annotations

import pytest
from torch import nn

from gradcam_engine.runs import stream


@pytest.fixture
def cpus(monkeypatch):
    def set_cpus(n: int, threads: int) -> None:
        monkeypatch.setattr(stream.os, "sched_getaffinity", lambda _: set(range(n)))
        monkeypatch.setattr(stream.torch, "get_num_threads", lambda: threads)

    return set_cpus


@pytest.mark.parametrize(
    ("n", "threads", "expected"), [(2, 2, 0), (4, 2, 2), (3, 2, 1), (16, 16, 0)]
)
def test_cpu_engines_get_workers_only_on_cores_torch_leaves_free(
    cpus, n, threads, expected
):
    cpus(n, threads)
    assert stream.loader_workers(nn.Linear(2, 2)) == expected


def test_an_explicit_number_of_workers_is_kept(cpus):
    cpus(2, 2)
    assert stream.loader_workers(nn.Linear(2, 2), requested=2) == 2
    assert stream.loader_workers(nn.Linear(2, 2), requested=0) == 0


def test_an_engine_off_the_cpu_leaves_the_cpus_to_the_workers(cpus):
    cpus(2, 2)
    # "meta" stands in for a GPU here: any device other than the CPU
    assert stream.loader_workers(nn.Linear(2, 2, device="meta")) == 2
