"""Features of named layers, read through forward hooks: what transferability scores are computed on.

Transferability scores score the representation a network computes at some layer; this package
reads those representations without touching the network's code. One concept per module:

- :mod:`tguide.features.layers`: which modules are feature layers (names, ``"auto"``, :data:`OUTPUT`);
- :mod:`tguide.features.pooling`: how a layer's output becomes one row per sample (pool specs);
- :mod:`tguide.features.capture`: the one forward-hook capture (:class:`LayerCapture`);
- :mod:`tguide.features.modes`: :func:`eval_mode`, restoring every submodule's mode;
- :mod:`tguide.features.extract`: image-level features of a loader (:func:`extract_features`);
- :mod:`tguide.features.pixels`: per-pixel features for segmentation (:func:`extract_pixel_features`).

``max_samples`` is a seeded, class-stratified random subset everywhere (every class keeps at
least one sample).
"""

from tguide.features.capture import LayerCapture, modules_entered
from tguide.features.extract import FeatureSet, Unpack, dataset_labels, default_unpack, extract_features
from tguide.features.layers import OUTPUT, auto_layers, resolve_layers
from tguide.features.modes import eval_mode
from tguide.features.pixels import boundary_band, extract_pixel_features
from tguide.features.pooling import POOLS, PoolSpec, check_pool, describe_pool, pool_for, reduce_output

__all__ = [
    "OUTPUT",
    "POOLS",
    "FeatureSet",
    "LayerCapture",
    "PoolSpec",
    "Unpack",
    "auto_layers",
    "boundary_band",
    "check_pool",
    "dataset_labels",
    "default_unpack",
    "describe_pool",
    "eval_mode",
    "extract_features",
    "extract_pixel_features",
    "modules_entered",
    "pool_for",
    "reduce_output",
    "resolve_layers",
]
