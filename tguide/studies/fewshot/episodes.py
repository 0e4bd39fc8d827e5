"""N-way K-shot episodes: seeded, reproducible support/query index sets over a labelled pool.

Episode ``i`` of a sampler with seed ``s`` draws with ``numpy.random.default_rng([s, i])``:
``n_way`` classes without replacement from the allowed class pool, then per class
``k_shot + n_query`` distinct samples; the first ``k_shot`` are the support, the rest the
query. Labels inside an episode are ``0..n_way-1`` in the order the classes were drawn.
The same (labels, pool, shape, seed, i) give the same episode on every machine; episodes
are independent of how many others were drawn before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from tguide.errors import TGuideError

__all__ = ["Episode", "EpisodeSampler"]


@dataclass(frozen=True)
class Episode:
    """One few-shot task: indices into the pool's arrays and episode-local labels.

    Attributes:
        index: episode number within its sampler; seed: the sampler's seed.
        classes: ``(n_way,)`` original class ids, in episode-label order.
        support: ``(n_way·k_shot,)`` indices; support_labels: ``(n_way·k_shot,)`` in ``0..n_way-1``.
        query: ``(n_way·n_query,)`` indices; query_labels likewise.
    """

    index: int
    seed: int
    classes: Tensor
    support: Tensor
    support_labels: Tensor
    query: Tensor
    query_labels: Tensor


class EpisodeSampler:
    """Seeded N-way K-shot episodes over ``labels``, restricted to ``classes`` if given.

    Args:
        labels: ``(N,)`` integer class of every sample in the pool.
        n_way, k_shot, n_query: classes per episode, support and query samples per class.
        classes: the class ids episodes may use (e.g. test alphabets only); default all.
        seed: base seed; episode ``i`` uses ``default_rng([seed, i])``.

    Raises:
        TGuideError: ``n_way`` larger than the pool of eligible classes (classes with at least
            ``k_shot + n_query`` samples), non-positive sizes, classes absent from ``labels``.
    """

    def __init__(
        self,
        labels: Tensor | np.ndarray | Sequence[int],
        n_way: int,
        k_shot: int,
        n_query: int,
        classes: Sequence[int] | None = None,
        seed: int = 0,
    ) -> None:
        for name, v in (("n_way", n_way), ("k_shot", k_shot), ("n_query", n_query)):
            if int(v) < 1:
                raise TGuideError(f"fewshot.{name} must be ≥ 1, got {v}")
        self.labels = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64)
        self.n_way, self.k_shot, self.n_query, self.seed = int(n_way), int(k_shot), int(n_query), int(seed)
        present = np.unique(self.labels)
        pool = present if classes is None else np.unique(np.asarray(list(classes), dtype=np.int64))
        missing = np.setdiff1d(pool, present)
        if missing.size:
            raise TGuideError(f"episode classes {missing.tolist()[:10]} do not occur in the labels")
        need = self.k_shot + self.n_query
        self._members = {int(c): np.flatnonzero(self.labels == c) for c in pool}
        self.classes = np.array([c for c in pool if self._members[int(c)].size >= need], dtype=np.int64)
        if self.classes.size < self.n_way:
            raise TGuideError(
                f"{self.n_way}-way episodes need {self.n_way} classes with ≥ {need} samples "
                f"(k_shot + n_query); only {self.classes.size} qualify. Lower fewshot.n_way or fewshot.n_query."
            )

    def episode(self, i: int) -> Episode:
        """Episode number ``i`` (deterministic in ``(seed, i)``)."""
        rng = np.random.default_rng([self.seed, int(i)])
        chosen = rng.choice(self.classes, size=self.n_way, replace=False)
        sup, qry = [], []
        for c in chosen:
            picked = rng.choice(self._members[int(c)], size=self.k_shot + self.n_query, replace=False)
            sup.append(picked[: self.k_shot])
            qry.append(picked[self.k_shot :])
        way = np.arange(self.n_way)
        return Episode(
            index=int(i),
            seed=self.seed,
            classes=torch.from_numpy(chosen.astype(np.int64)),
            support=torch.from_numpy(np.concatenate(sup)),
            support_labels=torch.from_numpy(np.repeat(way, self.k_shot)),
            query=torch.from_numpy(np.concatenate(qry)),
            query_labels=torch.from_numpy(np.repeat(way, self.n_query)),
        )

    def __iter__(self) -> Iterator[Episode]:
        i = 0
        while True:
            yield self.episode(i)
            i += 1

    def take(self, n: int) -> list[Episode]:
        """The first ``n`` episodes."""
        return [self.episode(i) for i in range(int(n))]
