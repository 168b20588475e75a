r"""Vector indexes for dense retrieval (chapter 08): exact search and an inverted-file (IVF) index.

Split from :mod:`course_lib.rag` (which re-exports everything here) to keep each module
readable. Both indexes store unit vectors and score by inner product, i.e. cosine
similarity.

* :class:`ExactIndex` — brute force: every query against every stored vector, in batches,
  :math:`O(N d)` per query; the reference every approximate index is measured against.
* :func:`kmeans` — Lloyd's algorithm (spherical by default: centroids re-normalised), the
  coarse quantizer of IVF.
* :class:`IVFIndex` — IVF-Flat (Jégou et al., 2011; faiss's ``IndexIVFFlat``): vectors are
  filed under their nearest of ``nlist`` centroids; a query scans only the ``nprobe``
  closest lists, about :math:`N \cdot nprobe / nlist` vectors instead of :math:`N`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from course_lib.checks import check_bool, check_int


def _as_matrix(vectors, dim: int | None, name: str = "vectors") -> torch.Tensor:
    x = torch.as_tensor(np.asarray(vectors) if not torch.is_tensor(vectors) else vectors)
    if x.dim() != 2:
        raise ValueError(f"{name} must be a 2-D (n, dim) array, got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} have dimension {x.shape[1]}, the index holds dimension {dim}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    x = x.float().cpu()
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or inf")
    return x


class ExactIndex:
    r"""Brute-force maximum inner product search: :math:`s = Q X^\top`, then top-k per row.

    With unit vectors the inner product is the cosine similarity. Cost per query: one pass
    over all :math:`N \times d` numbers, which is exact and, for a few hundred thousand
    vectors, often fast enough (faiss calls this ``IndexFlatIP``).
    """

    def __init__(self, dim: int):
        check_int("dim", dim, min=1)
        self.dim = dim
        self.vectors = torch.zeros(0, dim)
        self.alive = torch.zeros(0, dtype=torch.bool)

    def __len__(self) -> int:
        return int(self.alive.sum())

    def add(self, vectors) -> np.ndarray:
        x = _as_matrix(vectors, self.dim)
        first = len(self.vectors)
        self.vectors = torch.cat([self.vectors, x])
        self.alive = torch.cat([self.alive, torch.ones(len(x), dtype=torch.bool)])
        return np.arange(first, first + len(x))

    def delete(self, ids: Iterable[int]) -> None:
        ids = torch.as_tensor(np.unique(np.asarray(list(ids), dtype=np.int64)))
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self.alive) or not self.alive[ids].all()):
            raise ValueError(f"ids must be live entries in [0, {len(self.alive) - 1}]")
        self.alive[ids] = False

    def search(self, queries, k: int = 10, *, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, ids), each (Q, k'), best first; ``k' = min(k, live vectors)``."""
        k = check_int("k", k, min=1)
        batch_size = check_int("batch_size", batch_size, min=1)
        q = _as_matrix(queries, self.dim, "queries")
        if len(q) == 0:
            raise ValueError("queries must hold at least one row (a 2-D (n, dim) array with n >= 1)")
        if len(self) == 0:
            raise ValueError("the index is empty: add vectors before searching")
        k = min(k, len(self))
        scores, ids = [], []
        for s in range(0, len(q), batch_size):
            sim = q[s : s + batch_size] @ self.vectors.T  # (B, N)
            sim[:, ~self.alive] = -torch.inf
            top = sim.topk(k, dim=1)
            scores.append(top.values)
            ids.append(top.indices)
        return torch.cat(scores), torch.cat(ids)

    def nbytes(self) -> int:
        return self.vectors.numel() * self.vectors.element_size()


