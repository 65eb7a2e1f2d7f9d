"""
minisam: Segment Anything (Kirillov et al., "Segment Anything", ICCV 2023) in one file.

Read it top to bottom; the sections follow the paper's Figure 4:

    image --> [1 image encoder] --> image_embedding ----------.
                                                               v
    prompts --> [2 prompt encoder] --> sparse/dense prompt --> [3 mask decoder] --> masks, IoU
                                                               ^
                                  [4 losses] train it ---------'
    [5 predictor]  one image_embedding, many clicks (interactive use)
    [6 automatic masks]  a grid of clicks, then keep confident, stable, unique masks

Module names mirror the released reference so that the official checkpoints
(sam_vit_b_01ec64.pth, ...) load with `build_sam("vit_b", checkpoint=...)`.
"""

import importlib.util
import math
from dataclasses import asdict, dataclass
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# 0. Configuration
# One dataclass holds every size of the model. The three released presets (appendix A,
# "Image encoder") differ only in the ViT; prompt encoder and decoder are the same ~4M
# parameters in all of them. "toy" is the same architecture shrunk to train on a laptop CPU.


@dataclass(frozen=True)
class SamConfig:
    image_size: int = 64  # the encoder's square input side, in pixels
    patch_size: int = 4  # token grid = image_size // patch_size per side
    encoder_embed_dim: int = 96
    encoder_depth: int = 4
    encoder_num_heads: int = 4
    encoder_global_attn_indexes: Tuple[int, ...] = (1, 3)  # all other blocks are windowed
    window_size: int = 8  # in tokens
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 64  # width of tokens, image embedding and decoder
    mask_in_chans: int = 16  # hidden channels when a mask prompt is downscaled
    decoder_depth: int = 2
    # 2 heads: 16 dims per head in the half-width cross-attentions, where 4 heads leave 8; the
    # toy then leaves its plateau sooner (lessons/experiments.md, "Does the size of the model
    # matter?")
    decoder_num_heads: int = 2
    decoder_mlp_dim: int = 256
    num_multimask_outputs: int = 3  # whole, part, subpart
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 64
    pixel_mean: Tuple[float, float, float] = (123.675, 116.28, 103.53)  # ImageNet, on 0..255
    pixel_std: Tuple[float, float, float] = (58.395, 57.12, 57.375)

    @property
    def image_embedding_size(self) -> int:
        return self.image_size // self.patch_size


_FULL_SIZE = dict(image_size=1024, patch_size=16, window_size=14, prompt_embed_dim=256,
                  decoder_num_heads=8, decoder_mlp_dim=2048, iou_head_hidden_dim=256)
CONFIGS = {
    "toy": SamConfig(),
    "vit_b": SamConfig(encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12,
                       encoder_global_attn_indexes=(2, 5, 8, 11), **_FULL_SIZE),
    "vit_l": SamConfig(encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16,
                       encoder_global_attn_indexes=(5, 11, 17, 23), **_FULL_SIZE),
    "vit_h": SamConfig(encoder_embed_dim=1280, encoder_depth=32, encoder_num_heads=16,
                       encoder_global_attn_indexes=(7, 15, 23, 31), **_FULL_SIZE),
}


# Two small pieces used all over the model.

class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of every pixel of a (B, C, H, W) map (as in ConvNeXt)."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # channels last, so layer_norm sees C as the last dim
        x = F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class MLPBlock(nn.Module):
    """The transformer's feed-forward layer: widen, nonlinearity, project back."""

    def __init__(self, dim: int, hidden_dim: int, act: type = nn.GELU):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden_dim)
        self.lin2 = nn.Linear(hidden_dim, dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


# -----------------------------------------------------------------------------
# 1. Image encoder (paper section 3 and appendix A, "Image encoder")
# An MAE-pretrained ViT, adapted to high resolution as in ViTDet: 16x16 patches turn a
# 1024x1024 image into a 64x64 grid of tokens. Global attention over 4096 tokens is costly,
# so most blocks attend inside 14x14 windows and only a few equally spaced blocks attend
# globally. Every block adds decomposed relative positions to its attention logits. A small
# convolutional neck brings the width down to the decoder's 256 channels. The encoder is by
# far the heaviest part and runs once per image; everything after it is cheap, which is what
# makes SAM interactive.


class PatchEmbed(nn.Module):
    """Cut the image into non-overlapping patches and project each to a token."""

    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # (B, 3, S, S) -> (B, g, g, C)


def relative_position_bias(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                           size: Tuple[int, int], first_row: int = 0) -> torch.Tensor:
    """Decomposed relative positions (MViTv2): the logit of query (h, w) and key (h', w') gets
    q . R_h[h - h'] + q . R_w[w - w']. Two 1-D tables replace one 2-D table, so a 64x64 grid
    needs 2 x 127 learned vectors instead of 127^2.
    q: (B, r*w, d) unscaled queries of the grid rows first_row .. first_row + r - 1 (all h rows
    by default); tables (2h-1, d), (2w-1, d); returns (B, r*w, h*w)."""
    h, w = size
    rows = q.shape[1] // w
    ih, iw = torch.arange(h, device=q.device), torch.arange(w, device=q.device)
    qh = ih[first_row:first_row + rows]
    R_h = rel_pos_h[qh[:, None] - ih[None, :] + h - 1]  # (r, h', d): offset h - h' shifted >= 0
    R_w = rel_pos_w[iw[:, None] - iw[None, :] + w - 1]  # (w, w', d)
    q = q.reshape(q.shape[0], rows, w, -1)
    # einsum may hand back permuted views; made contiguous, the large sum below is laid out
    # in order and the final reshape costs nothing (else it copies the whole bias)
    bias_h = torch.einsum("brwd,rkd->brwk", q, R_h).contiguous()  # (B, r, w, h')
    bias_w = torch.einsum("brwd,wkd->brwk", q, R_w).contiguous()  # (B, r, w, w')
    bias = bias_h[..., :, None] + bias_w[..., None, :]  # (B, r, w, h', w')
    return bias.reshape(q.shape[0], rows * w, h * w)


class EncoderAttention(nn.Module):
    """Multi-head self-attention over a (B, h, w, C) grid of tokens, each head computing
    softmax(q k^T * scale + relative position bias) v."""

    def __init__(self, dim: int, num_heads: int, grid: int):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # grid = the side this attention sees: the window, or the whole token grid
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, h, w, C = x.shape
        qkv = self.qkv(x).reshape(B, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, B * self.num_heads, h * w, -1)  # each (B*heads, h*w, d)
        # Each query's softmax is its own, so a few grid rows of queries of a few heads at a
        # time give the same numbers in a fraction of the memory (section 7).
        x = torch.empty_like(q)
        for heads, tokens in attention_pieces(len(q), h, w, q.element_size()):
            x[heads, tokens] = self.attend(q[heads, tokens], k[heads], v[heads], (h, w),
                                           first_row=tokens.start // w)
        x = x.view(B, self.num_heads, h, w, -1)
        return self.proj(x.permute(0, 2, 3, 1, 4).reshape(B, h, w, C))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: Tuple[int, int],
               first_row: int) -> torch.Tensor:
        """softmax(q k^T * scale + relative position bias) v for the queries q (n, r*w, d) of
        the r grid rows from first_row on, and all keys and values (n, h*w, d)."""
        bias = relative_position_bias(q, self.rel_pos_h, self.rel_pos_w, size, first_row)
        logits = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=self.scale)  # + q k^T * scale
        return logits.softmax(dim=-1) @ v


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nH * nW, window, window, C), zero-padding H, W up to multiples of
    the window. The padding tokens are not masked: they take part in attention as zeros, as in
    the released model."""
    B, H, W, C = x.shape
    Hp, Wp = -(-H // window) * window, -(-W // window) * window
    x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
    x = x.view(B, Hp // window, window, Wp // window, window, C).transpose(2, 3)
    return x.reshape(-1, window, window, C)


def window_unpartition(windows: torch.Tensor, window: int, size: Tuple[int, int]) -> torch.Tensor:
    """Inverse of window_partition: stitch the windows back together and drop the padding."""
    H, W = size
    Hp, Wp = -(-H // window) * window, -(-W // window) * window
    B = windows.shape[0] // ((Hp // window) * (Wp // window))
    x = windows.view(B, Hp // window, Wp // window, window, window, -1).transpose(2, 3)
    return x.reshape(B, Hp, Wp, -1)[:, :H, :W]


class Block(nn.Module):
    """Pre-norm ViT block: x + attention(norm1(x)), then x + mlp(norm2(x)). The attention is
    inside windows of `window` tokens a side, or global over the whole grid if window=0."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window: int, grid: int):
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = EncoderAttention(dim, num_heads, grid=window or grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, g, g, C)
        y = self.norm1(x)
        if self.window:
            y = window_unpartition(self.attn(window_partition(y, self.window)),
                                   self.window, x.shape[1:3])
        else:
            y = self.attn(y)
        x = x + y
        # The MLP sees each token on its own, so a few grid rows at a time give the same
        # numbers in a fraction of the memory (section 7).
        out = torch.empty_like(x)
        for rows in mlp_pieces(x, hidden=self.mlp.lin1.out_features):
            out[:, rows] = x[:, rows] + self.mlp(self.norm2(x[:, rows]))
        return out


