"""Fields that discovery writers (clusters, background test, faithfulness) add to
a CAM run: refuse to write over what the run does not own, declare, register.

One call per writer (:func:`claim_fields`), on top of the shared ownership
check of the run lifecycle (``runs.ownership.claim``).
"""

from __future__ import annotations

import logging

import fiftyone.core.collections as foc

from ..runs import cam_runs
from ..runs.frame_fields import declare_run_fields
from ..runs.ownership import claim

__all__ = ["claim_fields", "claim_brain_key"]

logger = logging.getLogger(__name__)


def claim_fields(
    samples: foc.SampleCollection,
    run_key: str,
    fields: dict[str, type],
    overwrite: bool,
) -> None:
    """Make ``fields`` (name -> ``fo.*Field`` class) the run's before writing.

    A field that exists and is not among the run's ``owned_fields`` is refused
    by name unless ``overwrite`` (then it is deleted, and the log says so).
    Missing fields are declared; all are added to the run's ``owned_fields``.
    """
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be a bool, got {overwrite!r}")
    dataset = cam_runs.root_dataset(samples)
    claim(
        dataset, run_key, fields=list(fields), overwrite=overwrite, writer="this call"
    )
    info = cam_runs.get_cam_run(dataset, run_key)
    schema = {name: ftype() for name, ftype in fields.items()}
    declare_run_fields(dataset, info, schema)


def claim_brain_key(
    samples: foc.SampleCollection, run_key: str, brain_key: str, overwrite: bool
) -> None:
    """Refuse a brain run ``brain_key`` the CAM run did not create (unless
    ``overwrite``); delete the old one so that it can be recomputed, and
    record the key in the run's ``brain_keys`` (deleted with the run)."""
    dataset = cam_runs.root_dataset(samples)
    info = cam_runs.get_cam_run(dataset, run_key)
    ours = list(info.config.get("brain_keys") or [])
    if brain_key in dataset.list_brain_runs():
        if brain_key not in ours and not overwrite:
            raise ValueError(
                f"brain_key {brain_key!r} already exists on {dataset.name!r} and was "
                f"not made by CAM run {run_key!r}; pick another brain_key or pass "
                "overwrite=True to replace it"
            )
        if brain_key not in ours:
            logger.warning("Replacing brain run %r not owned by %r", brain_key, run_key)
        dataset.delete_brain_run(brain_key)
    elif brain_key in dataset.list_runs() or brain_key in dataset.list_evaluations():
        raise ValueError(
            f"brain_key {brain_key!r} is already used by another run on "
            f"{dataset.name!r}; pick another brain_key"
        )
    if brain_key not in ours:
        cam_runs.add_to_run_lists(dataset, run_key, brain_keys=[brain_key])
