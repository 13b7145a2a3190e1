"""A small UNet: residual blocks conditioned on the noise level (and optionally a class), attention at low resolution.

It is the network F in f(x, t) = c_skip x + c_out F(c_in x, c_noise); it knows nothing about preconditioning.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def _norm(channels: int) -> nn.GroupNorm:
    # 32 groups as in ADM/EDM, fewer when the layer is narrow.
    groups = math.gcd(32, channels)
    return nn.GroupNorm(groups, channels)


def _layout(x: torch.Tensor) -> torch.memory_format:
    """The memory format x is in (channels-last models keep their activations NHWC)."""
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of a scalar noise label (Transformer / ADM style)."""

    def __init__(self, dim: int, scale: float = 1000.0, max_positions: int = 10000):
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(max_positions) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)
        self.scale = scale  # c_noise = ln(t)/4 times 1000 = 250 ln(t), the CM code's time input

    def forward(self, noise_labels: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(noise_labels.dtype, torch.float32)  # fp32 at least, under bf16 autocast too
        with torch.autocast(noise_labels.device.type, enabled=False):
            args = (self.scale * noise_labels.to(dtype))[:, None] * self.freqs.to(dtype)[None]  # (B, dim/2)
            return torch.cat([args.cos(), args.sin()], dim=1)  # (B, dim)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the embedding applied as a scale/shift after the second norm (ADM)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = _norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: stable early training
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = rearrange(self.emb(emb), "b (two c) -> two b c 1 1", two=2)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return (self.skip(x) + h) / math.sqrt(2)


class Attention(nn.Module):
    """Multi-head self-attention over the pixels of a (small) feature map, residual."""

    def __init__(self, channels: int, head_dim: int = 32):
        super().__init__()
        self.heads = max(channels // head_dim, 1)
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (three n d) h w -> three b n (h w) d", three=3, n=self.heads)
        # Written out rather than F.scaled_dot_product_attention: forward-mode AD (torch.func.jvp, for sCM and
        # MeanFlow) has no rule for the fused kernels, and at the low resolutions attention runs at it costs little.
        weights = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1)  # (B, heads, HW, HW)
        out = weights @ v  # (B, heads, HW, d)
        # contiguous: a strided input would give proj's weight gradient a layout DDP's buckets do not expect
        out = rearrange(out, "b n (h w) d -> b (n d) h w", h=h, w=w).contiguous(memory_format=_layout(x))
        return (x + self.proj(out)) / math.sqrt(2)


class UNet(nn.Module):
    """UNet(x, noise_labels, class_labels=None) -> same shape as x.

    Levels halve the resolution with stride-2 convs (28 -> 14 -> 7 for MNIST, 32 -> 16 -> 8, 64 -> ... -> 8), so the
    image side must be divisible by 2^(levels-1). Attention runs at the levels listed in `attn_levels` (default: the
    lowest) and in the middle block.
    """

    def __init__(
        self,
        in_channels: int = 1,
        *,
        base_channels: int = 64,
        channel_mult: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 2,
        attn_levels: tuple[int, ...] | None = None,
        dropout: float = 0.0,
        num_classes: int | None = None,
        out_channels: int | None = None,
        num_times: int = 1,  # time inputs: 1 (a noise level), 2 (MeanFlow's t and t - r, embedded side by side)
        time_scale: float = 1000.0,  # the time input is multiplied by this before the sinusoidal embedding
        null_class: bool = False,  # one more class row, index num_classes: "no class" (classifier-free guidance)
        guidance_embed: bool = False,  # a guidance scale w as an input (LCM's w-embedding; a guided teacher's student)
    ):
        super().__init__()
        if base_channels < 2 or base_channels % 2:
            raise ValueError(f"the UNet's base_channels must be even (its time embedding has base_channels // 2 "
                             f"frequencies, each a sine and a cosine), got {base_channels}")
        if not channel_mult or min(channel_mult) < 1 or num_res_blocks < 1:
            raise ValueError(f"channel_mult must be positive integers and num_res_blocks >= 1, got {channel_mult}, "
                             f"{num_res_blocks}")
        # Everything needed to rebuild this network from a checkpoint (plain values, so weights_only loading works).
        self.config = dict(
            in_channels=in_channels, base_channels=base_channels, channel_mult=list(channel_mult),
            num_res_blocks=num_res_blocks, attn_levels=None if attn_levels is None else list(attn_levels),
            dropout=dropout, num_classes=num_classes, out_channels=out_channels, num_times=num_times,
            time_scale=time_scale,
        )
        # recorded only when on, so that the networks of earlier checkpoints describe themselves as before
        self.config.update({k: True for k, on in (("null_class", null_class), ("guidance_embed", guidance_embed)) if on})
        if null_class and not num_classes:
            raise ValueError("null_class needs a class-conditional UNet (num_classes)")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.num_levels = len(channel_mult)
        attn_levels = (self.num_levels - 1,) if attn_levels is None else tuple(attn_levels)
        emb_dim = 4 * base_channels

        self.num_times = num_times
        self.noise_embed = PositionalEmbedding(base_channels, scale=time_scale)
        self.emb_mlp = nn.Sequential(
            nn.Linear(num_times * base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        # Class embedding is added to the noise embedding (ADM); it is a plain lookup table. With a null class, row
        # num_classes stands for "no class": what label dropout trains and classifier-free guidance samples.
        self.class_embed = nn.Embedding(num_classes + int(null_class), emb_dim) if num_classes else None
        self.null_class = num_classes if null_class else None
        # The guidance scale w, embedded as the noise level is (LCM: sinusoidal features of 1000 w) and added to the
        # time features through a zero-initialised layer, so a student starts as its teacher.
        self.guidance_embed = None
        if guidance_embed:
            self.guidance_embed = nn.Sequential(PositionalEmbedding(base_channels, scale=1000.0),
                                                nn.Linear(base_channels, num_times * base_channels))
            nn.init.zeros_(self.guidance_embed[1].weight)
            nn.init.zeros_(self.guidance_embed[1].bias)

        self.stem = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [base_channels]
        ch = base_channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(self._block(ch, base_channels * mult, emb_dim, dropout, level in attn_levels))
                ch = base_channels * mult
                skip_channels.append(ch)
            if level < self.num_levels - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skip_channels.append(ch)

        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, dropout), Attention(ch), ResBlock(ch, ch, emb_dim, dropout)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                out_ch = base_channels * mult
                self.up.append(self._block(ch + skip_channels.pop(), out_ch, emb_dim, dropout, level in attn_levels))
                ch = out_ch
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)))

        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, out_channels or in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @staticmethod
    def _block(in_ch: int, out_ch: int, emb_dim: int, dropout: float, attn: bool) -> nn.ModuleList:
        layers = [ResBlock(in_ch, out_ch, emb_dim, dropout)]
        if attn:
            layers.append(Attention(out_ch))
        return nn.ModuleList(layers)

    @staticmethod
    def _run(layer: nn.Module, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if isinstance(layer, nn.ModuleList):  # a ResBlock, maybe followed by attention
            for sub in layer:
                h = sub(h, emb) if isinstance(sub, ResBlock) else sub(h)
            return h
        return layer(h)  # a down- or up-sampling conv

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None,
                guidance: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[-1] % 2 ** (self.num_levels - 1) or x.shape[-2] % 2 ** (self.num_levels - 1):
            raise ValueError(
                f"image size {tuple(x.shape[-2:])} is not divisible by 2^{self.num_levels - 1}: "
                f"use fewer channel_mult levels or resize/pad the images"
            )
        if self.num_times == 1:
            times = self.noise_embed(noise_labels.reshape(-1))  # (B, C)
        else:  # (B, num_times) -> the embeddings side by side, (B, num_times * C)
            times = torch.cat([self.noise_embed(noise_labels[:, i]) for i in range(self.num_times)], dim=1)
        if self.guidance_embed is not None:
            if guidance is None:
                raise ValueError("this UNet takes a guidance scale (guidance_embed): pass guidance=w (1 = unguided)")
            times = times + self.guidance_embed(guidance.reshape(-1).expand(len(times)))
        elif guidance is not None:
            raise ValueError("this UNet takes no guidance scale: guide it by combining a conditional and a null-class "
                             "pass (consistency.sampling.guided)")
        emb = self.emb_mlp(times)  # (B, emb_dim); the embedding is computed in fp32 (see PositionalEmbedding)
        if self.class_embed is not None:
            if class_labels is None:
                raise ValueError("this UNet is class-conditional (num_classes set): pass class_labels")
            emb = emb + self.class_embed(class_labels)
        emb = F.silu(emb)

        h = self.stem(x)
        skips = [h]
        for layer in self.down:
            h = self._run(layer, h, emb)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(layer, h, emb)
        return self.out(h)
