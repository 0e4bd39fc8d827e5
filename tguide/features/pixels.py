"""Per-pixel features of named layers, for segmentation (Tan et al., CVPR 2021's pixel-level OTCE).

Every sampled pixel ``(i, j)`` of an image with a label mask ``(H, W)`` gives one row per layer:
the layer's map bilinearly resampled at that pixel's centre (the value
``F.interpolate(x, (H, W), mode="bilinear", align_corners=False)[:, :, i, j]`` would give,
without building the upsampled map), and its label is ``mask[i, j]``. Pixels are drawn
uniformly over the labelled pixels (``sampling="uniform"``) or, as Tan et al., CVPR 2021 recommends for
segmentation ("sample pixels near segmentation boundaries"), within a band around the label
boundaries (``sampling="boundary"``, :func:`boundary_band`): the pixels whose
``(2·band+1)²`` square neighbourhood holds a labelled pixel of another class, i.e. a
morphological dilation of every class by a square of width ``band`` on each side, intersected
where at least two classes meet. Layer capture itself is :mod:`tguide.features.capture`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tguide.features.capture import LayerCapture
from tguide.features.extract import FeatureSet, Unpack, batch_ids, default_unpack, integer_labels, run_batches
from tguide.features.modes import eval_mode

__all__ = ["SAMPLINGS", "sample_pixels", "boundary_band", "extract_pixel_features"]

SAMPLINGS: tuple[str, ...] = ("uniform", "boundary")


def sample_pixels(valid: Tensor, k: int | None, generator: torch.Generator | None) -> Tensor:
    """Flat indices of up to ``k`` distinct pixels where ``valid (H, W)`` is true, ascending.

    All valid pixels when ``k`` is ``None`` or not smaller than their number.
    """
    flat = torch.nonzero(valid.flatten().cpu()).flatten()
    if k is not None and flat.numel() > k:
        pick = torch.randperm(flat.numel(), generator=generator)[:k]
        flat = torch.sort(flat[pick]).values
    return flat


def boundary_band(mask: Tensor, band: int = 3, ignore_index: int | None = None) -> Tensor:
    """Pixels within Chebyshev distance ``band`` of a pixel of another class: ``(H, W)`` bool.

    .. math::

        B = V \\cap \\{p : |\\{c : \\exists q \\in V,\\ \\|p-q\\|_\\infty \\le b,\\ y_q = c\\}| \\ge 2\\}

    with ``V`` the labelled pixels (label not ``ignore_index``): every class is dilated by a
    ``(2b+1)²`` square (a max-pool) and a pixel is in the band when two or more dilated classes
    cover it. So the band holds pixels of both sides of every boundary (vessel and background
    along a vessel's edge) and never an ignored pixel; edges between a class and ignored pixels
    (the field-of-view border) are not boundaries. ``mask`` is ``(H, W)`` integer labels.
    """
    if mask.ndim != 2:
        raise ValueError(f"`mask` must be (H, W) integer labels, got shape {tuple(mask.shape)}.")
    if not isinstance(band, int) or isinstance(band, bool) or band < 1:
        raise ValueError(f"`band` must be an integer ≥ 1 (pixels on each side of a boundary), got {band!r}.")
    valid = mask != ignore_index if ignore_index is not None else torch.ones_like(mask, dtype=torch.bool)
    classes = torch.unique(mask[valid])
    covered = torch.zeros(mask.shape, dtype=torch.int64, device=mask.device)
    for c in classes:
        member = ((mask == c) & valid).to(torch.float32)[None, None]  # (1, 1, H, W)
        dilated = F.max_pool2d(member, kernel_size=2 * band + 1, stride=1, padding=band)[0, 0]
        covered += (dilated > 0).to(torch.int64)
    return (covered >= 2) & valid


def _sample_map(fmap: Tensor, rows: Tensor, cols: Tensor, height: int, width: int, mode: str) -> Tensor:
    """Values of ``fmap (C, h, w)`` at pixel centres ``(rows, cols)`` of an ``(height, width)`` grid,
    as ``interpolate(fmap, (height, width), mode, align_corners=False)`` would give: ``(P, C)``."""
    c, h, w = fmap.shape
    if (h, w) == (height, width):
        return fmap[:, rows, cols].T
    gx = (2.0 * cols.to(fmap.dtype) + 1.0) / width - 1.0  # normalised pixel-centre coordinates
    gy = (2.0 * rows.to(fmap.dtype) + 1.0) / height - 1.0
    grid = torch.stack([gx, gy], dim=1).view(1, 1, -1, 2)  # (1, 1, P, 2) as (x, y)
    # grid_sample "bilinear" clamps like interpolate's bilinear with border padding
    out = F.grid_sample(fmap[None], grid, mode=mode, padding_mode="border", align_corners=False)
    return out[0, :, 0, :].T  # (P, C)


def extract_pixel_features(
    model: nn.Module,
    loader: Iterable[Any],
    layers: Sequence[str] | str,
    *,
    pixels_per_image: int | None = 256,
    ignore_index: int | None = None,
    seed: int = 0,
    ids: Sequence[int] | Tensor | None = None,
    max_samples: int | None = None,
    mode: str = "bilinear",
    device: torch.device | str | None = None,
    unpack: Unpack | None = None,
    forward: Callable[[nn.Module, Tensor], Any] | None = None,
    sampling: str = "uniform",
    band: int = 3,
) -> FeatureSet:
    """Per-pixel features of named conv layers and the pixel labels, for segmentation.

    For each image (batch ``(x, mask)``, mask ``(B, H, W)`` or ``(B, 1, H, W)`` of integer
    classes), ``pixels_per_image`` distinct pixels are drawn among those whose label is not
    ``ignore_index`` (all of them if ``None``); each layer's map ``(C, h, w)`` is resampled at
    those pixel centres, giving rows ``(P, C)``: ``mode="bilinear"`` (as bilinear upsampling with
    ``align_corners=False``) or ``"nearest"`` (the map cell holding the pixel centre); exact
    indexing when ``h, w`` equal ``H, W``. The draw for an image depends only on ``seed`` and the
    image's id, so it does not change with the batch size or the process that reads it.

    ``sampling="boundary"`` draws the pixels only within the boundary band of width ``band``
    (:func:`boundary_band`; both classes of a boundary are in it); an image whose labelled
    pixels hold one class only has no band and gives no rows. ``"uniform"`` (default) draws
    among all labelled pixels.

    Returns a :class:`FeatureSet` with ``features[layer] (M, C_layer)``, ``labels (M,)`` and
    ``ids (M,)`` (the image each pixel came from). ``max_samples`` caps the number of images.
    """
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"`mode` must be 'bilinear' or 'nearest', got {mode!r}.")
    if sampling not in SAMPLINGS:
        raise ValueError(f"`sampling` must be one of {list(SAMPLINGS)}, got {sampling!r}.")
    if sampling == "boundary" and (not isinstance(band, int) or isinstance(band, bool) or band < 1):
        raise ValueError(f"`band` must be an integer ≥ 1 (pixels on each side of a boundary), got {band!r}.")
    if pixels_per_image is not None and pixels_per_image < 1:
        raise ValueError(f"`pixels_per_image` must be ≥ 1 or None, got {pixels_per_image}.")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"`max_samples` must be ≥ 1 or None, got {max_samples}.")
    unpack = unpack or default_unpack
    id_tensor = torch.as_tensor(ids, dtype=torch.int64).flatten() if ids is not None else None
    chunks: dict[str, list[Tensor]] = {}
    labels: list[Tensor] = []
    row_ids: list[Tensor] = []
    seen = 0
    with LayerCapture(model, layers, pool="none") as cap, eval_mode(model), torch.no_grad():
        for masks in run_batches(loader, cap, unpack, device, forward):
            if masks.ndim == 4 and masks.shape[1] == 1:
                masks = masks[:, 0]
            if masks.ndim != 3:
                raise ValueError(
                    f"masks of a batch have shape {tuple(masks.shape)}; pixel features need label masks "
                    "(B, H, W) or (B, 1, H, W)."
                )
            masks = integer_labels(masks, "masks")
            b, height, width = masks.shape
            for name, out in cap.outputs.items():
                if out.ndim != 4 or out.shape[0] != b:
                    raise ValueError(
                        f"layer {name!r} output has shape {tuple(out.shape)}; pixel features need conv maps "
                        f"(B, C, h, w) with B={b}."
                    )
            image_ids = batch_ids(id_tensor, seen, b)
            for i in range(b):
                if max_samples is not None and seen >= max_samples:
                    break
                gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(image_ids[i]))
                if sampling == "boundary":
                    valid = boundary_band(masks[i], band, ignore_index)
                else:
                    valid = (
                        masks[i] != ignore_index
                        if ignore_index is not None
                        else torch.ones_like(masks[i], dtype=torch.bool)
                    )
                flat = sample_pixels(valid, pixels_per_image, gen)
                rows, cols = (flat // width), (flat % width)
                for name, out in cap.outputs.items():
                    fmap = out[i]
                    chunks.setdefault(name, []).append(
                        _sample_map(fmap, rows.to(fmap.device), cols.to(fmap.device), height, width, mode)
                    )
                labels.append(masks[i].flatten().cpu()[flat])
                row_ids.append(torch.full((flat.numel(),), int(image_ids[i]), dtype=torch.int64))
                seen += 1
            if max_samples is not None and seen >= max_samples:
                break
    if not labels or sum(t.numel() for t in labels) == 0:
        hint = " (sampling='boundary' needs images whose masks hold two classes)." if sampling == "boundary" else "."
        raise ValueError("no labelled pixels were found; check `loader` and `ignore_index`" + hint)
    first = next(iter(chunks.values()))[0]
    return FeatureSet(
        features={name: torch.cat(chunks[name]) for name in cap.modules},
        labels=torch.cat(labels).to(first.device),
        ids=torch.cat(row_ids),
    )