class ImageEncoderViT(nn.Module):
    def __init__(self, cfg: SamConfig):
        super().__init__()
        self.img_size = cfg.image_size
        g, C = cfg.image_embedding_size, cfg.encoder_embed_dim
        self.patch_embed = PatchEmbed(cfg.patch_size, C)
        # absolute position embedding, learned, one vector per token of the grid
        self.pos_embed = nn.Parameter(torch.zeros(1, g, g, C))
        self.blocks = nn.ModuleList(
            Block(C, cfg.encoder_num_heads, cfg.mlp_ratio, grid=g,
                  window=0 if i in cfg.encoder_global_attn_indexes else cfg.window_size)
            for i in range(cfg.encoder_depth))
        # the neck: 1x1 conv to the decoder width, then a 3x3 conv to mix neighbours
        self.neck = nn.Sequential(
            nn.Conv2d(C, cfg.prompt_embed_dim, kernel_size=1, bias=False),
            LayerNorm2d(cfg.prompt_embed_dim),
            nn.Conv2d(cfg.prompt_embed_dim, cfg.prompt_embed_dim, kernel_size=3, padding=1,
                      bias=False),
            LayerNorm2d(cfg.prompt_embed_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, S, S) normalised, padded images -> image_embedding (B, prompt_dim, g, g)."""
        x = self.patch_embed(x) + self.pos_embed  # (B, g, g, C)
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))


# -----------------------------------------------------------------------------
# 2. Prompt encoder (section 3, "Prompt encoder"; appendix A)
# Sparse prompts (points, boxes) become 256-d tokens: a positional encoding of where they
# are, plus a learned embedding of what they are (foreground point, background point,
# box top-left, box bottom-right, or padding). Positions use random Fourier features
# (Tancik et al. 2020): a fixed random Gaussian projection to sines and cosines, which lets
# an MLP-free network resolve fine positions that raw (x, y) numbers would blur.
# A dense prompt (a coarse mask, e.g. the previous prediction) is downscaled by a small
# conv net and added to the image embedding; without one, a learned "no mask" vector is added.


class FourierPositionalEncoding(nn.Module):
    def __init__(self, num_feats: int):
        super().__init__()
        # fixed, not learned: it is a buffer, yet saved in the checkpoint so both sides agree
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_feats))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """(..., 2) coordinates in [0, 1] -> (..., 2 * num_feats) in [-1, 1]."""
        angles = 2 * math.pi * ((2 * coords - 1) @ self.positional_encoding_gaussian_matrix)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    def dense(self, size: Tuple[int, int]) -> torch.Tensor:
        """Encoding of every cell centre of an (h, w) grid -> (C, h, w)."""
        h, w = size
        matrix = self.positional_encoding_gaussian_matrix
        y = (torch.arange(h, device=matrix.device, dtype=matrix.dtype) + 0.5) / h
        x = (torch.arange(w, device=matrix.device, dtype=matrix.dtype) + 0.5) / w
        grid = torch.stack(torch.meshgrid(x, y, indexing="xy"), dim=-1)  # (h, w, 2) as (x, y)
        return self.encode(grid).permute(2, 0, 1)

    def forward(self, coords: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
        """(..., 2) pixel coordinates (x, y) in an (H, W) image -> (..., C)."""
        h, w = image_size
        return self.encode(coords.float() / torch.tensor([w, h], device=coords.device))


class PromptEncoder(nn.Module):
    def __init__(self, cfg: SamConfig):
        super().__init__()
        dim, g = cfg.prompt_embed_dim, cfg.image_embedding_size
        self.embed_dim = dim
        self.input_image_size = (cfg.image_size, cfg.image_size)
        self.image_embedding_size = (g, g)
        self.mask_input_size = (4 * g, 4 * g)  # the decoder's low-res output size
        self.pe_layer = FourierPositionalEncoding(dim // 2)
        # what a sparse token is: 0 background point, 1 foreground point, 2/3 box corners
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, dim)
        c = cfg.mask_in_chans
        self.mask_downscaling = nn.Sequential(  # (N, 1, 4g, 4g) -> (N, dim, g, g)
            nn.Conv2d(1, c // 4, kernel_size=2, stride=2), LayerNorm2d(c // 4), nn.GELU(),
            nn.Conv2d(c // 4, c, kernel_size=2, stride=2), LayerNorm2d(c), nn.GELU(),
            nn.Conv2d(c, dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, dim)
        self._make_dense_pe()
        self.register_load_state_dict_post_hook(PromptEncoder._make_dense_pe)

    def get_dense_pe(self) -> torch.Tensor:
        """The same Fourier features at every cell of the image embedding: (1, C, g, g)."""
        return self.dense_pe

    def _make_dense_pe(self, *_) -> None:
        # Made from the fixed Gaussian matrix alone: once here and again whenever a checkpoint
        # replaces the matrix, rather than on every click. A buffer, so that it moves and
        # changes dtype with the model; not persistent, so checkpoints do not hold it.
        self.register_buffer("dense_pe", self.pe_layer.dense(self.image_embedding_size)[None],
                             persistent=False)

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor, pad: bool):
        coords = coords + 0.5  # a pixel index names the pixel's centre
        if pad:
            # The decoder was trained to see a box's two tokens after the points. Without a
            # box, one "not a point" token (label -1) takes their place.
            coords = F.pad(coords, (0, 0, 0, 1))
            labels = F.pad(labels, (0, 1), value=-1)
        pe = self.pe_layer(coords, self.input_image_size)  # (N, P, C)
        labels = labels[..., None]
        sparse_prompt = torch.where(labels == -1, self.not_a_point_embed.weight, pe)
        # labels 2 and 3 are box corners, as the official ONNX model takes boxes: with the
        # corners as points, the tokens equal _embed_boxes' (lessons/web_demo.py)
        return sparse_prompt + sum((labels == i) * embedding.weight
                                   for i, embedding in enumerate(self.point_embeddings))

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        corners = (boxes + 0.5).reshape(-1, 2, 2)  # (N, 4) x0 y0 x1 y1 -> (N, 2 corners, 2)
        pe = self.pe_layer(corners, self.input_image_size)
        corner_embed = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])
        return pe + corner_embed  # (N, 2, C)

    def forward(self, points: Optional[Tuple[torch.Tensor, torch.Tensor]],
                boxes: Optional[torch.Tensor], masks: Optional[torch.Tensor]):
        """points: (coords (N, P, 2) in input pixels, labels (N, P)); boxes (N, 4) XYXY;
        masks (N, 1, 4g, 4g) logits. Returns sparse_prompt (N, T, C), dense_prompt (N, C, g, g)."""
        n = next((p.shape[0] for p in (points and points[0], boxes, masks) if p is not None), 1)
        device = self.no_mask_embed.weight.device
        sparse = [torch.empty(n, 0, self.embed_dim, device=device)]
        if points is not None:
            sparse.append(self._embed_points(*points, pad=boxes is None))
        if boxes is not None:
            sparse.append(self._embed_boxes(boxes))
        if masks is not None:
            dense_prompt = self.mask_downscaling(masks)
        else:
            dense_prompt = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
                n, -1, *self.image_embedding_size)
        return torch.cat(sparse, dim=1), dense_prompt


# -----------------------------------------------------------------------------
# 3. Mask decoder (section 3, "Mask decoder"; appendix A, Figure 14)
# Learned output tokens (one IoU token and 1 + 3 mask tokens, like DETR's object queries)
# are put in front of the prompt tokens. A two-way transformer then lets the tokens attend
# to the image (token-to-image: queries are tokens, keys and values are image pixels) and
# the image attend back to the tokens (image-to-token: queries are pixels, keys and values
# are tokens), so both sides are updated. Positional encodings are added again before
# every attention, because geometry is what a click means. Finally the image embedding is
# upscaled 4x and each mask token, through its own small MLP (a hypernetwork), becomes a
# dynamic linear classifier applied at every pixel: mask = token_vector . pixel_features.


class Attention(nn.Module):
    """Multi-head attention whose q/k/v may be projected to a smaller width: the
    cross-attentions use half width (downsample=2) to save compute on 4096 image tokens."""

    def __init__(self, dim: int, num_heads: int, downsample: int = 1):
        super().__init__()
        inner = dim // downsample
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)
        # minisam's departure (neither the paper's nor the reference's): start from scratch as
        # a lookup by similarity, k_proj = q_proj at twice PyTorch's default scale. Queries
        # and keys carry Fourier PEs, whose dot product peaks where two positions coincide;
        # with equal projections a click's query already finds the pixels at its own
        # position, where two independent random projections scramble that, and the toy
        # model leaves its plateau sooner (lessons/experiments.md, "Why is the start of
        # training slow?"). Loaded weights replace it.
        with torch.no_grad():
            self.q_proj.weight.mul_(2.0)
            self.k_proj.weight.copy_(self.q_proj.weight)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        def heads(x):  # (B, N, inner) -> (B, heads, N, inner / heads)
            return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.q_proj(q)), heads(self.k_proj(k)), heads(self.v_proj(v)))
        return self.out_proj(out.transpose(1, 2).flatten(2))


class TwoWayAttentionBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_dim: int, first: bool):
        super().__init__()
        self.first = first
        self.self_attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, num_heads, downsample=2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, num_heads, downsample=2)

    def forward(self, tokens, image, token_pe, image_pe):
        """tokens (N, T, C) with their positional part token_pe (the original prompt tokens);
        image (N, g*g, C) with image_pe (1 or N, g*g, C)."""
        # (1) self-attention among tokens. In the first layer the tokens *are* the prompt
        # tokens, so adding token_pe would count them twice, and there is no residual.
        if self.first:
            tokens = self.self_attn(tokens, tokens, tokens)
        else:
            q = tokens + token_pe
            tokens = tokens + self.self_attn(q, q, tokens)
        tokens = self.norm1(tokens)
        # the pixels with their positions: keys in (2), queries in (4); the image itself does
        # not change in between, so this (N, g*g, C) sum is made once
        image_with_pe = image + image_pe
        # (2) token-to-image: each token gathers evidence from the pixels
        q = tokens + token_pe
        tokens = self.norm2(tokens + self.cross_attn_token_to_image(q, image_with_pe, image))
        # (3) MLP on each token
        tokens = self.norm3(tokens + self.mlp(tokens))
        # (4) image-to-token: each pixel reads the updated prompt, so the image embedding
        # itself becomes prompt-aware before the masks are read from it
        k = tokens + token_pe
        image = self.norm4(image + self.cross_attn_image_to_token(image_with_pe, k, tokens))
        return tokens, image


class TwoWayTransformer(nn.Module):
    def __init__(self, depth: int, dim: int, num_heads: int, mlp_dim: int):
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(dim, num_heads, mlp_dim, first=i == 0) for i in range(depth))
        self.final_attn_token_to_image = Attention(dim, num_heads, downsample=2)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor):
        """image (N, C, g, g); image_pe (1, C, g, g), shared by all N rows (it broadcasts,
        so it is laid out token-major once, not N times); tokens (N, T, C) ->
        tokens (N, T, C), image (N, g*g, C)."""
        # pixels become tokens, laid out token-major once here rather than by every linear
        image = image.flatten(2).transpose(1, 2).contiguous()
        image_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
        token_pe = tokens
        for layer in self.layers:
            tokens, image = layer(tokens, image, token_pe, image_pe)
        # one last look at the image by the tokens, which are all the heads read
        attn = self.final_attn_token_to_image(tokens + token_pe, image + image_pe, image)
        return self.norm_final_attn(tokens + attn), image


class MLP(nn.Module):
    """Plain MLP with ReLU between layers: the hypernetworks and the IoU head."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, depth: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (depth - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


def upscale_2x(x: torch.Tensor, conv: nn.ConvTranspose2d) -> torch.Tensor:
    """conv (a 2x2 transposed convolution with stride 2) on a channels-last map: (N, h, w,
    C_in) -> (N, 2h, 2w, C_out). With kernel = stride, the output's 2x2 blocks do not overlap
    and each is a linear map of one input pixel, so the whole convolution is one matmul to
    4 * C_out channels and a reshuffle; as a matmul it runs at the machine's full rate."""
    N, h, w, _ = x.shape
    c_in, c_out = conv.weight.shape[:2]  # weight (C_in, C_out, 2, 2)
    weight = conv.weight.permute(0, 2, 3, 1).reshape(c_in, 4 * c_out)  # columns (dy, dx, C_out)
    y = F.linear(x, weight.t(), conv.bias.repeat(4))  # (N, h, w, 4 * C_out)
    return y.view(N, h, w, 2, 2, c_out).transpose(2, 3).reshape(N, 2 * h, 2 * w, c_out)


class MaskDecoder(nn.Module):
    def __init__(self, cfg: SamConfig):
        super().__init__()
        dim = cfg.prompt_embed_dim
        self.num_mask_tokens = cfg.num_multimask_outputs + 1  # token 0: the single-output mask
        self.transformer = TwoWayTransformer(cfg.decoder_depth, dim, cfg.decoder_num_heads,
                                             cfg.decoder_mlp_dim)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        # 4x upscaling, (N, dim, g, g) -> (N, dim/8, 4g, 4g); forward runs these weights
        # channels-last (upscale_2x) rather than calling the Sequential
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2), LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2), nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(dim, cfg.iou_head_hidden_dim, self.num_mask_tokens,
                                       cfg.iou_head_depth)

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                sparse_prompt_embeddings: torch.Tensor, dense_prompt_embeddings: torch.Tensor,
                multimask_output: bool):
        """image_embeddings (1 or N, C, g, g): one image shared by all N prompts, or one per
        prompt (for training on several images in one call); image_pe (1, C, g, g);
        sparse (N, T, C); dense (N, C, g, g).
        Returns low_res_masks (N, M, 4g, 4g) logits and iou_predictions (N, M), where M is
        num_multimask_outputs (multimask_output=True) or 1."""
        masks, iou_pred = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings,
                                             dense_prompt_embeddings)
        # For one ambiguous click the 3 multimask tokens answer; with more prompts the
        # ambiguity is gone and the single-output token 0 answers (appendix A, "Ambiguity").
        outputs = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, outputs], iou_pred[:, outputs]

    def predict_masks(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                      sparse_prompt_embeddings: torch.Tensor,
                      dense_prompt_embeddings: torch.Tensor):
        """forward's masks and IoUs for all M + 1 output tokens, token 0 first: (N, M + 1, 4g,
        4g) and (N, M + 1). The exported decoder (lessons/web_demo.py) chooses among them."""
        n = sparse_prompt_embeddings.shape[0]
        _check_embedding_batch(image_embeddings, n)
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight])
        tokens = torch.cat([output_tokens.expand(n, -1, -1), sparse_prompt_embeddings], dim=1)
        image = image_embeddings + dense_prompt_embeddings  # (N, C, g, g)
        tokens, image = self.transformer(image, image_pe, tokens)
        iou_token_out, mask_tokens_out = tokens[:, 0], tokens[:, 1:1 + self.num_mask_tokens]

        g = dense_prompt_embeddings.shape[-1]
        # upscale 4x, channels last all the way: (N, g*g, C) -> (N, 4g, 4g, C/8)
        up1, norm, act1, up2, act2 = self.output_upscaling
        x = upscale_2x(image.unflatten(1, (g, g)), up1)
        x = act1(norm(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))  # views: no copy either way
        upscaled = act2(upscale_2x(x, up2))
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i]) for i, mlp in
                                enumerate(self.output_hypernetworks_mlps)], dim=1)  # (N, M+1, C/8)
        # each mask is its token's vector dotted with every pixel's features
        masks = (upscaled.flatten(1, 2) @ hyper_in.transpose(1, 2))  # (N, 16g^2, M+1)
        masks = masks.transpose(1, 2).unflatten(2, (4 * g, 4 * g))  # (N, M+1, 4g, 4g)
        iou_pred = self.iou_prediction_head(iou_token_out)  # (N, M+1)
        return masks, iou_pred


