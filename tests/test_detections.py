"""Detections: the one result type, sorted, named and serialized."""

import pytest
import torch

from objdetect.detections import Detections

pytestmark = pytest.mark.unit


def test_detections_are_sorted_by_score_and_named(shapes_labels, model_output):
    detections = Detections.from_model_output(model_output, shapes_labels)
    assert detections.scores.tolist() == pytest.approx([0.95, 0.6, 0.2])
    assert detections.labels == ("square", "circle", "triangle")
    assert detections.class_ids.tolist() == [2, 1, 3]


def test_json_form_is_rounded_and_complete():
    detections = Detections(torch.tensor([[1.23456, 2.0, 3.0, 4.98765]]), torch.tensor([0.987654]),
                            torch.tensor([2]), ("square",))
    assert detections.to_json() == [{"label": "square", "class_id": 2, "score": 0.9877,
                                     "box": [1.23, 2.0, 3.0, 4.99]}]


def test_select_first_and_scaled_keep_the_columns_together(shapes_labels, model_output):
    detections = Detections.from_model_output(model_output, shapes_labels)
    kept = detections.select(detections.scores > 0.5).first(1).scaled(2.0, 0.5)
    assert kept.labels == ("square",) and kept.class_ids.tolist() == [2]
    assert kept.boxes.tolist() == [[60.0, 2.5, 120.0, 12.5]] and kept.scores.tolist() == pytest.approx([0.95])
