"""Backbone adaptation (``docs/method.md`` §2) against open_clip and a plain transcription."""

import numpy as np
import open_clip
import pytest
import torch

from s2swclip.model.backbone import S2SWBackbone
from s2swclip.model.weights import create_clip

TINY = "S2SW-Tiny-24L"


@pytest.fixture(scope="module")
def clip():
    model, _ = create_clip(TINY, None, seed=3)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():  # non-trivial biases/LN parameters so every term is exercised
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln" in name or name.startswith("ln"):
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def test_plain_encoders_equal_open_clip(clip):
    bb = S2SWBackbone(clip, dpam_layers=0, layer_aliasing=False, global_ln_post=True,
                      round_deep_prompts=False)
    x = torch.randn(2, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        glob, patches = bb.encode_image(x)
        ref = clip.encode_image(x)
        assert (glob - ref).abs().max() <= 1e-5
        assert (patches[-1][:, 0] - ref).abs().max() <= 1e-5  # class token of the last layer
        tokens = open_clip.tokenize(["a photo of a damaged object.", "object."])
        text = bb.encode_text(bb.token_embedding(tokens), tokens.argmax(-1))
        assert (text - clip.encode_text(tokens)).abs().max() <= 1e-5


def _reference_forward(clip, x, dpam_start, layers):
    """Straightforward two-stream transcription in float64 with explicit per-head loops."""
    v = clip.visual
    d = lambda t: t.detach().double()
    grid = x.shape[-1] // 14
    pos = d(v.positional_embedding)
    g0 = int(round((pos.shape[0] - 1) ** 0.5))
    if grid != g0:
        patch = torch.nn.functional.interpolate(
            pos[1:].reshape(1, g0, g0, -1).permute(0, 3, 1, 2), size=(grid, grid),
            mode="bilinear", align_corners=False)
        pos = torch.cat([pos[:1], patch.permute(0, 2, 3, 1).reshape(grid * grid, -1)])
    h = torch.nn.functional.conv2d(x.double(), d(v.conv1.weight), stride=14).flatten(2).transpose(1, 2)
    h = torch.cat([d(v.class_embedding).expand(h.shape[0], 1, -1), h], 1) + pos
    ln = lambda m, t: torch.nn.functional.layer_norm(t, t.shape[-1:], d(m.weight), d(m.bias), m.eps)
    h = ln(v.ln_pre, h)
    outs, xd = {}, None
    for i, blk in enumerate(v.transformer.resblocks):
        a = blk.attn
        W = h.shape[-1]
        heads = a.num_heads
        hd = W // heads
        y = ln(blk.ln_1, h)
        qkv = y @ d(a.in_proj_weight).T + d(a.in_proj_bias)
        q, k, vv = qkv[..., :W], qkv[..., W:2 * W], qkv[..., 2 * W:]
        o_std, o_vv = [], []
        for hh in range(heads):
            sl = slice(hh * hd, (hh + 1) * hd)
            att = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) * hd ** -0.5, -1)
            o_std.append(att @ vv[..., sl])
            att2 = torch.softmax(vv[..., sl] @ vv[..., sl].transpose(1, 2) * hd ** -0.5, -1)
            o_vv.append(att2 @ vv[..., sl])
        proj = lambda t: torch.cat(t, -1) @ d(a.out_proj.weight).T + d(a.out_proj.bias)
        if i >= dpam_start:
            xd = h.clone() if xd is None else xd
            xd = xd + proj(o_vv)
        h = h + proj(o_std)
        y = ln(blk.ln_2, h) @ d(blk.mlp.c_fc.weight).T + d(blk.mlp.c_fc.bias)
        y = y * torch.sigmoid(1.702 * y)  # QuickGELU
        h = h + y @ d(blk.mlp.c_proj.weight).T + d(blk.mlp.c_proj.bias)
        if i + 1 in layers:
            outs[i + 1] = (xd if i >= dpam_start else h).clone()
    feats = {k: ln(v.ln_post, t) @ d(v.proj) for k, t in outs.items()}
    return h[:, 0] @ d(v.proj), feats, ln(v.ln_post, xd) @ d(v.proj)


