"""objdetect.roi_align: RoIAlign as one gather equals torchvision's MultiScaleRoIAlign, box for box."""

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torchvision.ops import MultiScaleRoIAlign

from objdetect.roi_align import GatherRoIAlign

pytestmark = pytest.mark.unit

SIZES = [(480, 640), (320, 320), (600, 200)]  # the images' sizes after the model's transform
ROUNDING = 1e-5  # features in [0, 1): the same sums in another order


def pyramid(pool: MultiScaleRoIAlign, strides, seed: int = 3) -> dict[str, torch.Tensor]:
    """Random features for a batch padded to 608x640, at `strides`, plus a level the pool ignores."""
    generator = torch.Generator().manual_seed(seed)
    names = [*pool.featmap_names[:len(strides)], "pool"]
    return {name: torch.rand(len(SIZES), 8, 608 // stride, 640 // stride, generator=generator)
            for name, stride in zip(names, [*strides, 2 * strides[-1]])}


def random_boxes(generator: torch.Generator, count: int, h: int, w: int) -> torch.Tensor:
    """Boxes of every size (so every level pools some), some reaching past the image or off it."""
    corner = torch.rand(count, 2, generator=generator) * torch.tensor([w, h]) * 1.2 - 20
    return torch.cat([corner, corner + 0.1 + torch.rand(count, 2, generator=generator) * 400], 1)


@pytest.mark.parametrize("names, strides", [
    (["0", "1", "2", "3"], (4, 8, 16, 32)),  # the embedded model's and resnet50's pool: four levels
    (["0", "1", "2", "3"], (16, 32)),  # mobilenet's: the pool's names, of which its backbone makes two
    (["0"], (8,)),  # one level: no level mapping
])
def test_gathered_roialign_equals_torchvisions_for_every_level_and_image(names, strides):
    pool = MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2)
    gathered, features = GatherRoIAlign(pool), pyramid(pool, strides)
    generator = torch.Generator().manual_seed(5)
    with torch.inference_mode():
        first = [random_boxes(generator, 4, *SIZES[0])]
        assert torch.equal(gathered(features, first, SIZES[:1]), pool(features, first, SIZES[:1]))  # sets the scales
        for counts in [(150, 37, 5), (0, 1, 2), (0, 0, 0), (1, 0, 0)]:
            boxes = [random_boxes(generator, count, h, w) for count, (h, w) in zip(counts, SIZES)]
            got, expected = gathered(features, boxes, SIZES), pool(features, boxes, SIZES)
            assert got.shape == expected.shape == (sum(counts), 8, 7, 7)
            torch.testing.assert_close(got, expected, rtol=0, atol=ROUNDING)
            assert got.is_contiguous()


coordinate = st.floats(-700, 1300, width=32)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(coordinate, coordinate, st.floats(0, 900, width=32), st.floats(0, 900, width=32)),
                min_size=1, max_size=20),
       st.integers(1, 4))
@example([(632.0, 100.0, 16.0, 50.0)], 1)  # a sampling point exactly on the map's far edge (x = 160)
def test_any_box_pools_as_torchvisions_does(boxes, sampling_ratio):
    # Degenerate, sub-pixel, off-image and border-straddling boxes: the rules at the map's edges.
    pool = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=(7, 5), sampling_ratio=sampling_ratio)
    gathered, features = GatherRoIAlign(pool), pyramid(pool, (4, 8, 16, 32))
    rois = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes])
    with torch.inference_mode():
        pool(features, [rois[:1]], SIZES[:1])
        torch.testing.assert_close(gathered(features, [rois], SIZES[:1]), pool(features, [rois], SIZES[:1]),
                                   rtol=0, atol=ROUNDING)


def test_an_adaptive_sampling_grid_is_refused():
    # sampling_ratio <= 0 samples each box on its own grid: not one gather, so not silently approximated.
    with pytest.raises(ValueError, match="sampling_ratio"):
        GatherRoIAlign(MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=0))
