"""The ``zoo`` candidate source: ``zoo:NAME`` (a checkpoint of :mod:`tguide.select.zoo`, sha256
checked, with its own input transform) and ``zoo:NAME:random`` (the same architecture, seeded
random init: a floor to beat)."""

from __future__ import annotations

from tguide.select.candidates.base import INIT_SEED, Candidate, CandidateError, register_source, seeded_init

__all__ = ["zoo_source"]


def zoo_source(rest: str) -> Candidate:
    """``NAME`` or ``NAME:random`` → a :class:`Candidate` of the zoo entry ``NAME``."""
    from tguide.select.zoo import ZOO, load_zoo_model, zoo_transform

    name, _, option = rest.partition(":")
    if name not in ZOO:
        raise CandidateError(f"unknown zoo model {name!r}; valid names: {', '.join(ZOO)}")
    entry = ZOO[name]
    if option not in ("", "random"):
        raise CandidateError(f"zoo:{name}:{option}: the only option after a zoo name is ':random' (random init)")
    if option == "random":
        model = seeded_init(entry.builder)
        return Candidate(
            f"{name}:random",
            model.eval(),
            zoo_transform(entry),
            list(entry.layers),
            entry.has_head,
            f"zoo {name} architecture, random init (seed {INIT_SEED})",
            None,
            entry.params,
            f"zoo:{name}:random:{INIT_SEED}",
        )
    model, entry = load_zoo_model(name)
    acc = entry.measured_acc if entry.measured_acc is not None else entry.reported_acc
    meta = {"source": entry.source, "measured_on": entry.measured_on}
    if entry.load is not None:  # built in process (no file): the weights are the fingerprint
        return Candidate(
            name,
            model,
            zoo_transform(entry),
            list(entry.layers),
            entry.has_head,
            f"zoo {name}: built in process by its loader",
            acc,
            entry.params,
            meta=meta,
        )
    return Candidate(
        name,
        model,
        zoo_transform(entry),
        list(entry.layers),
        entry.has_head,
        f"zoo {name}: {entry.path} sha256 {entry.sha256}",
        acc,
        entry.params,
        f"sha256:{entry.sha256}",
        meta=meta,
    )


def _zoo_names() -> list[str]:
    from tguide.select.zoo import ZOO

    return list(ZOO)


register_source("zoo", zoo_source, usage="zoo:NAME, zoo:NAME:random", lister=_zoo_names)
