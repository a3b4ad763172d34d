"""RoIAlign on a CPU as one weighted gather: torchvision's MultiScaleRoIAlign, several times faster.

torchvision's CPU kernel pools one level at a time, one channel at a time, on one thread: about a
quarter of a small image's forward pass once OpenVINO runs the convolutions. But RoIAlign is a
weighted sum: each output bin of each box is the mean of its sampling points, each point a
bilinear blend of four feature pixels, with weights that depend on the box alone. So all of it,
every box at every level, is one `embedding_bag` call over the levels' pixels laid out as rows of
channels (channel-last): a vectorized, multithreaded kernel that returns the boxes in their order,
with no per-level scatter. The sampling points and the rules at the borders are torchvision's
(`roi_align`, aligned=False, as MultiScaleRoIAlign calls it); results equal its up to float
rounding (tests/test_roi_align.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import MultiScaleRoIAlign


class GatherRoIAlign(nn.Module):
    """Sits in a MultiScaleRoIAlign's place, with its feature maps, output size and level mapping."""

    def __init__(self, pool: MultiScaleRoIAlign):
        super().__init__()
        if pool.sampling_ratio <= 0:  # an adaptive grid differs box by box: not one gather
            raise ValueError("GatherRoIAlign needs a fixed sampling_ratio; this pool's is adaptive")
        self.pool = pool

    def forward(self, features: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_sizes: list[tuple[int, int]]) -> torch.Tensor:
        if self.pool.scales is None:  # its first call infers each level's scale and the level mapper
            return self.pool(features, boxes, image_sizes)
        levels = [features[name] for name in features if name in self.pool.featmap_names]
        rois = torch.cat(boxes)
        image = torch.repeat_interleave(torch.arange(len(boxes)), torch.tensor([len(b) for b in boxes]))
        level = self.pool.map_levels(boxes) if len(levels) > 1 else torch.zeros(len(rois), dtype=torch.long)
        return pool_rows(levels, self.pool.scales, rois, image, level, self.pool.output_size,
                         self.pool.sampling_ratio)


def pool_rows(levels: list[torch.Tensor], scales: list[float], rois: torch.Tensor, image: torch.Tensor,
              level: torch.Tensor, output_size: tuple[int, int], sampling: int) -> torch.Tensor:
    """(boxes, channels, *output_size): box k pooled from `levels[level[k]][image[k]]`."""
    batch, channels = levels[0].shape[:2]
    out_h, out_w = output_size
    if len(rois) == 0:
        return levels[0].new_zeros((0, channels, out_h, out_w))
    # Every level's pixels as rows of channels, the levels one after another.
    table = torch.cat([f.permute(0, 2, 3, 1).reshape(-1, channels) for f in levels]).contiguous()
    heights = torch.tensor([f.shape[2] for f in levels])[level]
    widths = torch.tensor([f.shape[3] for f in levels])[level]
    first_row = torch.tensor([0] + [batch * f.shape[2] * f.shape[3] for f in levels]).cumsum(0)[level]
    first_row = first_row + image * heights * widths
    scale = torch.tensor(scales, dtype=rois.dtype)[level]

    ys, ys_weights = _axis(rois[:, 1] * scale, rois[:, 3] * scale, heights, out_h, sampling)
    xs, xs_weights = _axis(rois[:, 0] * scale, rois[:, 2] * scale, widths, out_w, sampling)
    # Each sampling point's four pixels: (box, y point, x point, corner), corners (y, x) = ll, lh, hl, hh.
    rows = first_row[:, None, None, None] + (ys[:, :, None, :, None] * widths[:, None, None, None, None]
                                             + xs[:, None, :, None, :]).flatten(3)
    weights = (ys_weights[:, :, None, :, None] * xs_weights[:, None, :, None, :]).flatten(3) / (sampling * sampling)
    # Group each output bin's points into one bag: (box, bin y, bin x, point y, point x, corner).
    shape = (len(rois), out_h, sampling, out_w, sampling, 4)
    bag = (len(rois) * out_h * out_w, sampling * sampling * 4)
    rows = rows.reshape(shape).permute(0, 1, 3, 2, 4, 5).reshape(bag)
    weights = weights.reshape(shape).permute(0, 1, 3, 2, 4, 5).reshape(bag)
    pooled = F.embedding_bag(rows, table, per_sample_weights=weights, mode="sum")
    return pooled.reshape(len(rois), out_h, out_w, channels).permute(0, 3, 1, 2).contiguous()


def _axis(start: torch.Tensor, end: torch.Tensor, size: torch.Tensor, bins: int,
          sampling: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Along one axis, for each box: its sampling points' two pixel indices (box, point, 2) and their
    bilinear weights (box, point, 2), zero for a point off the map; torchvision's rules at the borders."""
    bin_size = ((end - start).clamp(min=1.0) / bins)[:, None]
    index = torch.arange(bins * sampling)
    in_bin = (index % sampling).to(start.dtype) + 0.5
    # torchvision's arithmetic, term for term: start + bin * bin_size + (i + .5) * bin_size / sampling
    point = start[:, None] + (index // sampling).to(start.dtype) * bin_size + in_bin * bin_size / sampling
    size = size[:, None]
    on_map = (point >= -1.0) & (point <= size)
    point = point.clamp(min=0)
    low = point.floor().long().clamp(max=size - 1)
    at_edge = low >= size - 1
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(point), point - low)
    weights = torch.stack([1 - frac, frac], -1) * on_map[..., None]
    return torch.stack([low, high], -1), weights
