"""The frozen CLIP backbone with DPAM dual-stream attention and deep text prompts.

Implements ``docs/method.md`` §2 (backbone adaptation) and §3.4 (text encoding).

An adapted forward over open_clip's own modules (no vendored CLIP):

* Vision: patch embedding, class token, positional embedding resized bilinearly (align_corners
  False) from the checkpoint's native grid for every input size (never overwritten), ln_pre,
  then the transformer blocks. The last ``dpam_layers`` blocks run two streams with the same
  weights: the original stream ``x_o`` (the block as it is) and the DPAM stream ``x_d``, which
  adds at every DPAM block the V-V attention of ``ln_1(x_o)`` (heads, scale and biases as the
  block's own attention, then its out-projection) and skips the MLP. ``x_d`` starts from the
  input of the first DPAM block.
* Patch features of the selected layers: the DPAM stream (the plain one before DPAM starts),
  then ``ln_post`` and the projection. With ``layer_aliasing`` (faithful default) every layer at
  or after the last plain block yields the DPAM stream after the LAST block, as the released
  code does through an in-place update of a stored tensor; without it, true per-layer features.
* Extra per-layer features on request (the few-shot mode's, see
  :mod:`s2swclip.model.references`): the plain or the DPAM stream at any layers, from the same
  forward pass, never aliased, then ``ln_post`` and the projection.
* Global feature: class token of the original stream after the last block times the projection,
  without ``ln_post`` in faithful mode (``global_ln_post=False``), with it otherwise (then it
  equals open_clip's ``encode_image``).
* Text: the causal text transformer with learnable context embeddings and deep prompts replacing
  positions ``1..t`` before blocks ``1..len(deep)``; faithful mode rounds the deep prompts to
  float16 precision first. Output: ``ln_final`` at the EOT position times ``text_projection``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class S2SWBackbone(nn.Module):
    """Wraps an ``open_clip.CLIP`` (ViT tower, standard text tower); weights stay frozen.

    Args:
        clip: the open_clip model.
        feature_layers: 1-based vision layers whose patch features are returned.
        dpam_layers: number of final vision blocks that run DPAM (0 disables it).
        layer_aliasing: reproduce the released code's aliasing of the stored layer features.
        global_ln_post: apply ``ln_post`` to the global feature (open_clip's convention).
        round_deep_prompts: round deep text prompts to float16 precision (released code).
    """

    def __init__(
        self,
        clip: nn.Module,
        feature_layers: tuple[int, ...] = (6, 12, 18, 24),
        dpam_layers: int = 19,
        layer_aliasing: bool = True,
        global_ln_post: bool = False,
        round_deep_prompts: bool = True,
    ):
        super().__init__()
        self.clip = clip
        self.clip.requires_grad_(False)
        visual = clip.visual
        n_blocks = len(visual.transformer.resblocks)
        if any(not 1 <= layer <= n_blocks for layer in feature_layers):
            raise ValueError(f"feature_layers {tuple(feature_layers)} must lie in 1..{n_blocks}")
        if not 0 <= dpam_layers <= n_blocks:
            raise ValueError(f"dpam_layers must lie in 0..{n_blocks}, got {dpam_layers}")
        self.feature_layers = tuple(int(x) for x in feature_layers)
        self.dpam_start = n_blocks - dpam_layers  # 0-based index of the first DPAM block
        self.layer_aliasing = layer_aliasing
        self.global_ln_post = global_ln_post
        self.round_deep_prompts = round_deep_prompts
        self.patch_size = int(visual.conv1.kernel_size[0])
        self.native_grid = int(round((visual.positional_embedding.shape[0] - 1) ** 0.5))
        self.embed_dim = int(visual.proj.shape[1])
        self.text_width = int(clip.token_embedding.weight.shape[1])
        self.context_length = int(clip.positional_embedding.shape[0])

    # ----------------------------------------------------------------------------------- vision
    def positional_embedding(self, grid: int) -> torch.Tensor:
        """[G*G+1, W] positional embedding for a grid side, resized from the native table."""
        pos = self.clip.visual.positional_embedding
        if grid == self.native_grid:
            return pos
        g0, width = self.native_grid, pos.shape[1]
        patch = pos[1:].reshape(1, g0, g0, width).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, size=(grid, grid), mode="bilinear", align_corners=False)
        patch = patch.reshape(width, grid * grid).transpose(0, 1)
        return torch.cat([pos[:1], patch], dim=0)

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> the tokens entering the first block [B, 1 + G*G, W]: patch embedding,
        class token, positional embedding (resized to the grid), ``ln_pre``."""
        visual = self.clip.visual
        x = visual.conv1(images.to(visual.conv1.weight.dtype))  # [B, W, G, G]
        grid = x.shape[-1]
        x = x.flatten(2).transpose(1, 2)  # [B, G*G, W]
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + self.positional_embedding(grid).to(x.dtype)
        return visual.ln_pre(x)

    def _run_blocks(self, x: torch.Tensor, extra: set[int], extra_stream: str):
        """The transformer blocks (DPAM from ``dpam_start`` on, docs/method.md §2). Returns the
        last block's output, the final DPAM stream (None without DPAM layers) and the plain and
        DPAM outputs kept by 1-based layer (the feature layers and the ``extra`` ones)."""
        wanted = set(self.feature_layers)
        plain_out: dict[int, torch.Tensor] = {}
        dpam_out: dict[int, torch.Tensor] = {}
        x_d = None
        for i, block in enumerate(self.clip.visual.transformer.resblocks):
            layer = i + 1
            if i < self.dpam_start:
                x = _run_block(block, x)
                if layer in wanted or layer in extra:
                    plain_out[layer] = x
            else:
                if x_d is None:
                    x_d = x
                x, vv = _dpam_block(block, x)
                x_d = x_d + vv
                if layer in wanted or (layer in extra and extra_stream == "dpam"):
                    dpam_out[layer] = x_d
                if layer in extra and extra_stream == "plain":
                    plain_out[layer] = x
        return x, x_d, plain_out, dpam_out

    def encode_image(self, images: torch.Tensor, extra_layers: tuple[int, ...] = (),
                     extra_stream: str = "plain"):
        """Run the vision tower.

        Args:
            images: [B, 3, S, S] CLIP-normalised.
            extra_layers: 1-based layers whose features are returned in addition, from the
                same forward pass (the few-shot mode's reference features); never aliased.
            extra_stream: stream of the extra features: ``"plain"`` (the original stream, the
                block outputs as open_clip computes them) or ``"dpam"`` (the DPAM stream; the
                plain one at layers before DPAM starts).

        Returns:
            ``(global_feature [B, C], patch_features)`` where ``patch_features`` is a list (one
            entry per ``feature_layers``) of [B, N, C] tensors, N = (S // P)^2 + 1. Entries that
            are the same feature (layer aliasing) are the same tensor object. With
            ``extra_layers``, a third item: a list of [B, N, C] tensors, one per extra layer
            (after ``ln_post`` and the projection, like the patch features).
        """
        if extra_stream not in ("plain", "dpam"):
            raise ValueError(f"extra_stream must be 'plain' or 'dpam', got {extra_stream!r}")
        n_blocks = len(self.clip.visual.transformer.resblocks)
        if any(not 1 <= layer <= n_blocks for layer in extra_layers):
            raise ValueError(f"extra_layers {tuple(extra_layers)} must lie in 1..{n_blocks}")
        visual = self.clip.visual
        x, x_d, plain_out, dpam_out = self._run_blocks(self._embed(images), set(extra_layers), extra_stream)
        final_dpam = x_d
        tokens: list[torch.Tensor] = []
        for layer in self.feature_layers:
            if self.layer_aliasing and final_dpam is not None and layer >= self.dpam_start:
                tokens.append(final_dpam)
            elif layer in dpam_out:
                tokens.append(dpam_out[layer])
            else:
                tokens.append(plain_out[layer])
        projected: dict[int, torch.Tensor] = {}
        patch_features = []
        for t in tokens:  # ln_post + projection once per distinct tensor
            if id(t) not in projected:
                projected[id(t)] = visual.ln_post(t) @ visual.proj
            patch_features.append(projected[id(t)])

        cls_token = x[:, 0]
        if self.global_ln_post:
            cls_token = visual.ln_post(cls_token)
        glob = cls_token @ visual.proj
        if not extra_layers:
            return glob, patch_features
        extra_features = []
        for layer in extra_layers:
            t = dpam_out[layer] if extra_stream == "dpam" and layer in dpam_out else plain_out[layer]
            if id(t) not in projected:
                projected[id(t)] = visual.ln_post(t) @ visual.proj
            extra_features.append(projected[id(t)])
        return glob, patch_features, extra_features

    # ------------------------------------------------------------------------------------- text
    def token_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        """[P, L] token ids -> [P, L, W] word embeddings."""
        return self.clip.token_embedding(tokens)

    def encode_text(
        self,
        embeddings: torch.Tensor,
        eot_index: torch.Tensor,
        deep_prompts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encode prompt embeddings with deep prompts.

        Args:
            embeddings: [P, L, W] token embeddings (context positions already hold the learnable
                context vectors).
            eot_index: [P] position of the EOT token of each prompt.
            deep_prompts: [D, t, W]; ``deep_prompts[k]`` replaces positions ``1..t`` before text
                block ``k + 1``. ``None`` or D = 0: no deep prompts.

        Returns:
            [P, C] text features (unnormalised).
        """
        clip = self.clip
        x = embeddings + clip.positional_embedding.to(embeddings.dtype)
        mask = clip.attn_mask
        n_deep = 0 if deep_prompts is None else deep_prompts.shape[0]
        for i, block in enumerate(clip.transformer.resblocks):
            if 1 <= i <= n_deep:
                deep = deep_prompts[i - 1]
                if self.round_deep_prompts:
                    deep = deep.half()
                deep = deep.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :1], deep, x[:, 1 + deep.shape[1]:]], dim=1)
            x = _run_block(block, x, attn_mask=mask)
        x = clip.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot_index]
        proj = clip.text_projection
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj


def _run_block(block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """An open_clip residual block on batch-first input, whatever its own layout."""
    if getattr(block.attn, "batch_first", True):
        return block(x, attn_mask=attn_mask)
    return block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)


def _dpam_block(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One DPAM block: returns (original stream output, V-V attention branch to add to x_d).

    x: [B, N, W]. Both attentions use the block's in-projection (with biases), head split and
    scale head_dim^-0.5, and its out-projection.
    """
    attn: nn.MultiheadAttention = block.attn
    b, n, w = x.shape
    heads = attn.num_heads
    h = block.ln_1(x)
    qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)  # [B, N, 3W]
    qkv = qkv.view(b, n, 3, heads, w // heads).permute(2, 0, 3, 1, 4)  # [3, B, H, N, hd]
    q, k, v = qkv.unbind(0)
    out = F.scaled_dot_product_attention(q, k, v)
    vv = F.scaled_dot_product_attention(v, v, v)
    both = torch.cat([out, vv], dim=0).transpose(1, 2).reshape(2 * b, n, w)
    both = F.linear(both, attn.out_proj.weight, attn.out_proj.bias)
    out, vv = both[:b], both[b:]
    x = x + block.ls_1(out)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, block.ls_1(vv)
