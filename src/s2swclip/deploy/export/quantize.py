"""int8 post-training quantisation of the OpenVINO encoder with NNCF (transformer model type).

The calibration images are normal images of the user's product: NNCF collects activation
statistics on them and places int8 quantisers on the encoder's matrix multiplications
(``ModelType.TRANSFORMER``: SmoothQuant for the activations' outlier channels, no quantisers
on the attention softmax or layer norms). The head is never quantised.

The final projections of the image tokens (``x @ proj``: ``torch.export`` writes them as
``view -> mm -> view``) stay float32: quantised, OpenVINO's CPU plugin cannot compile the
reshape of their dequantised output back to ``[batch, tokens, dim]`` when the batch is dynamic
(ViT-L-14-336 at 518 px fails to load). They are 2 of the ~100 matrix products; every
transformer layer's are quantised.
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["quantize_int8"]

log = logging.getLogger(__name__)

#: OpenVINO node names of the token projections (``aten.mm``; the layers' products are ``aten.linear``)
PROJECTION_PATTERN = r".*aten\.mm\.default.*"


def quantize_int8(encoder, images: np.ndarray):
    """Quantise the OpenVINO ``encoder`` model with ``images`` float32 [n, 3, S, S].

    Returns:
        The quantised ``openvino.Model``.
    """
    import nncf

    log.info("quantising the encoder to int8 with NNCF on %d calibration image(s)", len(images))
    items = [np.ascontiguousarray(images[i:i + 1], dtype=np.float32) for i in range(len(images))]
    keep_fp32 = nncf.IgnoredScope(patterns=[PROJECTION_PATTERN], validate=False)
    return nncf.quantize(encoder, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER,
                         subset_size=len(items), ignored_scope=keep_fp32)
