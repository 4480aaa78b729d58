"""The export modules compute what ``predict`` computes, with the text features as constants."""

import torch

from s2swclip.export.graph import DetectorGraph, alias_layout
from s2swclip.model.detector import TEXT_SETS
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
    assert alias_layout(own_detector) == (0, 0, 0, 0)  # faithful: all four layers are the last DPAM stream
    own_detector.backbone.layer_aliasing = False
    assert alias_layout(own_detector) == (0, 1, 2, 3)
    graph = DetectorGraph(own_detector).eval()
    images = make_images(2, 224, seed=5)
    with torch.no_grad():
        outs = graph.encoder(images)
        scores, maps = graph(images)
    assert len(outs) == 5  # global + four distinct layers
    want = own_detector.predict(images)
    assert torch.equal(scores, want.image_scores) and torch.equal(maps, want.anomaly_maps)