@pytest.mark.parametrize("size", [224, 336])
def test_dpam_two_streams_match_transcription(clip, size):
    layers = (3, 6, 12, 18, 24)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
    ref_glob, ref_feats, ref_last = _reference_forward(clip, x, dpam_start=5, layers=layers)
    with torch.no_grad():
        true_bb = S2SWBackbone(clip, feature_layers=layers, dpam_layers=19, layer_aliasing=False)
        glob, feats = true_bb.encode_image(x)
        assert (glob.double() - ref_glob).abs().max() < 1e-5  # no ln_post on the global feature
        for layer, f in zip(layers, feats):
            assert (f.double() - ref_feats[layer]).abs().max() < 1e-5, layer
        alias_bb = S2SWBackbone(clip, feature_layers=layers, dpam_layers=19, layer_aliasing=True)
        _, feats = alias_bb.encode_image(x)
    # faithful aliasing: layer 3 precedes DPAM (own features); 6..24 all equal the last DPAM stream
    assert (feats[0].double() - ref_feats[3]).abs().max() < 1e-5
    for f in feats[1:]:
        assert f is feats[1]
        assert (f.double() - ref_last).abs().max() < 1e-5
    # and the true layer-6 features differ from the aliased ones
    assert (ref_feats[6] - ref_last).abs().max() > 1e-3


def test_aliasing_includes_last_plain_layer(clip):
    # the released code adds the first DPAM block's V-V output in place to its input, which is
    # the stored output of the last plain layer when that layer is selected
    bb = S2SWBackbone(clip, feature_layers=(4, 5, 24), dpam_layers=19, layer_aliasing=True)
    with torch.no_grad():
        _, feats = bb.encode_image(torch.randn(1, 3, 224, 224))
    assert feats[1] is feats[2] and feats[0] is not feats[1]


def test_positional_embedding_resize_matches_numpy_bilinear(clip):
    bb = S2SWBackbone(clip)
    table = clip.visual.positional_embedding.detach().numpy().astype(np.float64)
    g0, grid = 24, 37
    src = table[1:].reshape(g0, g0, -1)

    def coords(n_out, n_in):
        c = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
        c = np.clip(c, 0, None)
        lo = np.minimum(np.floor(c).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, c - lo

    lo, hi, w = coords(grid, g0)
    rows = src[lo] * (1 - w)[:, None, None] + src[hi] * w[:, None, None]
    out = rows[:, lo] * (1 - w)[None, :, None] + rows[:, hi] * w[None, :, None]
    got = bb.positional_embedding(grid).detach().numpy()
    assert np.abs(got[1:] - out.reshape(grid * grid, -1)).max() < 1e-5
    assert np.array_equal(got[0], table[0].astype(np.float32))
    # the original table is untouched
    assert clip.visual.positional_embedding.shape[0] == g0 * g0 + 1


def test_deep_prompts_replace_positions_and_round_fp16(clip):
    tokens = open_clip.tokenize(["X X X X X X object.", "X X X X X X damaged object."])
    deep = torch.randn(8, 4, 64, generator=torch.Generator().manual_seed(1)) * 0.3
    with torch.no_grad():
        bb = S2SWBackbone(clip, round_deep_prompts=True)
        emb = bb.token_embedding(tokens)
        got = bb.encode_text(emb, tokens.argmax(-1), deep)
        # transcription: replace positions 1..4 before blocks 1..8 with fp16-rounded vectors
        x = emb + clip.positional_embedding
        for i, blk in enumerate(clip.transformer.resblocks):
            if 1 <= i <= 8:
                x = x.clone()
                x[:, 1:5] = deep[i - 1].half().float()
            x = blk(x, attn_mask=clip.attn_mask)
        x = clip.ln_final(x)[torch.arange(2), tokens.argmax(-1)] @ clip.text_projection
        assert (got - x).abs().max() < 1e-5
        unrounded = S2SWBackbone(clip, round_deep_prompts=False).encode_text(emb, tokens.argmax(-1), deep)
        assert (unrounded - got).abs().max() > 1e-6  # the rounding is real
