"""``cluster_cams``: find a run's strategies without boxes (SpRAy on the heatmaps).

For each heatmap field ``F`` of run ``R`` the maps are read in bulk, turned into
small peak-normalised vectors (:func:`spray.map_vectors`), clustered within
each group (the predicted class by default) and written as the string field
``F_cluster`` (``"<group>/<k>"``, ``k = 0`` the group's largest cluster). A
fiftyone-brain visualization of the same vectors (brain key ``F_clusters`` by
default) lets the App's Embeddings panel show the samples in heatmap space,
coloured by ``F_cluster``. Each cluster's size, class mix and mean map are
stored on the run (``R``'s config ``clusters``) for the panel, the class
report and the HTML review.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import fiftyone as fo
import fiftyone.core.collections as foc
import numpy as np
from threadpoolctl import threadpool_limits

from ..engine.errors import AdvisedError
from ..runs import cam_runs as runs
from ..runs.arguments import progress_args
from ..runs.frame_fields import delete_fields, existing_fields
from ..runs.naming import cluster_field, clusters_brain_key, frame_path
from . import spray
from .owned import claim_brain_key, claim_fields
from .raw_reads import raw_heatmap
from .writer_steps import progress_reporter, run_layers, write_columns

__all__ = ["BY", "cluster_cams", "cluster_field", "visualization_key"]

BY = ("predicted", "label", None)
_VIZ_METHODS = ("auto", "tsne", "pca", "umap")


visualization_key = clusters_brain_key


def cluster_cams(
    samples: foc.SampleCollection,
    run_key: str,
    layer: str | Sequence[str] | None = None,
    *,
    by: str | None = "predicted",
    n_clusters: int | None = None,
    brain_key: str | None = None,
    select: str = "silhouette",
    max_clusters: int = 8,
    size: int = 16,
    label_field: str | None = None,
    visualization: str | None = "auto",
    overwrite: bool = False,
    seed: int = 0,
    batch_size: int = 512,
    progress: bool | Callable[[int, int], Any] = False,
) -> dict[str, Any]:
    """Cluster the heatmaps of run ``run_key`` (module docstring).

    layer: a layer (or heatmap field) of the run, a list of them, or None for all.
    by: ``"predicted"`` clusters within each predicted class
        (``{run_key}_prediction``), ``"label"`` within each class of the run's
        ``label_field`` (or of ``label_field``), None all maps together.
    n_clusters: clusters per group; None chooses (``select``: ``"silhouette"``
        or ``"eigengap"``, up to ``max_clusters``).
    brain_key: the visualization's brain key (one layer only); default
        ``F_clusters``. visualization: ``"tsne"``, ``"pca"``, ``"umap"`` (needs
        umap-learn), ``"auto"`` (t-SNE up to 1,000 samples, else PCA) or None
        for no visualization.
    label_field: a ``fo.Classification`` field for the class mix (default: the
        run's ``label_field``, else its predictions).
    size: maps are compared at ``size x size``.

    Returns ``{"fields", "brain_keys", "clusters": {F: [cluster dicts]}}``; a
    cluster dict has ``name``, ``group``, ``size``, ``class_mix`` (label ->
    count) and ``mean_map`` (``size x size`` nested list, peak-normalised).
    """
    progress_args(progress)  # checked before any write
    info = runs.get_cam_run(samples, run_key)
    layers = run_layers(info, layer)
    fields = [info.fields[name] for name in layers]
    group_path = _group_path(samples, info, by, label_field)
    mix_path = _mix_path(samples, info, label_field)
    if brain_key is not None and len(fields) != 1:
        raise ValueError(
            f"brain_key={brain_key!r} names one visualization but {len(fields)} "
            f"layers were chosen ({layers}); pass one layer, or brain_key=None"
        )
    if visualization not in (*_VIZ_METHODS, None):
        raise ValueError(
            f"visualization must be one of {_VIZ_METHODS} or None, got {visualization!r}"
        )
    spray.check_options(n_clusters, select, max_clusters)
    spray.map_vectors([], size)  # checks size before anything is written
    brain_keys = {f: brain_key or visualization_key(f) for f in fields}
    declared = existing_fields(runs.root_dataset(samples))
    claim_fields(
        samples, run_key, {cluster_field(f): fo.StringField for f in fields}, overwrite
    )
    claimed: list[str] = []  # brain keys this call claimed (and may register)
    try:
        if visualization is not None:
            for key in brain_keys.values():
                claim_brain_key(samples, run_key, key, overwrite)
                claimed.append(key)
        ids = samples.values("id")
        report = progress_reporter(progress, len(ids) * len(fields))
        out: dict[str, list] = {}
        summary: dict[str, list[dict]] = {}
        for n, f in enumerate(fields):
            vectors, groups, mixes = _read(
                samples,
                ids,
                f,
                group_path,
                mix_path,
                size,
                batch_size,
                lambda done, n=n: report(n * len(ids) + done),
            )
            names, clusters = _cluster_groups(
                vectors, groups, mixes, n_clusters, select, max_clusters, size, seed
            )
            out[cluster_field(f)] = names
            summary[f] = clusters
            if visualization is not None:
                _visualize(samples, ids, vectors, brain_keys[f], visualization, seed)
        write_columns(samples, ids, out)
        # one entry per heatmap field: other fields' clusters stay as stored
        runs.set_run_entries(
            runs.root_dataset(samples),
            run_key,
            {
                f"clusters.{f}": {
                    "by": by,
                    "clusters": c,
                    # the Embeddings panel's key, for the App's help text
                    "brain_key": brain_keys[f] if visualization else None,
                }
                for f, c in summary.items()
            },
        )
        return {
            "fields": list(out),
            "brain_keys": list(brain_keys.values()) if visualization else [],
            "clusters": summary,
        }
    except BaseException:
        # Nothing half-written: no declared-but-empty cluster field, no brain
        # run without results (what the App showed as an empty cluster table).
        _undo(runs.root_dataset(samples), run_key, fields, claimed, declared)
        raise


def _undo(dataset, run_key, fields, brain_keys: list[str], declared) -> None:
    """Remove what a failed ``cluster_cams`` call made: the cluster fields it
    declared and the brain runs it registered (and their records on the run)."""
    names = [cluster_field(f) for f in fields]
    if runs.get_cam_run(dataset, run_key).config.get("frames"):
        names = [frame_path(f) for f in names]  # frame fields (a frames view's run)
    new = [f for f in names if f not in declared]
    present = existing_fields(dataset)
    if any(f in present for f in new):
        delete_fields(dataset, [f for f in new if f in present])
    for key in brain_keys:
        if dataset.has_brain_run(key):
            dataset.delete_brain_run(key)
    runs.remove_from_run_lists(
        dataset, run_key, owned_fields=new, brain_keys=list(brain_keys)
    )


def _group_path(samples, info, by, label_field) -> str | None:
    if by not in BY:
        raise ValueError(f"by must be one of {BY}, got {by!r}")
    if by is None:
        return None
    if by == "predicted":
        return f"{info.prediction_field}.label"
    field = label_field or info.config.get("label_field")
    if not field:
        raise AdvisedError(
            f"by='label' needs a class field: run {info.run_key!r} has no label_field;",
            python="pass label_field=<a fo.Classification field>",
            app="set 'Within' to 'Predicted class' or 'All'",
        )
    return _classification_path(samples, field, "label_field")


def _mix_path(samples, info, label_field) -> str:
    field = label_field or info.config.get("label_field")
    if field:
        return _classification_path(samples, field, "label_field")
    return f"{info.prediction_field}.label"


def _classification_path(samples, field: str, arg: str) -> str:
    suitable = sorted(samples.get_field_schema(embedded_doc_type=fo.Classification))
    if field not in suitable:
        raise ValueError(
            f"{arg} {field!r} is not a Classification field here; "
            f"Classification fields: {suitable or 'none'}"
        )
    return f"{field}.label"


def _read(samples, ids, f, group_path, mix_path, size, batch_size, report):
    """Vectors ``[N, size*size]`` (NaN rows where a sample has no map), groups
    and class-mix labels, in the order of ``ids``, read chunk by chunk."""
    vectors = np.full((len(ids), size * size), np.nan, dtype=np.float32)
    groups: list = []
    mixes: list = []
    paths = [f, *(p for p in (group_path, mix_path) if p)]
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        columns = samples.select(chunk, ordered=True).values(paths, _raw=True)
        col = dict(zip(paths, columns, strict=True))
        maps = [raw_heatmap(doc) for doc in col[f]]
        have = [i for i, m in enumerate(maps) if m is not None]
        if have:
            vectors[[start + i for i in have]] = spray.map_vectors(
                [maps[i] for i in have], size
            )
        groups += col[group_path] if group_path else ["all"] * len(chunk)
        mixes += col[mix_path]
        report(start + len(chunk))
    return vectors, groups, mixes


def _cluster_groups(
    vectors, groups, mixes, n_clusters, select, max_clusters, size, seed
) -> tuple[list, list[dict]]:
    """Per-sample ``"<group>/<k>"`` names (None without a map or group) and one
    summary dict per cluster, groups in sorted order."""
    names: list = [None] * len(vectors)
    clusters: list[dict] = []
    valid = ~np.isnan(vectors[:, 0])
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        if valid[i] and g is not None:
            by_group.setdefault(str(g), []).append(i)
    for group in sorted(by_group):
        idx = np.asarray(by_group[group])
        labels = spray.cluster_maps(
            vectors[idx],
            n_clusters,
            select=select,
            max_clusters=max_clusters,
            seed=seed,
        )
        means = spray.mean_maps(vectors[idx], labels)
        for k in range(int(labels.max()) + 1):
            members = idx[labels == k]
            name = f"{group}/{k}"
            for i in members:
                names[i] = name
            mix = Counter(str(mixes[i]) for i in members if mixes[i] is not None)
            clusters.append(
                {
                    "name": name,
                    "group": group,
                    "size": int(len(members)),
                    "class_mix": dict(mix.most_common()),
                    "mean_map": np.round(means[k].reshape(size, size), 3).tolist(),
                }
            )
    return names, clusters


def _visualize(samples, ids, vectors, brain_key, method, seed) -> None:
    import fiftyone.brain as fob  # optional heavy import, only when plotting

    keep = [i for i in range(len(ids)) if not np.isnan(vectors[i, 0])]
    if len(keep) < 3:
        return
    view = samples.select([ids[i] for i in keep], ordered=True)
    if method == "auto":
        method = "tsne" if len(keep) <= 1000 else "pca"
    kwargs = {"seed": seed, "verbose": False} if method in ("tsne", "umap") else {}
    n = len(keep)  # fiftyone-brain's defaults assume many more samples
    if method == "tsne":  # PCA to 50 dims first; perplexity below n
        kwargs.update(pca_dims=min(50, n, vectors.shape[1]))
        kwargs.update(perplexity=float(min(30.0, max(1.0, (n - 1) / 3))))
    elif method == "umap":
        kwargs.update(num_neighbors=min(15, n - 1))
    with threadpool_limits(1):  # as in spray.cluster_maps: faster on shared cores
        fob.compute_visualization(
            view,
            embeddings=vectors[keep],
            brain_key=brain_key,
            method=method,
            num_dims=2,
            progress=False,
            **kwargs,
        )