# -----------------------------------------------------------------------------
# The whole model, and loading the official checkpoints.


class Sam(nn.Module):
    mask_threshold: float = 0.0  # masks are logits; a pixel is in the mask where logit > 0
    image_format: str = "RGB"

    def __init__(self, config: SamConfig = SamConfig()):
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoderViT(config)
        self.prompt_encoder = PromptEncoder(config)
        self.mask_decoder = MaskDecoder(config)
        # constants, not weights: the official checkpoints do not store them
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) RGB on 0..255, longest side already resized to image_size ->
        normalised and zero-padded at the bottom/right to (B, 3, S, S)."""
        x = (x - self.pixel_mean) / self.pixel_std
        S = self.image_encoder.img_size
        return F.pad(x, (0, S - x.shape[-1], 0, S - x.shape[-2]))

    def postprocess_masks(self, masks: torch.Tensor, input_size: Tuple[int, int],
                          original_size: Tuple[int, int]) -> torch.Tensor:
        """Low-res logits (B, M, 4g, 4g) -> (B, M, H, W) logits on the original image: upscale to
        the padded input, crop the padding away, resize to the original size."""
        S = self.image_encoder.img_size
        masks = F.interpolate(masks, (S, S), mode="bilinear", align_corners=False)
        masks = masks[..., :input_size[0], :input_size[1]]
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)

    @torch.no_grad()
    def forward(self, batched_input: list, multimask_output: bool) -> list:
        """End to end, as the reference's Sam.forward: a list of dicts with "image" (3, h, w)
        already resized, "original_size", and optional "point_coords", "point_labels", "boxes",
        "mask_inputs" in the resized frame. The predictor below is the friendlier way in."""
        image_embeddings = self.image_encoder(
            torch.stack([self.preprocess(x["image"]) for x in batched_input]))
        outputs = []
        for record, embedding in zip(batched_input, image_embeddings):
            points = ((record["point_coords"], record["point_labels"])
                      if "point_coords" in record else None)
            sparse, dense = self.prompt_encoder(points=points, boxes=record.get("boxes"),
                                                masks=record.get("mask_inputs"))
            low_res, iou = self.mask_decoder(
                image_embeddings=embedding[None], image_pe=self.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                multimask_output=multimask_output)
            masks = self.postprocess_masks(low_res, record["image"].shape[-2:],
                                           record["original_size"])
            outputs.append({"masks": masks > self.mask_threshold, "iou_predictions": iou,
                            "low_res_logits": low_res})
        return outputs


def build_sam(config="toy", checkpoint=None, device=None) -> Sam:
    """Build a SAM model and, optionally, load weights.

    config: a preset name from CONFIGS ("toy", "vit_b", "vit_l", "vit_h") or a SamConfig.
    checkpoint: path to an official SAM .pth (a raw state dict, e.g. sam_vit_b_01ec64.pth) or
        to a train_toy.py checkpoint (a dict with "model" and "config").
    device: where to put the model; None leaves it where it was built: on the CPU, or on the
        default device (`with torch.device("meta"):` builds a model without memory, to count
        its parameters). Returns the model in eval mode."""
    if isinstance(config, str):
        if config not in CONFIGS:
            raise ValueError(f"config {config!r} is not a preset; known presets: {list(CONFIGS)}")
        config = CONFIGS[config]
    elif not isinstance(config, SamConfig):
        raise TypeError(f"config must be a preset name or a SamConfig, got {type(config).__name__}")
    if device is not None:  # not `if device`: 0 means cuda:0
        device = check_device(device)  # before a checkpoint of gigabytes is read
    model = Sam(config)
    if checkpoint is not None:
        state = _read_checkpoint(checkpoint, config)
        _check_fits(state, config, _shapes(model.state_dict()))
        model.load_state_dict(state)
    return (model if device is None else model.to(device)).eval()


# -----------------------------------------------------------------------------
# 4. Losses (appendix A, "Losses and training")
# Masks are supervised with a linear combination of focal loss and dice loss, 20:1. Focal
# loss is a per-pixel cross-entropy that down-weights easy pixels; dice measures overlap of
# the whole mask and does not care how many background pixels there are. Their scales
# differ (focal is a small per-pixel mean), hence the weight 20 on focal. The IoU head is
# trained with the mean-squared error between its prediction and the actual IoU of each
# predicted mask. Ambiguity: a click may mean any of several valid masks, so among the
# outputs only the one with the lowest mask loss is backpropagated: the others are free to
# specialise on other valid answers (part, subpart).


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
               gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) averaged over pixels: (..., H, W) -> (...)."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_true = p * targets + (1 - p) * (1 - targets)  # probability given to the right answer
    alpha_true = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_true * (1 - p_true) ** gamma * ce).mean((-2, -1))


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice coefficient, with +1 smoothing so empty masks are well defined:
    (..., H, W) -> (...) in [0, 1]."""
    p, t = logits.sigmoid().flatten(-2), targets.flatten(-2)
    return 1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)


