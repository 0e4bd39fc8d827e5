"""Candidates for model selection: a network, its own input transform, its layers and provenance.

:func:`create_candidate` turns a spec into the one :class:`Candidate` type through a registry of
sources (:func:`register_source`); the built-in sources are registered by the modules of this
package (listed in this order):

=================================  ============================================================
spec                               candidate
=================================  ============================================================
``zoo:NAME``                       a pretrained checkpoint of :data:`tguide.select.zoo.ZOO`
                                   (sha256 checked), with its own input transform
``zoo:NAME:random``                the same architecture, seeded random init (a floor to beat)
``torchvision:ARCH``               a torchvision architecture, seeded random init
``torchvision:ARCH:WEIGHTS``       its pretrained ``WEIGHTS`` (e.g. ``IMAGENET1K_V1``), read
                                   from the torch hub cache only (never downloaded)
``timm:NAME[:random]``             a timm model (pretrained from the local cache), if timm is
                                   installed
``ckpt:PATH``                      a checkpoint written by ``python -m tguide.fit``: the
                                   classifier's ``net``, rebuilt from the run folder's
                                   ``config.yaml`` (or the checkpoint's hyper-parameters)
``file:PATH#ARCH``                 a plain state dict for a zoo architecture or torchvision arch
an ``nn.Module``                   used as is (``transform=`` required)
=================================  ============================================================

A new kind is one call: ``register_source("hub", lambda rest: Candidate(...))`` makes
``create_candidate("hub:REST")`` work everywhere a spec is accepted (``rank``, the recipes).
:func:`list_candidates` lists what the sources can enumerate, zoo names first.
Every mistake is a one-line :class:`CandidateError` (a :class:`~tguide.errors.TGuideError`).
"""

from __future__ import annotations

from tguide.select.candidates import file_sources, library_sources, zoo_source  # noqa: F401  (register, in order)
from tguide.select.candidates.base import (
    BUILTIN_KINDS,
    INIT_SEED,
    Candidate,
    CandidateError,
    SourceInfo,
    create_candidate,
    fallback_layers,
    list_candidates,
    register_source,
    registered_sources,
    resolve_candidate,
    resolve_candidates,
    seeded_init,
    state_fingerprint,
)

__all__ = [
    "BUILTIN_KINDS",
    "Candidate",
    "CandidateError",
    "INIT_SEED",
    "SourceInfo",
    "create_candidate",
    "fallback_layers",
    "list_candidates",
    "register_source",
    "registered_sources",
    "resolve_candidate",
    "resolve_candidates",
    "seeded_init",
    "state_fingerprint",
]