def kmeans(x, k: int, *, iters: int = 20, seed: int = 0, spherical: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Lloyd's k-means: (centroids (k, d), assignment (N,)).

    Start from ``k`` distinct random rows (seeded). Repeat: assign each point to its
    nearest centroid, move each centroid to the mean of its points. ``spherical`` uses the
    inner product and renormalises centroids (for unit vectors, as faiss does for
    ``METRIC_INNER_PRODUCT``); otherwise squared L2, via
    :math:`\arg\min_c \|x - c\|^2 = \arg\max_c\, x \cdot c - \tfrac12\|c\|^2`.
    A centroid that loses all its points stays where it was.
    """
    x = _as_matrix(x, None, "x")
    check_int("k", k, min=1, max=len(x))  # at most the number of points
    check_int("iters", iters, min=0)
    check_bool("spherical", spherical)
    g = torch.Generator().manual_seed(seed)
    c = x[torch.randperm(len(x), generator=g)[:k]].clone()  # (k, d)

    def assign(c):
        sim = x @ c.T if spherical else x @ c.T - 0.5 * (c * c).sum(1)  # (N, k)
        return sim.argmax(1)

    for _ in range(iters):
        a = assign(c)
        counts = torch.bincount(a, minlength=k)
        sums = torch.zeros_like(c).index_add_(0, a, x)
        moved = counts > 0
        c[moved] = sums[moved] / counts[moved, None]
        if spherical:
            c = F.normalize(c, dim=1)
    return c, assign(c)


class IVFIndex:
    r"""Inverted-file index (Sivic & Zisserman 2003; Jégou et al. 2011): search a few clusters, not all.

    ``train`` runs k-means on the vectors to get ``nlist`` centroids (the *coarse
    quantizer*); each vector is stored in the list of its nearest centroid. A query scores
    the centroids, opens the ``nprobe`` best lists and scans only their vectors: about
    ``nprobe / nlist`` of the corpus. A true neighbour stored in an unopened list is
    missed, so recall grows with ``nprobe`` and reaches the exact result at
    ``nprobe = nlist``. The same structure as faiss ``IndexIVFFlat``.
    """

    def __init__(self, dim: int, nlist: int, *, iters: int = 20, seed: int = 0):
        check_int("dim", dim, min=1)
        check_int("nlist", nlist, min=1)
        self.dim, self.nlist, self.iters, self.seed = dim, nlist, iters, seed
        self.centroids: torch.Tensor | None = None
        self.vectors = torch.zeros(0, dim)
        self.assign = torch.zeros(0, dtype=torch.long)
        self.alive = torch.zeros(0, dtype=torch.bool)
        self._lists = None  # (ids sorted by list, their vectors, offsets), built lazily
        self.last_scanned = 0.0  # mean vectors scanned per query in the last search

    def __len__(self) -> int:
        return int(self.alive.sum())

    def train(self, vectors=None, *, centroids=None) -> IVFIndex:
        """Learn the coarse quantizer by k-means on ``vectors``, or take ready ``centroids`` (nlist, dim)."""
        if (vectors is None) == (centroids is None):
            raise ValueError("give either vectors to run k-means on or ready centroids, not both")
        if centroids is not None:
            c = _as_matrix(centroids, self.dim, "centroids")
            if len(c) != self.nlist:
                raise ValueError(f"centroids must have nlist = {self.nlist} rows, got {len(c)}")
            self.centroids = c.clone()
            return self
        x = _as_matrix(vectors, self.dim)
        if len(x) < self.nlist:
            raise ValueError(f"need at least nlist = {self.nlist} training vectors, got {len(x)}")
        self.centroids, _ = kmeans(x, self.nlist, iters=self.iters, seed=self.seed, spherical=True)
        return self

    def add(self, vectors) -> np.ndarray:
        if self.centroids is None:
            raise ValueError("train the index before adding vectors")
        x = _as_matrix(vectors, self.dim)
        first = len(self.vectors)
        self.vectors = torch.cat([self.vectors, x])
        self.assign = torch.cat([self.assign, (x @ self.centroids.T).argmax(1)])
        self.alive = torch.cat([self.alive, torch.ones(len(x), dtype=torch.bool)])
        self._lists = None
        return np.arange(first, first + len(x))

    def delete(self, ids: Iterable[int]) -> None:
        ids = torch.as_tensor(np.unique(np.asarray(list(ids), dtype=np.int64)))
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self.alive) or not self.alive[ids].all()):
            raise ValueError(f"ids must be live entries in [0, {len(self.alive) - 1}]")
        self.alive[ids] = False
        self._lists = None

    def list_sizes(self) -> torch.Tensor:
        """Live vectors per list (nlist,)."""
        return torch.bincount(self.assign[self.alive], minlength=self.nlist)

    def _inverted_lists(self):
        if self._lists is None:
            live = torch.nonzero(self.alive).squeeze(1)
            order = live[torch.argsort(self.assign[live], stable=True)]  # ids grouped by list
            offsets = torch.zeros(self.nlist + 1, dtype=torch.long)
            offsets[1:] = torch.cumsum(torch.bincount(self.assign[order], minlength=self.nlist), 0)
            self._lists = (order, self.vectors[order].contiguous(), offsets.tolist())
        return self._lists

    def search(self, queries, k: int = 10, *, nprobe: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, ids), each (Q, k), best first; missing results are -inf and -1 (as faiss)."""
        k = check_int("k", k, min=1)
        check_int("nprobe", nprobe, min=1, max=self.nlist)  # at most nlist
        q = _as_matrix(queries, self.dim, "queries")
        if self.centroids is None or len(self) == 0:
            raise ValueError("the index is empty: train it and add vectors before searching")
        ids_sorted, vecs_sorted, off = self._inverted_lists()
        probes = (q @ self.centroids.T).topk(nprobe, dim=1).indices.tolist()  # (Q, nprobe)
        out_s = torch.full((len(q), k), -torch.inf)
        out_i = torch.full((len(q), k), -1, dtype=torch.long)
        scanned = 0
        for r, lists in enumerate(probes):
            spans = [(off[c], off[c + 1]) for c in lists if off[c + 1] > off[c]]
            if not spans:
                continue
            cand = torch.cat([ids_sorted[a:b] for a, b in spans])
            sims = torch.cat([vecs_sorted[a:b] @ q[r] for a, b in spans])
            top = sims.topk(min(k, len(sims)))
            out_s[r, : len(top.values)] = top.values
            out_i[r, : len(top.values)] = cand[top.indices]
            scanned += len(cand)
        self.last_scanned = scanned / max(len(q), 1)
        return out_s, out_i

    def nbytes(self) -> int:
        """Vectors, their list ids, and the centroids."""
        c = 0 if self.centroids is None else self.centroids.numel() * 4
        return self.vectors.numel() * 4 + self.assign.numel() * 8 + c
