"""The collaborative ensembler of CFBI+ (our implementation): a residual decoder over the
multi-scale matching maps, gated per entry by instance-level attention.

The batch dimension holds "entries": for every candidate, one entry for the candidate and one
for its complement (the official N = 1 path). The low-level backbone feature of each frame is
shared by all entries of that frame (indexed by ``frame_index``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``groups`` that divides ``channels``."""
    g = math.gcd(channels, groups)
    return nn.GroupNorm(max(1, g), channels)


class GCT(nn.Module):
    """Gated Channel Transformation: y = x * (1 + tanh(gamma * s_c / rms(s) + beta)),
    s_c = alpha_c * ||x_c||_2. Initialised to the identity (gamma = beta = 0)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        s = self.alpha * (x.pow(2).sum((2, 3), keepdim=True) + self.eps).sqrt()
        n = self.gamma / (s.pow(2).mean(1, keepdim=True) + self.eps).sqrt()
        return x * (1.0 + torch.tanh(s * n + self.beta))


class IAGate(nn.Module):
    """Instance-level attention gate: channel multipliers 1 + tanh(Linear(attention))."""

    def __init__(self, attention_dim: int, channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(attention_dim, channels)

    def forward(self, x: Tensor, attention: Tensor) -> Tensor:
        return x * (1.0 + torch.tanh(self.fc(attention)))[:, :, None, None]


class Bottleneck(nn.Module):
    """GCT -> 1x1 -> GN -> ReLU -> 3x3 (stride, dilation) -> GN -> ReLU -> 1x1 -> GN, residual."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1, groups: int = 32):
        super().__init__()
        mid = max(1, cout // 4)  # expansion 4
        self.gct = GCT(cin)
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.gn1 = group_norm(mid, groups)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.gn2 = group_norm(mid, groups)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.gn3 = group_norm(cout, groups)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), group_norm(cout, groups)
            )

    def forward(self, x: Tensor) -> Tensor:
        y = self.gct(x)
        y = F.relu(self.gn1(self.conv1(y)))
        y = F.relu(self.gn2(self.conv2(y)))
        y = self.gn3(self.conv3(y))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class GatedASPP(nn.Module):
    """ASPP with GCT-gated branches (1x1; 3x3 at rates 6/12/18; image pooling)."""

    def __init__(self, cin: int, width: int, cout: int, groups: int = 32) -> None:
        super().__init__()
        self.branches = nn.ModuleList()
        for rate in (1, 6, 12, 18):
            k, pad = (1, 0) if rate == 1 else (3, rate)
            self.branches.append(
                nn.Sequential(
                    GCT(cin),
                    nn.Conv2d(cin, width, k, padding=pad, dilation=rate, bias=False),
                    group_norm(width, groups),
                    nn.ReLU(inplace=True),
                )
            )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, width, 1), nn.ReLU())
        self.project = nn.Sequential(
            GCT(5 * width),
            nn.Conv2d(5 * width, cout, 1, bias=False),
            group_norm(cout, groups),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        outs = [b(x) for b in self.branches]
        outs.append(self.pool(x).expand(-1, -1, *x.shape[-2:]))
        return self.project(torch.cat(outs, 1))


class CollaborativeEnsembler(nn.Module):
    """Three residual stages (strides 4, 8, 16) fed by the matching inputs of each scale, an
    ASPP, and a decoder back to stride 4, every block preceded by an IA gate (11 gates).

    Output: per entry, a foreground and a background logit map at stride 4 from two dynamic 1x1
    convolutions whose weights are predicted from the entry's attention vector.
    """

    def __init__(
        self,
        in_channels: tuple[int, int, int],
        low_level_channels: int,
        attention_dim: int,
        widths: tuple[int, int, int] = (256, 512, 512),
        aspp_width: int = 128,
        aspp_out: int = 256,
        skip_channels: int = 64,
        decoder_channels: int = 128,
        groups: int = 32,
    ) -> None:
        super().__init__()
        c4, c8, c16 = in_channels
        w1, w2, w3 = widths
        specs = [  # (cin, cout, stride, dilation) per residual block
            (c4, w1, 1, 1), (w1, w1, 1, 2),  # stage 1, stride 4
            (w1, w2, 2, 1), (w2 + c8, w2, 1, 2), (w2, w2, 1, 4),  # stage 2, stride 8
            (w2, w3, 2, 1), (w3 + c16, w3, 1, 2), (w3, w3, 1, 4),  # stage 3, stride 16
        ]
        self.blocks = nn.ModuleList(Bottleneck(i, o, s, d, groups) for i, o, s, d in specs)
        self.block_gates = nn.ModuleList(IAGate(attention_dim, i) for i, _, _, _ in specs)
        self.aspp_gate = IAGate(attention_dim, w3)
        self.aspp = GatedASPP(w3, aspp_width, aspp_out, groups)
        skip_in = w1 + low_level_channels
        self.skip = nn.Sequential(
            GCT(skip_in),
            nn.Conv2d(skip_in, skip_channels, 1, bias=False),
            group_norm(skip_channels, max(1, groups // 2)),
            nn.ReLU(inplace=True),
        )
        dec_in = aspp_out + skip_channels
        self.dec_gates = nn.ModuleList(
            [IAGate(attention_dim, dec_in), IAGate(attention_dim, decoder_channels)]
        )
        self.dec_convs = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(cin, decoder_channels, 3, padding=1, bias=False),
                group_norm(decoder_channels, groups),
                nn.ReLU(inplace=True),
            )
            for cin in (dec_in, decoder_channels)
        )
        # dynamic 1x1 convs: weights (decoder_channels) + bias, one head each for fg and bg
        self.fg_head = nn.Linear(attention_dim, decoder_channels + 1)
        self.bg_head = nn.Linear(attention_dim, decoder_channels + 1)
        self.decoder_channels = decoder_channels

    def _block(self, i: int, x: Tensor, attention: Tensor) -> Tensor:
        return self.blocks[i](self.block_gates[i](x, attention))

    def forward(
        self,
        inputs: tuple[Tensor, Tensor, Tensor],
        low_level: Tensor,
        frame_index: Tensor,
        attention: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """``inputs``: per-entry matching inputs at strides 4/8/16, (E, c_s, H_s, W_s);
        ``low_level`` (B, c, H4, W4) backbone feature; ``frame_index`` (E,) maps each entry to
        its frame; ``attention`` (E, attention_dim). Returns (fg, bg) logits (E, H4, W4)."""
        x4, x8, x16 = inputs
        x = self._block(0, x4, attention)
        x = self._block(1, x, attention)
        skip = torch.cat([x, low_level[frame_index]], 1)
        x = self._block(2, x, attention)
        x = self._block(3, torch.cat([x, _fit(x8, x)], 1), attention)
        x = self._block(4, x, attention)
        x = self._block(5, x, attention)
        x = self._block(6, torch.cat([x, _fit(x16, x)], 1), attention)
        x = self._block(7, x, attention)
        x = self.aspp(self.aspp_gate(x, attention))
        x = F.interpolate(x, size=skip.shape[-2:], mode="bicubic", align_corners=True)
        x = torch.cat([x, self.skip(skip)], 1)
        for gate, conv in zip(self.dec_gates, self.dec_convs):
            x = conv(gate(x, attention))
        fg = _dynamic_conv(x, self.fg_head(attention))
        bg = _dynamic_conv(x, self.bg_head(attention))
        return fg, bg


def _fit(x: Tensor, like: Tensor) -> Tensor:
    """Resize a matching input to the size a strided block produced (odd sizes round up)."""
    if x.shape[-2:] == like.shape[-2:]:
        return x
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def _dynamic_conv(x: Tensor, params: Tensor) -> Tensor:
    """Per-entry 1x1 conv: x (E, C, H, W), params (E, C + 1) -> (E, H, W)."""
    weight, bias = params[:, :-1], params[:, -1]
    return torch.einsum("echw,ec->ehw", x, weight) + bias[:, None, None]
