"""Render: the detections drawn on the image the model saw, as a JPEG; one colour per class in the
server's render and the client's."""

import io

import pytest
import torch
from PIL import Image, ImageColor

from objdetect import render as server_render
from objdetect.detections import Detections
from objdetect.render import render_jpeg
from objdetect_client import render as client_render
from objdetect_client.result import Detection, Result

pytestmark = pytest.mark.unit


def test_render_draws_boxes_on_a_jpeg_of_the_image_size(shapes_labels, model_output, decoded_image):
    image = decoded_image(200, 100)
    detections = Detections.from_model_output(model_output, shapes_labels)
    jpeg = render_jpeg(image, detections)
    drawn = Image.open(io.BytesIO(jpeg))
    assert drawn.format == "JPEG" and drawn.size == (200, 100)
    rgb = drawn.convert("RGB")
    assert sum(rgb.getpixel((59, 15))) > 150  # the right edge of the "square" box is drawn
    assert sum(rgb.getpixel((150, 80))) < 30  # far from every box the image is untouched


def test_render_with_no_detections_is_the_plain_image(shapes_labels, decoded_image):
    jpeg = render_jpeg(decoded_image(64, 32), Detections.from_model_output(
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}, shapes_labels))
    drawn = Image.open(io.BytesIO(jpeg))
    assert drawn.size == (64, 32) and drawn.convert("L").getextrema()[1] < 10


# A class has one colour wherever it is drawn: the server's render (a request's "render": true) and
# the client's (objdetect-client --render) each carry the palette, since neither package may import
# the other, so these hold the two copies equal and check that each renderer draws with its own.
CLASS_IDS = range(201)
BAND = 6  # the box outline's width on the images below: max(2, round(2400 / 400))


def drawn_colour(jpeg: bytes) -> tuple[int, int, int]:
    """The colour in the middle of the left edge of the box at (600, 40, 1800, 220) on a 2400 x 240 image."""
    return Image.open(io.BytesIO(jpeg)).convert("RGB").getpixel((600 + BAND // 2, 130))


def server_drawn(class_id: int, decoded_image) -> tuple[int, int, int]:
    detections = Detections(boxes=torch.tensor([[600.0, 40.0, 1800.0, 220.0]]), scores=torch.tensor([0.9]),
                            class_ids=torch.tensor([class_id]), labels=("thing",))
    return drawn_colour(render_jpeg(decoded_image(2400, 240), detections, quality=100))


def client_drawn(class_id: int) -> tuple[int, int, int]:
    black = io.BytesIO()
    Image.new("RGB", (2400, 240)).save(black, "PNG")
    result = Result("black.png", 2400, 240, (Detection("thing", class_id, 0.9, (600.0, 40.0, 1800.0, 220.0)),))
    return drawn_colour(client_render.render(black.getvalue(), result, quality=100))


def nearest(rgb: tuple[int, int, int], palette) -> str:
    return min(palette, key=lambda entry: sum((a - b) ** 2 for a, b in zip(ImageColor.getrgb(entry), rgb)))


def test_server_and_client_give_every_class_the_same_colour():
    assert [ImageColor.getrgb(server_render.colour(k)) for k in CLASS_IDS] == \
           [ImageColor.getrgb(client_render.colour(k)) for k in CLASS_IDS]
    # and as many distinct colours as the palette has: a rule that gave every class one colour fails
    assert len({server_render.colour(k) for k in CLASS_IDS}) == len(server_render.PALETTE) >= 10


# Every palette entry, and ids past the first cycle (COCO's ids reach 90).
@pytest.mark.parametrize("class_id", [*range(len(server_render.PALETTE)), 13, 90, 200])
def test_each_renderer_draws_a_class_in_its_colour(class_id, decoded_image):
    expected = ImageColor.getrgb(server_render.colour(class_id))
    for drawn in (server_drawn(class_id, decoded_image), client_drawn(class_id)):
        assert nearest(drawn, server_render.PALETTE) == server_render.colour(class_id), (class_id, drawn, expected)
        assert max(abs(a - b) for a, b in zip(drawn, expected)) <= 8, (class_id, drawn, expected)