def mask_iou(masks: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of boolean masks (..., H, W) -> (...); two empty masks agree perfectly (IoU 1)."""
    inter = (masks & targets).flatten(-2).sum(-1)
    union = (masks | targets).flatten(-2).sum(-1)
    return torch.where(union > 0, inter / union.clamp(min=1), 1.0)


def sam_loss(mask_logits: torch.Tensor, iou_predictions: torch.Tensor,
             target_masks: torch.Tensor):
    """mask_logits (N, M, H, W), iou_predictions (N, M), target_masks (N, H, W) at the same
    resolution. Returns the scalar loss and its parts for logging: focal, dice and iou_mse
    (detached) and best (N,), the output each prompt was trained through."""
    targets = target_masks.float()[:, None].expand_as(mask_logits)
    focal, dice = focal_loss(mask_logits, targets), dice_loss(mask_logits, targets)  # (N, M)
    best = (20 * focal + dice).argmin(dim=1)  # (N,) the output that explains the target best
    rows = torch.arange(len(best), device=best.device)
    with torch.no_grad():
        actual_iou = mask_iou(mask_logits > 0, targets > 0.5)  # (N, M)
    # every output's IoU is supervised: at inference the head must rank all of them
    iou_mse = F.mse_loss(iou_predictions, actual_iou)
    loss = (20 * focal[rows, best] + dice[rows, best]).mean() + iou_mse
    parts = {"focal": focal[rows, best].mean().detach(), "dice": dice[rows, best].mean().detach(),
             "iou_mse": iou_mse.detach(), "best": best}
    return loss, parts


# -----------------------------------------------------------------------------
# 5. Predictor: one image_embedding, many clicks (section 4, "Assisted-manual stage")
# The image encoder runs once per image; each click then costs only the prompt encoder and
# the decoder. That split is what let the paper's browser tool answer a click in about 50 ms
# on a CPU. The predictor owns the bookkeeping around it: resizing the image so its longest
# side is image_size, mapping prompts into that frame, and mapping masks back.


class ResizeLongestSide:
    """Resize so the longest side is `target_length` (aspect ratio kept), and move coordinates
    and boxes into the resized frame; numpy for single images, torch for batches."""

    def __init__(self, target_length: int):
        self.target_length = target_length

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> Tuple[int, int]:
        # at least one pixel: a 1x3000 strip must not vanish (the reference fails there)
        scale = long_side_length / max(oldh, oldw)
        return max(1, int(oldh * scale + 0.5)), max(1, int(oldw * scale + 0.5))

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) -> uint8 (h, w, 3). Bilinear with antialiasing when shrinking, which
        is close to (not bit-equal with) the PIL resize of the reference."""
        size = self.get_preprocess_shape(*image.shape[:2], self.target_length)
        if size == image.shape[:2]:
            return image
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
        x = self.apply_image_torch(x)
        return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()

    def apply_image_torch(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float -> (B, 3, h, w)."""
        size = self.get_preprocess_shape(*image.shape[-2:], self.target_length)
        return F.interpolate(image, size, mode="bilinear", align_corners=False, antialias=True)

    def _xy_scale(self, original_size: Tuple[int, int]) -> Tuple[float, float]:
        h, w = original_size
        new_h, new_w = self.get_preprocess_shape(h, w, self.target_length)
        return new_w / w, new_h / h

    def apply_coords(self, coords: np.ndarray, original_size: Tuple[int, int]) -> np.ndarray:
        """(..., 2) pixel (x, y) in the original image -> the resized frame, float64."""
        return np.asarray(coords, dtype=np.float64) * self._xy_scale(original_size)

    def apply_boxes(self, boxes: np.ndarray, original_size: Tuple[int, int]) -> np.ndarray:
        return self.apply_coords(np.reshape(boxes, (-1, 2, 2)), original_size).reshape(-1, 4)

    def apply_coords_torch(self, coords: torch.Tensor, original_size: Tuple[int, int]):
        return coords.float() * torch.tensor(self._xy_scale(original_size), device=coords.device)

    def apply_boxes_torch(self, boxes: torch.Tensor, original_size: Tuple[int, int]):
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)


class SamPredictor:
    """Interactive segmentation of one image: set_image once, then predict for each prompt.
    The interface is the reference package's, so code written for it runs unchanged."""

    def __init__(self, sam_model: Sam):
        self.model = sam_model
        self.transform = ResizeLongestSide(sam_model.image_encoder.img_size)
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset_image(self) -> None:
        self.is_image_set = False
        self.features = None  # the image_embedding, (1, C, g, g)
        self.original_size = self.input_size = None

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """image: uint8 (H, W, 3) in `image_format` ("RGB" or "BGR"). Runs the image encoder."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        _check_image(image)
        if image_format != self.model.image_format:
            image = image[..., ::-1]
        resized = torch.as_tensor(self.transform.apply_image(image), device=self.device)
        self.set_torch_image(resized.permute(2, 0, 1)[None], image.shape[:2])

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor,
                        original_image_size: Tuple[int, int]) -> None:
        """transformed_image: (1, 3, h, w), already resized so max(h, w) == image_size."""
        size = self.model.image_encoder.img_size
        if (transformed_image.ndim != 4 or transformed_image.shape[:2] != (1, 3)
                or max(transformed_image.shape[2:]) != size):
            raise ValueError(f"transformed_image must be (1, 3, h, w) with max(h, w) == {size}, "
                             f"got {tuple(transformed_image.shape)}")
        self.reset_image()
        self.original_size = tuple(int(s) for s in original_image_size)
        self.input_size = tuple(transformed_image.shape[-2:])
        self.features = self.model.image_encoder(self.model.preprocess(transformed_image.float()))
        self.is_image_set = True

    def get_image_embedding(self) -> torch.Tensor:
        self._check_image_set()
        return self.features

    def _check_image_set(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("no image is set: call predictor.set_image(image) before this")

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None,
                multimask_output: bool = True, return_logits: bool = False):
        """Prompts in the original image's pixel frame: point_coords (N, 2) as (x, y) with
        point_labels (N,) 1 = foreground, 0 = background; box (4,) as x0, y0, x1, y1;
        mask_input (1, h, w): low-res logits from a previous call, to refine.
        Returns masks (C, H, W) bool (logits if return_logits), iou_predictions (C,) and
        low_res_masks (C, h, w), as numpy; C = 3 with multimask_output, else 1."""
        self._check_image_set()
        coords, labels, box, masks = _checked_prompts(
            point_coords, point_labels, box, mask_input, self.original_size,
            self.model.prompt_encoder.mask_input_size)
        boxes = None
        if coords is not None:
            coords = torch.as_tensor(self.transform.apply_coords(coords, self.original_size),
                                     dtype=torch.float, device=self.device)[None]
            labels = torch.as_tensor(labels, dtype=torch.int, device=self.device)[None]
        if box is not None:
            boxes = torch.as_tensor(self.transform.apply_boxes(box, self.original_size),
                                    dtype=torch.float, device=self.device)
        if masks is not None:
            masks = torch.as_tensor(masks, dtype=torch.float, device=self.device)[None]
        out = self.predict_torch(coords, labels, boxes, masks, multimask_output, return_logits)
        return tuple(x[0].cpu().numpy() for x in out)

    @torch.no_grad()
    def predict_torch(self, point_coords: Optional[torch.Tensor],
                      point_labels: Optional[torch.Tensor], boxes: Optional[torch.Tensor] = None,
                      mask_input: Optional[torch.Tensor] = None, multimask_output: bool = True,
                      return_logits: bool = False):
        """A batch of B prompts for the set image, already in the resized frame (use
        self.transform.apply_coords_torch / apply_boxes_torch): point_coords (B, N, 2),
        point_labels (B, N), boxes (B, 4), mask_input (B, 1, h, w).
        Returns masks (B, C, H, W), iou_predictions (B, C), low_res_masks (B, C, h, w)."""
        self._check_image_set()
        points = (point_coords, point_labels) if point_coords is not None else None
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        low_res_masks, iou_predictions = self.model.mask_decoder(
            image_embeddings=self.features, image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            multimask_output=multimask_output)
        masks = self.model.postprocess_masks(low_res_masks, self.input_size, self.original_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou_predictions, low_res_masks


# -----------------------------------------------------------------------------
# 6. Automatic masks: segment everything (section 4, "Fully automatic stage"; appendix B)
# The last stage of the data engine labelled 11M images with no annotator: prompt the
# model with a regular grid of points (32x32), 3 masks per point, then keep only masks
# that are
#   - confident: the IoU head predicts a high IoU (pred_iou_thresh),
#   - stable: thresholding the logits at 0 - offset and at 0 + offset gives nearly the same
#     mask (stability_score, an IoU of the two); a mask whose border sits on a steep logit
#     cliff is one the model is sure of,
#   - unique: box non-maximum suppression removes near-duplicates from neighbouring points.
# Small objects get a second chance in zoomed-in crops (crop layer i has 2^i x 2^i
# overlapping crops, each seen at full model resolution); masks that touch a crop's inner
# edge are cut off by the crop and dropped, and duplicates across crops are resolved in
# favour of the smaller (more zoomed-in) crop. Finally small islands and holes are cleaned
# up, and NMS runs again preferring masks the clean-up left untouched.


def calculate_stability_score(mask_logits: torch.Tensor, mask_threshold: float,
                              offset: float) -> torch.Tensor:
    """IoU between the mask at threshold + offset and at threshold - offset: (..., H, W) ->
    (...). The first mask lies inside the second, so the IoU is a ratio of areas."""
    inner = (mask_logits > mask_threshold + offset).flatten(-2).sum(-1)
    outer = (mask_logits > mask_threshold - offset).flatten(-2).sum(-1)
    return inner / outer


def batched_mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """Tightest box around each mask, (..., H, W) bool -> (..., 4) as x0, y0, x1, y1 with
    inclusive pixel indices; an empty mask gets (0, 0, 0, 0)."""
    h, w = masks.shape[-2:]
    rows, cols = masks.any(-1), masks.any(-2)  # (..., H), (..., W): which rows/columns are hit
    ys, xs = torch.arange(h, device=masks.device), torch.arange(w, device=masks.device)
    x0 = torch.where(cols, xs, w).amin(-1)
    x1 = torch.where(cols, xs, -1).amax(-1)
    y0 = torch.where(rows, ys, h).amin(-1)
    y1 = torch.where(rows, ys, -1).amax(-1)
    boxes = torch.stack([x0, y0, x1, y1], dim=-1)
    return torch.where(masks.flatten(-2).any(-1, keepdim=True), boxes, 0)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, 4), (M, 4) XYXY -> (N, M) IoU."""
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    return inter / (box_area(a)[:, None] + box_area(b)[None] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression: visit boxes from the best score down and drop every
    later box that overlaps a kept one by IoU > iou_threshold. Returns kept indices, best
    first. Ties keep their input order (a stable sort), as the cross-crop NMS relies on."""
    order = torch.sort(scores, descending=True, stable=True).indices
    overlaps = box_iou(boxes[order].float(), boxes[order].float()) > iou_threshold  # (N, N)
    keep = torch.ones(len(order), dtype=torch.bool, device=boxes.device)
    for i in range(len(order)):
        if keep[i]:
            keep[i + 1:] &= ~overlaps[i, i + 1:]
    return order[keep]


def mask_to_rle(masks: torch.Tensor) -> list:
    """(B, H, W) bool -> COCO's uncompressed RLE per mask: {"size": [H, W], "counts": [...]},
    run lengths in column-major order, the first run counting zeros (possibly 0 of them)."""
    b, h, w = masks.shape
    flat = masks.transpose(1, 2).flatten(1).cpu().numpy()  # (B, H*W) column-major
    # every change of value at once, sorted by mask then position; split per mask once
    # (a per-mask search through all changes costs B times more)
    mask_index, position = np.nonzero(flat[:, 1:] != flat[:, :-1])
    ends = np.split(position + 1, np.cumsum(np.bincount(mask_index, minlength=b))[:-1])
    rles = []
    for i in range(b):  # where each run but the last ends, then the last run's end
        counts = np.diff(ends[i], prepend=0, append=h * w).tolist()
        rles.append({"size": [h, w], "counts": ([0] if flat[i, 0] else []) + counts})
    return rles


def rle_to_mask(rle: dict) -> np.ndarray:
    """Inverse of mask_to_rle: -> (H, W) bool."""
    h, w = rle["size"]
    values = np.arange(len(rle["counts"])) % 2 == 1  # runs alternate 0, 1, 0, ...
    return np.repeat(values, rle["counts"]).reshape(w, h).T


def area_from_rle(rle: dict) -> int:
    return int(sum(rle["counts"][1::2]))


def connected_components(mask: np.ndarray) -> np.ndarray:
    """8-connected components of a (H, W) bool mask -> int labels: 0 for background, else
    1 + the flat index of the component's first pixel in raster order (so sorting labels
    sorts components as a raster scan meets them).
    It works on runs, the maximal horizontal stretches of True pixels, not on pixels: a run
    belongs with every run of the row above that overlaps it or meets it at a corner, and
    union-find merges them. The work grows with the number of runs (about the height of each
    component), not its area: a disc 600 pixels across is 600 runs but 280k pixels."""
    h, w = mask.shape
    steps = np.diff(np.pad(mask, ((0, 0), (1, 1))).astype(np.int8), axis=1)  # (H, W + 1)
    row, start = np.nonzero(steps == 1)  # every run's row and first column, in raster order
    end = np.nonzero(steps == -1)[1]  # one past every run's last column
    # Run a in the row above run b touches it if a.start <= b.end and b.start <= a.end. Keyed
    # by row * (W + 2) + column, the runs of all rows are sorted in one array, so the runs
    # touching b are the contiguous range first[b] .. last[b] - 1 of it.
    stride = w + 2
    first = np.searchsorted(row * stride + end, (row - 1) * stride + start, side="left")
    last = np.searchsorted(row * stride + start, (row - 1) * stride + end, side="right")
    parent = list(range(len(start)))  # union-find over runs; a root is its set's first run

    def root(i):
        while parent[i] != i:
            parent[i] = i = parent[parent[i]]  # path halving keeps the trees flat
        return i

    for b, (lo, hi) in enumerate(zip(first.tolist(), last.tolist())):
        for a in range(lo, hi):
            ra, rb = root(a), root(b)
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([root(i) for i in range(len(start))], dtype=np.int64)
    labels = np.zeros(h * w, dtype=np.int64)
    # the runs cover the mask's pixels exactly, in raster order
    labels[mask.reshape(-1)] = np.repeat(1 + row[roots] * w + start[roots], end - start)
    return labels.reshape(h, w)


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str):
    """Fill holes ("holes") or drop islands ("islands") smaller than area_thresh pixels.
    Returns the new mask and whether anything changed. Removing every island would empty
    the mask; then the largest one stays."""
    fill_holes = mode == "holes"
    labels = connected_components(mask ^ fill_holes)  # holes are components of the outside
    ids, sizes = np.unique(labels[labels > 0], return_counts=True)
    small = ids[sizes < area_thresh]
    if len(small) == 0:
        return mask, False
    if fill_holes:
        return mask | np.isin(labels, small), True
    big = ids[sizes >= area_thresh]
    return np.isin(labels, big if len(big) else ids[np.argmax(sizes)]), True


def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n^2, 2) points at the cell centres of an n x n grid over [0, 1]^2, as (x, y)."""
    side = (np.arange(n_per_side) + 0.5) / n_per_side
    return np.stack(np.meshgrid(side, side), axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list:
    """One grid per crop layer; deeper layers' crops are smaller, so they may use fewer points."""
    return [build_point_grid(int(n_per_side / scale_per_layer**i)) for i in range(n_layers + 1)]


def generate_crop_boxes(im_size: Tuple[int, int], n_layers: int, overlap_ratio: float):
    """Layer 0 is the whole image; layer i tiles it with 2^i x 2^i crops that overlap by
    overlap_ratio of the short side (scaled down per layer). Returns XYXY boxes, layer ids."""
    im_h, im_w = im_size
    boxes, layers = [[0, 0, im_w, im_h]], [0]
    for layer in range(1, n_layers + 1):
        n = 2**layer
        overlap = int(overlap_ratio * min(im_h, im_w) * 2 / n)
        crop_w = math.ceil((overlap * (n - 1) + im_w) / n)
        crop_h = math.ceil((overlap * (n - 1) + im_h) / n)
        for i in range(n):
            for j in range(n):
                x0, y0 = (crop_w - overlap) * i, (crop_h - overlap) * j
                boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
                layers.append(layer)
    return boxes, layers


def is_box_near_crop_edge(boxes: torch.Tensor, crop_box: list, orig_box: list,
                          atol: float = 20.0) -> torch.Tensor:
    """(N, 4) boxes in crop coordinates -> (N,) True where a box side lies within atol pixels
    of an edge of the crop that is not also an edge of the image: the object probably
    continues outside the crop, and another crop sees it whole."""
    boxes = (boxes + torch.tensor(crop_box[:2] * 2, device=boxes.device)).float()
    crop = torch.tensor(crop_box, dtype=torch.float, device=boxes.device)
    image = torch.tensor(orig_box, dtype=torch.float, device=boxes.device)
    near_crop = (boxes - crop).abs() <= atol
    near_image = (boxes - image).abs() <= atol
    return (near_crop & ~near_image).any(dim=1)


def box_xyxy_to_xywh(box) -> list:
    x0, y0, x1, y1 = (int(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


class SamAutomaticMaskGenerator:
    """Segment everything in an image: the data engine's fully automatic stage.

    The defaults are the reference's, tuned for ViT-H on real photographs. A small model
    trained on the toy world is less sure of itself and needs lower thresholds:
    train_toy.TOY_AMG_SETTINGS holds the ones its figures use."""

    def __init__(self, model: Sam, points_per_side: Optional[int] = 32, points_per_batch: int = 64,
                 pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.95,
                 stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7,
                 crop_n_layers: int = 0, crop_nms_thresh: float = 0.7,
                 crop_overlap_ratio: float = 512 / 1500, crop_n_points_downscale_factor: int = 1,
                 point_grids: Optional[list] = None, min_mask_region_area: int = 0,
                 output_mode: str = "binary_mask"):
        self.predictor = SamPredictor(model)
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        _check_generator_settings(self, points_per_side, point_grids,
                                  crop_n_points_downscale_factor)
        if point_grids is None:  # each crop layer's grid has points_per_side / factor**layer
            point_grids = build_all_layer_point_grids(points_per_side, crop_n_layers,
                                                      crop_n_points_downscale_factor)
        self.point_grids = point_grids

    @torch.no_grad()
    def generate(self, image: np.ndarray) -> list:
        """image: uint8 (H, W, 3) RGB. Returns one record per mask: segmentation (per
        output_mode), area, bbox (XYWH), predicted_iou, point_coords, stability_score,
        crop_box (XYWH)."""
        _check_image(image)
        masks = self._generate_masks(image)
        if self.min_mask_region_area > 0:
            masks = self._remove_small_regions(masks)
        records = []
        for i, rle in enumerate(masks["rles"]):
            if self.output_mode == "binary_mask":
                segmentation = rle_to_mask(rle)
            elif self.output_mode == "coco_rle":
                from pycocotools import mask as mask_utils
                segmentation = mask_utils.frPyObjects(rle, *rle["size"])
                segmentation["counts"] = segmentation["counts"].decode("utf-8")
            else:
                segmentation = rle
            records.append({
                "segmentation": segmentation,
                "area": area_from_rle(rle),
                "bbox": box_xyxy_to_xywh(masks["boxes"][i]),
                "predicted_iou": masks["iou_preds"][i].item(),
                "point_coords": [masks["points"][i].tolist()],
                "stability_score": masks["stability_score"][i].item(),
                "crop_box": box_xyxy_to_xywh(masks["crop_boxes"][i]),
            })
        return records

    def _generate_masks(self, image: np.ndarray) -> dict:
        crop_boxes, layers = generate_crop_boxes(image.shape[:2], self.crop_n_layers,
                                                 self.crop_overlap_ratio)
        crops = [self._process_crop(image, box, layer) for box, layer in zip(crop_boxes, layers)]
        masks = _concat(crops)
        if len(crop_boxes) > 1:
            # the same object found in several crops: keep the most zoomed-in view
            keep = nms(masks["boxes"], 1 / box_area(masks["crop_boxes"]), self.crop_nms_thresh)
            masks = _select(masks, keep)
        return masks

    def _process_crop(self, image: np.ndarray, crop_box: list, layer: int) -> dict:
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1]
        self.predictor.set_image(crop)
        points = self.point_grids[layer] * np.array(crop.shape[1::-1])  # (P, 2) crop pixels
        batches = [self._process_batch(points[i:i + self.points_per_batch], crop.shape[:2],
                                       crop_box, image.shape[:2])
                   for i in range(0, len(points), self.points_per_batch)]
        self.predictor.reset_image()
        masks = _concat(batches)
        masks = _select(masks, nms(masks["boxes"], masks["iou_preds"], self.box_nms_thresh))
        offset = torch.tensor([x0, y0], device=masks["boxes"].device)
        masks["boxes"] = masks["boxes"] + offset.repeat(2)
        masks["points"] = masks["points"] + offset
        masks["crop_boxes"] = torch.tensor(crop_box, device=offset.device).repeat(
            len(masks["rles"]), 1)
        return masks

    def _process_batch(self, points: np.ndarray, crop_size, crop_box: list, image_size) -> dict:
        """points (P, 2) in crop pixels -> the masks of this batch that pass the filters."""
        coords = torch.as_tensor(self.predictor.transform.apply_coords(points, crop_size),
                                 dtype=torch.float, device=self.predictor.device)
        labels = torch.ones(len(points), 1, dtype=torch.int, device=coords.device)
        logits, iou_preds, _ = self.predictor.predict_torch(
            coords[:, None], labels, multimask_output=True, return_logits=True)
        # every point gives 3 masks: (P, 3, h, w) -> (3P, h, w), each row with its point
        masks = {"logits": logits.flatten(0, 1), "iou_preds": iou_preds.flatten(),
                 "points": torch.from_numpy(points).repeat_interleave(logits.shape[1], dim=0)}
        if self.pred_iou_thresh > 0:
            masks = _select(masks, masks["iou_preds"] > self.pred_iou_thresh)
        masks["stability_score"] = calculate_stability_score(
            masks["logits"], self.predictor.model.mask_threshold, self.stability_score_offset)
        if self.stability_score_thresh > 0:
            masks = _select(masks, masks["stability_score"] >= self.stability_score_thresh)
        masks["binary"] = masks.pop("logits") > self.predictor.model.mask_threshold
        masks["boxes"] = batched_mask_to_box(masks["binary"])
        h, w = image_size
        masks = _select(masks, ~is_box_near_crop_edge(masks["boxes"], crop_box, [0, 0, w, h]))
        x0, y0, x1, y1 = crop_box
        binary = F.pad(masks.pop("binary"), (x0, w - x1, y0, h - y1))  # back into the image
        masks["rles"] = mask_to_rle(binary)
        # only run-length codes and a few numbers per mask leave the model's device
        return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in masks.items()}

    def _remove_small_regions(self, masks: dict) -> dict:
        """Fill small holes and drop small islands, then NMS again preferring masks that the
        clean-up left unchanged (a changed mask's box may now overlap another's)."""
        if not masks["rles"]:
            return masks
        cleaned, unchanged = [], []
        for rle in masks["rles"]:
            mask, holes_changed = remove_small_regions(rle_to_mask(rle),
                                                       self.min_mask_region_area, "holes")
            mask, islands_changed = remove_small_regions(mask, self.min_mask_region_area,
                                                         "islands")
            cleaned.append(torch.from_numpy(mask))
            unchanged.append(float(not (holes_changed or islands_changed)))
        cleaned = torch.stack(cleaned)
        boxes = batched_mask_to_box(cleaned)
        keep = nms(boxes, torch.tensor(unchanged, device=boxes.device),
                   max(self.box_nms_thresh, self.crop_nms_thresh))
        for i in keep.tolist():
            if not unchanged[i]:
                masks["rles"][i] = mask_to_rle(cleaned[i:i + 1])[0]
                masks["boxes"][i] = boxes[i]
        return _select(masks, keep)


def _select(masks: dict, keep: torch.Tensor) -> dict:
    """Keep the rows `keep` (bool mask or indices) of every field of a batch of masks."""
    index = keep.nonzero()[:, 0] if keep.dtype == torch.bool else keep
    # the points stay on the CPU, where the grid was made, while the rest is on the device
    return {k: [v[i] for i in index.tolist()] if isinstance(v, list) else v[index.to(v.device)]
            for k, v in masks.items()}


def _concat(batches: list) -> dict:
    return {k: sum((b[k] for b in batches), []) if isinstance(batches[0][k], list)
            else torch.cat([b[k] for b in batches]) for k in batches[0]}


# -----------------------------------------------------------------------------
# 7. Memory and speed: the image encoder in pieces
# Nothing of SAM is here. The encoder's attention (section 1) runs on a few grid rows of
# queries of a few heads at a time, and its MLP on a few grid rows at a time: each piece is
# computed as the whole would be, only the memory it needs is small. Memory as large as the
# whole (a ViT-B global block has 12 x 4096 x 4096 logits) comes fresh from the operating
# system on every call, which costs more than the arithmetic; pieces that fit in the cache
# reuse the same memory piece after piece (lessons/experiments.md, "Where does the time go
# at 1024 px?").

LOGITS_CHUNK_BYTES = 2 ** 22  # the logits of one piece of attention
# the MLP's hidden layer of one piece: below the 32 MB above which glibc maps every
# allocation afresh from the operating system
MLP_CHUNK_BYTES = 2 ** 24


def attention_pieces(n: int, h: int, w: int, element_size: int) -> list:
    """Pieces (heads, tokens) of the attention of n (window or image, head) pairs over an
    h x w grid: a slice of the pairs and a slice of whole grid rows of query tokens, with at
    most LOGITS_CHUNK_BYTES of logits each."""
    row_bytes = w * h * w * element_size  # the logits of one grid row of queries
    rows = max(1, min(h, LOGITS_CHUNK_BYTES // row_bytes))
    pairs = max(1, LOGITS_CHUNK_BYTES // (rows * row_bytes))
    return [(slice(i, i + pairs), slice(r * w, (r + rows) * w))
            for i in range(0, n, pairs) for r in range(0, h, rows)]


def mlp_pieces(x: torch.Tensor, hidden: int) -> list:
    """Slices of whole grid rows of a (B, h, w, C) map whose MLP, `hidden` values wide per
    token, needs at most MLP_CHUNK_BYTES each."""
    B, h, w, _ = x.shape
    rows = max(1, MLP_CHUNK_BYTES // (B * w * hidden * x.element_size()))
    return [slice(r, r + rows) for r in range(0, h, rows)]

# -----------------------------------------------------------------------------
# 8. Checking the inputs
# The public entry points (build_sam, SamPredictor, SamAutomaticMaskGenerator) check what
# they are given here, before any work: a wrong input gets a ValueError or TypeError that
# names the argument and says what was expected, not a shape error deep inside the model.


def _shapes(state_dict: dict) -> dict:
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def _preset_shapes(name: str) -> dict:
    with torch.device("meta"):  # shapes only: no memory, even for vit_h
        return _shapes(Sam(CONFIGS[name]).state_dict())


def _check_fits(state_dict: dict, config: SamConfig, expected: dict) -> None:
    """Compare a checkpoint's keys and shapes with the model's; a mismatch is a ValueError
    that lists the first few differences and names the preset the checkpoint fits, if any."""
    got = _shapes(state_dict)
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    misshaped = [f"{k}: checkpoint {got[k]}, model {expected[k]}"
                 for k in expected if k in got and got[k] != expected[k]]
    if not (missing or unexpected or misshaped):
        return
    problems = [f"{len(items)} {what} (first: {', '.join(items[:3])})"
                for what, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                    ("mis-shaped tensors", misshaped)) if items]
    fits = [name for name in CONFIGS if _preset_shapes(name) == got]
    hint = f"; it fits the preset {fits[0]!r}" if fits else ""
    label = next((repr(name) for name, preset in CONFIGS.items() if preset == config), "given")
    raise ValueError(f"checkpoint does not fit the {label} config: " + "; ".join(problems) + hint)


def check_device(device) -> torch.device:
    """`device` as a torch.device this machine has, or a ValueError that names it (before a
    checkpoint of gigabytes is read, not after)."""
    if not isinstance(device, (str, int, torch.device)):
        raise TypeError(f"device must be a name like 'cpu' or 'cuda:0', or a torch.device, got "
                        f"{type(device).__name__}")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device {device!r} is not a device name: {e}") from None
    available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}
    if device.type in available and not available[device.type]():
        raise ValueError(f"device {str(device)!r}: this machine has no {device.type} device; "
                         "use 'cpu'")
    return device


def _read_checkpoint(checkpoint, config: SamConfig) -> dict:
    """The state dict in an official checkpoint or a train_toy.py one (checked against
    config), or a ValueError that names the file and what is wrong with it."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types; all mean the same here
        raise ValueError(f"checkpoint {str(checkpoint)!r} is not a readable PyTorch "
                         f"checkpoint: {type(e).__name__}: {e}") from e
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {str(checkpoint)!r} holds a {type(state).__name__}, "
                         "not a state dict")
    if not ("model" in state and "config" in state):  # an official checkpoint
        return state
    try:  # our own training checkpoint; tuples come back from the file as lists
        saved = SamConfig(**{k: tuple(v) if isinstance(v, list) else v
                             for k, v in state["config"].items()})
    except TypeError as e:
        raise ValueError(f"checkpoint {str(checkpoint)!r} has an unreadable config: {e}")
    if saved != config:
        diff = {k: v for k, v in asdict(saved).items() if getattr(config, k) != v}
        raise ValueError(f"checkpoint {str(checkpoint)!r} was trained with a different "
                         f"config (differs in {diff}); pass config=SamConfig(**ckpt"
                         "['config']) or the matching preset")
    return state["model"]


def _finite_array(name: str, value, shape_text: str, ndim: Optional[int],
                  last: Optional[int]) -> np.ndarray:
    """A prompt argument as a float array of the documented shape (ndim None: any), or a
    ValueError/TypeError that names the argument and says what was expected."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a numeric array of shape {shape_text}, got "
                        f"{type(value).__name__}") from e
    if (ndim is not None and array.ndim != ndim) or (last is not None and array.shape[-1] != last):
        raise ValueError(f"{name} must have shape {shape_text}, got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite, got NaN or inf in {array.tolist()}")
    return array


def _check_image(image) -> None:
    """The one image contract of the public API: a uint8 (H, W, 3) numpy array. Anything else
    is refused with the conversion that would fix it."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array of shape (H, W, 3) and dtype uint8, "
                        f"got {type(image).__name__} (for a PIL image use np.asarray(img))")
    if image.dtype != np.uint8:
        raise TypeError(f"image must have dtype uint8 (0..255), got {image.dtype} (for floats "
                        "in [0, 1] use (img * 255).round().astype(np.uint8))")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 1):
        raise ValueError(f"image must be RGB of shape (H, W, 3), got grayscale {image.shape}; "
                         "convert with np.dstack([img] * 3)")
    if image.ndim == 3 and image.shape[0] == 3 and image.shape[-1] != 3:
        raise ValueError(f"image must be channels-last (H, W, 3), got {image.shape}; "
                         "use img.transpose(1, 2, 0)")
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must have shape (H, W, 3), got {image.shape}"
                         + ("; drop the alpha channel with img[..., :3]"
                            if image.ndim == 3 and image.shape[-1] == 4 else ""))
    if min(image.shape[:2]) < 1:
        raise ValueError(f"image must be at least 1x1 pixels, got {image.shape}")

def _checked_prompts(point_coords, point_labels, box, mask_input, original_size, low_res):
    """SamPredictor.predict's prompts as float arrays (None where not given): point_coords
    (N, 2) inside the (H, W) image, point_labels (N,) of 0 and 1, box (4,) with x0 <= x1 and
    y0 <= y1, mask_input (1, *low_res); else a ValueError/TypeError naming the argument."""
    H, W = original_size
    coords = labels = boxes = masks = None
    if (point_coords is None) != (point_labels is None):
        raise ValueError("point_coords and point_labels must be given together")
    if point_coords is not None:
        coords = _finite_array("point_coords", point_coords, "(N, 2)", 2, 2)
        labels = _finite_array("point_labels", point_labels, "(N,)", 1, None)
        if len(labels) != len(coords):
            raise ValueError(f"point_labels has {len(labels)} labels for the {len(coords)} "
                             "points of point_coords")
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(f"point_labels must be 0 (background) or 1 (foreground), "
                             f"got {np.unique(labels).tolist()}")
        outside = (coords < 0).any(1) | (coords[:, 0] > W) | (coords[:, 1] > H)
        if outside.any():
            raise ValueError(f"point_coords must lie in the image (0 <= x <= {W}, "
                             f"0 <= y <= {H}), got {coords[outside].tolist()}")
    if box is not None:
        boxes = _finite_array("box", box, "(4,) as x0, y0, x1, y1", None, None)
        if boxes.size != 4:  # (1, 4), the shape of a batch of one, is taken too
            raise ValueError(f"box must have shape (4,) as x0, y0, x1, y1, got {boxes.shape}")
        boxes = boxes.reshape(-1)
        if boxes[0] > boxes[2] or boxes[1] > boxes[3]:
            raise ValueError(f"box must have x0 <= x1 and y0 <= y1, got {boxes.tolist()}")
    if mask_input is not None:
        shape = f"(1, {low_res[0]}, {low_res[1]})"
        masks = _finite_array("mask_input", mask_input, shape, 3, None)
        if masks.shape != (1, *low_res):
            raise ValueError(f"mask_input must have shape {shape} (a low_res_masks row of an "
                             f"earlier call), got {masks.shape}")
    return coords, labels, boxes, masks


def _check_generator_settings(generator, points_per_side, point_grids,
                              downscale_factor) -> None:
    """SamAutomaticMaskGenerator's settings (its attributes and the three arguments it does
    not keep), or a ValueError/TypeError/ImportError that names the setting."""
    if (points_per_side is None) == (point_grids is None):
        raise ValueError("give exactly one of points_per_side and point_grids, got "
                         f"points_per_side={points_per_side!r} and "
                         f"point_grids={'None' if point_grids is None else 'a list'}")
    layers = generator.crop_n_layers
    for name, value, low in (("points_per_batch", generator.points_per_batch, 1),
                             ("crop_n_layers", layers, 0),
                             ("crop_n_points_downscale_factor", downscale_factor, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    for name, low, high in (("pred_iou_thresh", 0, 1), ("stability_score_thresh", 0, 1),
                            ("stability_score_offset", 0, math.inf), ("box_nms_thresh", 0, 1),
                            ("crop_nms_thresh", 0, 1), ("crop_overlap_ratio", 0, 1),
                            ("min_mask_region_area", 0, math.inf)):
        value = getattr(generator, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not low <= value <= high:
            raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")
    if generator.output_mode not in ("binary_mask", "uncompressed_rle", "coco_rle"):
        raise ValueError("output_mode must be 'binary_mask', 'uncompressed_rle' or "
                         f"'coco_rle', got {generator.output_mode!r}")
    if generator.output_mode == "coco_rle" and importlib.util.find_spec("pycocotools") is None:
        raise ImportError("output_mode='coco_rle' needs pycocotools (pip install "
                          "pycocotools); 'uncompressed_rle' needs nothing")
    if points_per_side is not None:
        if not isinstance(points_per_side, int) or isinstance(points_per_side, bool) \
                or points_per_side < 1:
            raise ValueError(f"points_per_side must be a positive integer, got "
                             f"{points_per_side!r}")
        if points_per_side < downscale_factor ** layers:
            raise ValueError(
                f"points_per_side={points_per_side} leaves no points in crop layer {layers} "
                f"with crop_n_points_downscale_factor={downscale_factor}: it must be at least "
                f"{downscale_factor ** layers}")
        return
    if not isinstance(point_grids, (list, tuple)):
        raise TypeError(f"point_grids must be a list of (N, 2) arrays, one per crop layer, "
                        f"got {type(point_grids).__name__}")
    if len(point_grids) != layers + 1:
        raise ValueError(f"point_grids must hold one grid per crop layer ({layers + 1}), "
                         f"got {len(point_grids)}")
    for grid in point_grids:
        grid = _finite_array("point_grids[i]", grid, "(N, 2) in [0, 1]", 2, 2)
        if (grid < 0).any() or (grid > 1).any():
            raise ValueError("point_grids hold coordinates normalised to [0, 1]")
        if len(grid) == 0:
            raise ValueError("every grid in point_grids needs at least one point")


def _check_embedding_batch(image_embeddings: torch.Tensor, n: int) -> None:
    """MaskDecoder's image_embeddings: one shared by all n prompt rows, or one for each."""
    if image_embeddings.shape[0] not in (1, n):
        raise ValueError(f"image_embeddings has batch {image_embeddings.shape[0]}; expected "
                         f"1 (shared) or {n} (one per prompt row)")
