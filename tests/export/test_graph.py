"""The export modules compute what ``predict`` computes, with the text features as constants."""

import pytest
import torch

from s2swclip.deploy.export.graph import DetectorGraph, feature_layout
from s2swclip.model.detector import TEXT_SETS
from s2swclip.model.portable import portable_forms
from helpers import make_images


def test_graph_equals_predict_and_bakes_text(own_detector):
    det = own_detector
    graph = DetectorGraph(det).eval()
    images = make_images(3, 224, seed=4)
    want = det.predict(images)
    with torch.no_grad():
        scores, maps = graph(images)
    assert torch.equal(scores, want.image_scores) and torch.equal(maps, want.anomaly_maps)
    with torch.no_grad():
        text = det.text_features()
    for k in TEXT_SETS:  # constants (buffers) equal to the detector's text features
        assert torch.equal(getattr(graph.head, f"text_{k}"), text.unit[k])
    assert not any(n.startswith("head.") and "backbone" in n for n, _ in graph.named_parameters())
    with torch.no_grad():  # later prompt changes do not reach the graph: it holds constants
        for p in det.prompts.parameters():
            p.add_(1.0)
        scores2, maps2 = graph(images)
    assert torch.equal(scores2, scores) and torch.equal(maps2, maps)
    assert not torch.equal(det.predict(images).image_scores, scores)


def test_alias_layout(own_detector):
    assert feature_layout(own_detector) == ((0, 0, 0, 0), ())  # faithful: all four layers are the last DPAM stream
    own_detector.backbone.layer_aliasing = False
    assert feature_layout(own_detector) == ((0, 1, 2, 3), ())
    graph = DetectorGraph(own_detector).eval()
    images = make_images(2, 224, seed=5)
    with torch.no_grad():
        outs = graph.encoder(images)
        scores, maps = graph(images)
    assert len(outs) == 5  # global + four distinct layers
    want = own_detector.predict(images)
    assert torch.equal(scores, want.image_scores) and torch.equal(maps, want.anomaly_maps)


@pytest.mark.parametrize("weight", [0.5, 1.0])
def test_graph_with_references_equals_predict(own_detector, weight):
    det = own_detector
    det.config = det.config.replace(few_shot_weight=weight)
    det.set_references(make_images(2, 224, seed=6))
    zero_shot = weight != 1
    # the default few-shot layers 6/12/18/24 of the plain stream: four tensors of their own
    assert feature_layout(det) == (((0, 0, 0, 0), (1, 2, 3, 4)) if zero_shot else ((), (0, 1, 2, 3)))
    graph = DetectorGraph(det).eval()
    images = make_images(3, 224, seed=7)
    want = det.predict(images)
    with torch.no_grad():
        feats = graph.encoder(images)
        scores, maps = graph(images)
        with portable_forms():
            p_scores, p_maps = graph(images)
    assert len(feats) == (1 + 1 + 4 if zero_shot else 4)  # [global, DPAM patches,] four few-shot layers
    assert torch.equal(scores, want.image_scores) and torch.equal(maps, want.anomaly_maps)
    torch.testing.assert_close(p_scores, scores, rtol=0, atol=1e-6)  # the export's forms: all queries at once
    torch.testing.assert_close(p_maps, maps, rtol=0, atol=1e-5)
    buffers = dict(graph.head.named_buffers())
    for layer, bank in zip(det.references.layers, det.references.banks):
        assert buffers[f"bank_{layer}"].dtype == torch.float32 and torch.equal(buffers[f"bank_{layer}"], bank)
    assert any(n.startswith("text_") for n in buffers) == zero_shot  # weight 1: the prompts play no part
    det.clear_references()  # the graph holds constants: the detector's later state does not reach it
    with torch.no_grad():
        again = graph(images)
    assert torch.equal(again[0], scores) and torch.equal(again[1], maps)
