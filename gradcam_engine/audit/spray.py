"""Spectral relevance analysis (SpRAy) of heatmaps: pure numpy, scipy, scikit-learn.

Lapuschkin et al., "Unmasking Clever Hans predictors and assessing what machines
really learn", Nature Communications 2019: maps are downsampled and normalised,
a k-nearest-neighbour graph links similar maps, the eigengap of its spectrum
says how many strategies there are, and k-means on the spectral embedding
assigns each map to one. A small tight cluster of maps that all sit on the same
spot outside the objects is the signature of a shortcut.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from PIL import Image
from scipy.sparse import csgraph, diags
from scipy.sparse.linalg import eigsh
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score
from sklearn.neighbors import kneighbors_graph
from threadpoolctl import threadpool_limits

__all__ = [
    "SELECT",
    "check_options",
    "choose_k_eigengap",
    "cluster_maps",
    "map_vectors",
    "mean_maps",
]

SELECT = ("eigengap", "silhouette")


def map_vectors(maps: Sequence[np.ndarray], size: int = 16) -> np.ndarray:
    """float32 ``[N, size * size]``: each ``[H, W]`` map area-averaged to
    ``size x size`` (any input shape) and divided by its peak, so that where a
    map lies counts, not how strong it is, and a second hot spot (a cue next to
    the object) weighs as much as it looks. An all-zero map stays zero."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 2:
        raise ValueError(f"size must be an int >= 2, got {size!r}")
    out = np.zeros((len(maps), size * size), dtype=np.float32)
    by_shape: dict[tuple, list[int]] = {}
    for i, m in enumerate(maps):
        if np.ndim(m) != 2:
            raise ValueError(f"maps[{i}] must be a 2-D [H, W] map, got {np.shape(m)}")
        by_shape.setdefault(np.shape(m), []).append(i)
    for (h, w), idx in by_shape.items():
        stack = np.stack([np.asarray(maps[i], dtype=np.float32) for i in idx])
        if h % size == 0 and w % size == 0:  # exact block means, vectorised
            blocks = stack.reshape(len(idx), size, h // size, size, w // size)
            out[idx] = blocks.mean(axis=(2, 4)).reshape(len(idx), -1)
        else:
            out[idx] = [
                np.asarray(
                    Image.fromarray(m, mode="F").resize((size, size), Image.BOX)
                ).ravel()
                for m in stack
            ]
    out /= np.maximum(out.max(axis=1, keepdims=True), 1e-12)
    return out


def check_options(n_clusters, select: str, max_clusters: int) -> None:
    """Raise a ValueError naming the first bad clustering option."""
    if select not in SELECT:
        raise ValueError(f"select must be one of {SELECT}, got {select!r}")
    if n_clusters is not None and (
        not isinstance(n_clusters, int)
        or isinstance(n_clusters, bool)
        or n_clusters < 1
    ):
        raise ValueError(
            f"n_clusters must be a positive int or None, got {n_clusters!r}"
        )
    if not isinstance(max_clusters, int) or max_clusters < 2:
        raise ValueError(f"max_clusters must be an int >= 2, got {max_clusters!r}")


def _one_thread(fn):
    """Run ``fn`` with one BLAS/OpenMP thread: on a shared 2-core machine
    sklearn's k-means ran 16x faster so (many small fits; see BENCHMARKS.md)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with threadpool_limits(1):
            return fn(*args, **kwargs)

    return wrapper


@_one_thread
def cluster_maps(
    vectors: np.ndarray,
    n_clusters: int | None = None,
    *,
    max_clusters: int = 8,
    select: str = "silhouette",
    n_neighbors: int = 10,
    seed: int = 0,
) -> np.ndarray:
    """int64 ``[N]`` cluster ids, 0 = the largest cluster, for ``[N, D]`` vectors.

    n_clusters: fixed number of clusters; None chooses it: by the best k-means
        silhouette in ``2 .. max_clusters`` (``select="silhouette"``, k-means
        on the vectors' first 32 principal components), or by the eigengap of
        the kNN graph's normalised Laplacian in ``1 .. max_clusters``
        (``select="eigengap"``, SpRAy's spectral clustering). On CAM maps of
        planted shortcuts the silhouette keeps a cue's maps together where the
        eigengap splits them by object position (tests/test_spray.py), hence
        the default.
    """
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"vectors must be [N, D], got shape {x.shape}")
    check_options(n_clusters, select, max_clusters)
    n = len(x)
    if n <= 2:
        return np.zeros(n, dtype=np.int64)
    max_k = min(max_clusters, n - 1)
    if select == "eigengap":
        values, embedding = _spectrum(x, max_k, n_neighbors)
        n_clusters = n_clusters or choose_k_eigengap(values)
        # Ng-Jordan-Weiss: rows of the first k eigenvectors, unit length.
        points = embedding[:, :n_clusters]
        points = points / np.maximum(
            np.linalg.norm(points, axis=1, keepdims=True), 1e-12
        )
    else:
        points = _reduce(x, seed)
        n_clusters = n_clusters or _choose_k_silhouette(points, max_k, seed)
    n_clusters = min(n_clusters, n)
    if n_clusters == 1:
        return np.zeros(n, dtype=np.int64)
    labels = KMeans(n_clusters, n_init=4, random_state=seed).fit_predict(points)
    return _by_size(labels)


def choose_k_eigengap(eigenvalues: np.ndarray) -> int:
    """The k after which the sorted Laplacian spectrum jumps most (SpRAy)."""
    values = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    if len(values) < 2:
        return 1
    return int(np.argmax(np.diff(values))) + 1


def mean_maps(vectors_or_maps: np.ndarray, labels: np.ndarray) -> dict[int, np.ndarray]:
    """Cluster id -> the mean of its members' ``[h, w]`` maps (or ``[D]`` vectors)."""
    labels = np.asarray(labels)
    return {
        int(k): np.asarray(vectors_or_maps[labels == k]).mean(axis=0)
        for k in np.unique(labels)
    }


def _spectrum(
    x: np.ndarray, max_k: int, n_neighbors: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``max_k + 1`` smallest eigenvalues of the symmetric kNN graph's
    normalised Laplacian and their eigenvectors ``[N, max_k + 1]``."""
    n = len(x)
    k = max(1, min(n_neighbors, n - 1))
    graph = kneighbors_graph(x, k, mode="connectivity", include_self=False)
    graph = graph.maximum(graph.T)
    # L = I - D^-1/2 A D^-1/2: its smallest eigenvalues are 1 - the largest of the
    # normalised adjacency, which eigsh finds fast (no shift-invert).
    laplacian = csgraph.laplacian(graph.astype(np.float64), normed=True)
    adjacency = diags(np.ones(n)) - laplacian
    count = min(max_k + 1, n - 1)
    rng = np.random.default_rng(0)
    values, vectors = eigsh(adjacency, k=count, which="LA", v0=rng.uniform(size=n))
    order = np.argsort(-values)
    return 1.0 - values[order], vectors[:, order]


def _reduce(x: np.ndarray, seed: int, dims: int = 32) -> np.ndarray:
    """The first ``dims`` principal components: k-means and silhouettes on them
    cost several times less than on all pixels, and the maps' variance lies
    in few components."""
    if x.shape[1] <= dims or len(x) <= dims:
        return x
    pca = PCA(dims, svd_solver="randomized", random_state=seed)
    return pca.fit_transform(x).astype(np.float32)


def _choose_k_silhouette(x: np.ndarray, max_k: int, seed: int) -> int:
    best, best_k = -np.inf, 2
    sample = min(len(x), 2000)
    for k in range(2, max(2, max_k) + 1):
        labels = KMeans(k, n_init=2, random_state=seed).fit_predict(x)
        if len(np.unique(labels)) < 2:
            continue
        score = silhouette_score(x, labels, sample_size=sample, random_state=seed)
        if score > best:
            best, best_k = score, k
    return best_k


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters by decreasing size (ties: by first appearance)."""
    ids, counts = np.unique(labels, return_counts=True)
    order = ids[np.lexsort((ids, -counts))]
    remap = np.empty(ids.max() + 1, dtype=np.int64)
    remap[order] = np.arange(len(order))
    return remap[labels]
