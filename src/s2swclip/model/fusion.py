"""Cross-informative adaptive fusion of the three prompt families' text features.

Implements ``docs/method.md`` §4. For each
state row ``s`` (0 = normal, 1 = anomaly) with UNNORMALISED features
``a = generic[s]``, ``b = contrastive[s]``, ``r = referenced[s]``:

* ``rho`` = Pearson correlation of ``a`` and ``b`` over the ``C`` channels
  (``np.corrcoef(a, b)[0, 1]``, clipped to ``[-1, 1]`` as NumPy does);
* keep those of ``{a, b}`` whose population variance (ddof 0) is STRICTLY greater
  than ``variance_threshold`` (what scikit-learn's
  ``VarianceThreshold(0.1).fit_transform(np.vstack([a, b]).T).T`` keeps);
  ``m`` = mean of the kept rows;
* ``fused[s] = rho * m + r``.

When neither row passes, scikit-learn raises; here both rows are kept and a
:class:`UserWarning` is emitted. The computation runs in float64 and the result
is cast back to the input dtype; the caller normalises. Autograd flows through
(the released code computes the fusion in NumPy, i.e. as a constant: faithful
callers pass detached inputs; ``docs/method.md`` §10.5, §10.6).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

__all__ = ["adaptive_fusion"]


def adaptive_fusion(
    generic: Tensor,
    contrastive: Tensor,
    referenced: Tensor,
    variance_threshold: float = 0.1,
) -> Tensor:
    """Fuse the generic, contrastive and referenced text features (``docs/method.md`` §4).

    Args:
        generic: Tensor of shape ``[2, C]``, object-agnostic family (row 0 normal,
            row 1 anomaly), unnormalised. Any number of rows ``K`` works; each row is
            fused independently.
        contrastive: Tensor of shape ``[2, C]``, contrastive-vocabulary family.
        referenced: Tensor of shape ``[2, C]``, anomaly-referenced family.
        variance_threshold: a row of ``{generic, contrastive}`` takes part in the
            mean only if its population variance over ``C`` is strictly greater.

    Returns:
        Tensor of shape ``[2, C]``: the unnormalised fused features, in the dtype
        and on the device of ``generic``.

    Warns:
        UserWarning: for each state where neither ``generic`` nor ``contrastive``
            passes the variance threshold (both are then averaged).

    Example:
        >>> g, c, r = torch.randn(3, 2, 768).unbind(0)
        >>> adaptive_fusion(g, c, r).shape
        torch.Size([2, 768])
    """
    if generic.dim() != 2 or generic.shape != contrastive.shape or generic.shape != referenced.shape:
        raise ValueError(
            "adaptive_fusion expects three [K, C] tensors of equal shape, got "
            f"{tuple(generic.shape)}, {tuple(contrastive.shape)}, {tuple(referenced.shape)}"
        )
    out_dtype = generic.dtype
    a = generic.to(torch.float64)
    b = contrastive.to(torch.float64)
    r = referenced.to(torch.float64)

    # Pearson correlation per row (NaN for a constant row, like numpy).
    ac = a - a.mean(dim=-1, keepdim=True)
    bc = b - b.mean(dim=-1, keepdim=True)
    cov = (ac * bc).mean(dim=-1)
    std_a = ac.pow(2).mean(dim=-1).sqrt()
    std_b = bc.pow(2).mean(dim=-1).sqrt()
    rho = (cov / std_a / std_b).clamp(-1.0, 1.0)  # [K]

    # Population variance of each candidate row; keep those strictly above the threshold.
    pair = torch.stack([a, b], dim=1)  # [K, 2, C]
    var = pair.var(dim=-1, correction=0)  # [K, 2]
    keep = var > variance_threshold  # NaN variance -> not kept, as in scikit-learn
    none_kept = ~keep.any(dim=1)  # [K]
    if bool(none_kept.any()):
        rows = none_kept.nonzero().flatten().tolist()
        warnings.warn(
            f"adaptive_fusion: neither the generic nor the contrastive feature of state row(s) {rows} "
            f"has a variance above {variance_threshold}; averaging both (scikit-learn would raise).",
            UserWarning,
            stacklevel=2,
        )
        keep = keep | none_kept[:, None]
    w = keep.to(torch.float64)
    m = (pair * w[..., None]).sum(dim=1) / w.sum(dim=1, keepdim=True)  # [K, C]

    fused = rho[:, None] * m + r
    return fused.to(out_dtype)
