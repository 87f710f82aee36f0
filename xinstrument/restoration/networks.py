"""One small U-Net family shared by every learned method, so that comparisons are fair
(papers 001 sec. 2.4 and 002 sec. 2.4 use the same U-Net for all learned methods).

No normalisation layers: the network is then translation-equivariant up to its padding, so
tiled inference of large frames matches whole-frame inference away from tile edges (batch or
group statistics would change with every tile's content).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "METHOD_CONFIGS",
    "UNet",
    "build_model",
    "pack_weights",
    "timestep_embedding",
    "unet_from_weights",
]

# Per learned method: input channels, time conditioning, residual (output added to channel 0).
#   unet: LR -> HR regression; cold_diffusion: x_t -> x0 (paper 001); sde: [x_t, y] -> x0
#   (paper 002 sec. 2.2); sr3: [z_t, y] -> noise (Saharia et al. 2022, conditioning by concat).
METHOD_CONFIGS: dict[str, dict[str, int | bool]] = {
    "unet": {"in_channels": 1, "time_conditioning": False, "residual": True},
    "cold_diffusion": {"in_channels": 1, "time_conditioning": True, "residual": True},
    "sde": {"in_channels": 2, "time_conditioning": True, "residual": True},
    "sr3": {"in_channels": 2, "time_conditioning": True, "residual": False},
}
# Methods whose networks are trained elsewhere but stored in the same format: the sample-class
# specialists (restoration.specialist; inputs [Wiener output, thick frame], residual).
_OTHER_WEIGHT_METHODS = ("specialist_pcb",)
_WEIGHT_METHODS = (*METHOD_CONFIGS, *_OTHER_WEIGHT_METHODS)
_METHOD_IDS = {name: i for i, name in enumerate(_WEIGHT_METHODS)}
_WEIGHTS_FORMAT = 1
_META = "meta."
# Time in [0, 1] is scaled to the 0..1000 range of DDPM step indices before the sinusoidal
# embedding (Ho et al. 2020), so the embedding's frequencies resolve single steps.
_TIME_SCALE = 1000.0


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of times ``t`` (N,) in [0, 1] (Vaswani et al. 2017; Ho et al. 2020)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * _TIME_SCALE)[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb_dim: int | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, padding_mode="reflect")
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, padding_mode="reflect")
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        # FiLM: per-channel scale and shift from the time embedding (Perez et al. 2018).
        self.film = nn.Linear(temb_dim, 2 * cout) if temb_dim else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(F.silu(x))
        if self.film is not None and temb is not None:
            scale, shift = self.film(temb)[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class UNet(nn.Module):
    """Small U-Net: ``depth`` resolution levels with ``base_channels * 2**level`` channels.

    ``forward(x, t=None)`` takes (N, in_channels, H, W) and times (N,) in [0, 1] when time
    conditioned; any H, W (reflect-padded internally to a multiple of 2**(depth-1)).
    With ``residual`` the output is added to input channel 0 (predict a correction).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 24,
        depth: int = 3,
        time_conditioning: bool = False,
        residual: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1 or base_channels < 1 or in_channels < 1 or out_channels < 1:
            raise ValueError("UNet needs depth, base_channels, in/out channels >= 1")
        self.config = {
            "in_channels": in_channels,
            "out_channels": out_channels,
            "base_channels": base_channels,
            "depth": depth,
            "time_conditioning": bool(time_conditioning),
            "residual": bool(residual),
        }
        self.residual = residual
        self.depth = depth
        temb_dim = 4 * base_channels if time_conditioning else None
        self.time_mlp = (
            nn.Sequential(nn.Linear(base_channels, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
            if time_conditioning
            else None
        )
        chans = [base_channels * 2**i for i in range(depth)]
        self.stem = nn.Conv2d(in_channels, chans[0], 3, padding=1, padding_mode="reflect")
        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        for i, c in enumerate(chans):
            self.down_blocks.append(_ResBlock(c, c, temb_dim))
            if i < depth - 1:
                self.downsamples.append(nn.Conv2d(c, chans[i + 1], 3, stride=2, padding=1))
        self.mid = _ResBlock(chans[-1], chans[-1], temb_dim)
        self.upsamples = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for i in reversed(range(depth - 1)):
            self.upsamples.append(nn.Conv2d(chans[i + 1], chans[i], 3, padding=1, padding_mode="reflect"))
            self.up_blocks.append(_ResBlock(2 * chans[i], chans[i], temb_dim))
        self.head = nn.Conv2d(chans[0], out_channels, 3, padding=1, padding_mode="reflect")
        # Start as the identity (residual) or zero output: training begins from "no change".
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.config["in_channels"]:
            raise ValueError(
                f"UNet expects (N, {self.config['in_channels']}, H, W), got {tuple(x.shape)}"
            )
        temb = None
        if self.time_mlp is not None:
            if t is None or t.shape != (x.shape[0],):
                raise ValueError("time-conditioned UNet needs t of shape (N,)")
            temb = self.time_mlp(timestep_embedding(t, self.config["base_channels"]))
        h0, w0 = x.shape[-2:]
        m = 2 ** (self.depth - 1)
        ph, pw = (-h0) % m, (-w0) % m
        if ph or pw:
            mode = "reflect" if ph < h0 and pw < w0 else "replicate"
            x_in = F.pad(x, (0, pw, 0, ph), mode=mode)
        else:
            x_in = x
        h = self.stem(x_in)
        skips = []
        for i, block in enumerate(self.down_blocks):
            h = block(h, temb)
            if i < self.depth - 1:
                skips.append(h)
                h = self.downsamples[i](h)
        h = self.mid(h, temb)
        for up, block in zip(self.upsamples, self.up_blocks):
            skip = skips.pop()
            h = up(F.interpolate(h, size=skip.shape[-2:], mode="nearest"))
            h = block(torch.cat([h, skip], dim=1), temb)
        out = self.head(F.silu(h))[..., :h0, :w0]
        if self.residual:
            out = out + x[:, :1]
        return out


def build_model(method: str, base_channels: int = 24, depth: int = 3) -> UNet:
    """The U-Net for a learned method (see :data:`METHOD_CONFIGS`)."""
    if method not in METHOD_CONFIGS:
        raise ValueError(f"no network for method {method!r}; learned methods are {list(METHOD_CONFIGS)}")
    cfg = METHOD_CONFIGS[method]
    return UNet(
        in_channels=int(cfg["in_channels"]),
        out_channels=1,
        base_channels=base_channels,
        depth=depth,
        time_conditioning=bool(cfg["time_conditioning"]),
        residual=bool(cfg["residual"]),
    )


def pack_weights(model: UNet, method: str) -> dict[str, torch.Tensor]:
    """State dict plus the architecture as integer tensors under ``meta.*`` (so that
    ``torch.load(weights_only=True)`` can restore the model without code or pickled objects)."""
    if method not in _METHOD_IDS:
        raise ValueError(f"unknown learned method {method!r}")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    meta = {"format": _WEIGHTS_FORMAT, "method_id": _METHOD_IDS[method]}
    meta.update({k: int(v) for k, v in model.config.items()})
    state.update({_META + k: torch.tensor(v, dtype=torch.int64) for k, v in meta.items()})
    return state


def unet_from_weights(state: dict[str, torch.Tensor]) -> tuple[UNet, str]:
    """Rebuild a model from :func:`pack_weights` output; returns ``(model, method)``."""
    try:
        meta = {k[len(_META):]: int(v) for k, v in state.items() if k.startswith(_META)}
        if meta.get("format") != _WEIGHTS_FORMAT:
            raise ValueError(f"weights format {meta.get('format')!r}, expected {_WEIGHTS_FORMAT}")
        method = _WEIGHT_METHODS[meta["method_id"]]
        model = UNet(
            in_channels=meta["in_channels"],
            out_channels=meta["out_channels"],
            base_channels=meta["base_channels"],
            depth=meta["depth"],
            time_conditioning=bool(meta["time_conditioning"]),
            residual=bool(meta["residual"]),
        )
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith(_META)})
    except (KeyError, IndexError, RuntimeError, ValueError) as exc:
        raise ValueError(f"weights are not a restoration U-Net of this version: {exc}") from exc
    return model, method
