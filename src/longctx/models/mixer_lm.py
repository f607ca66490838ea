"""A pure-PyTorch twin of `mamba_ssm`'s MambaLMHeadModel (Mamba2 / attention / gated-MLP blocks),
for the checkpoints transformers has no class for: state-spaces/mamba2attn-2.7b (Mamba2 with six
attention layers) and state-spaces/transformerpp-2.7b (attention + gated MLP).

It follows mamba_ssm's definitions, parameter names included, so a checkpoint's state dict loads
as is: `Block` is mamba_ssm's Add -> Norm -> Mixer (-> Add -> Norm -> MLP) block in its fused
form (the form the checkpoints were trained with); `MHA` has mamba_ssm's optional depthwise
convolution over q/k/v, partial non-interleaved rotary and GQA; `Mamba2Mixer` computes the
state-space dual (SSD) in chunks, checked against the plain recurrence (`ssd_reference`).

Every module is stateful for generation: `MixerLM.step(ids, state)` continues from `state`, so a
prompt can be prefilled in chunks (flat memory) and decoded one token at a time. `step` also takes
left-padded rows (`pads`): padding is zeroed before every convolution and scan, and no real
position attends to it, so each row computes what it computes alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .stateful import real_columns


@dataclass(frozen=True)
class MixerConfig:
    """mamba_ssm's MambaConfig (config.json of the state-spaces checkpoints)."""

    d_model: int = 2560
    d_intermediate: int = 0
    n_layer: int = 64
    vocab_size: int = 50277
    ssm_cfg: dict = field(default_factory=dict)
    attn_layer_idx: tuple = ()
    attn_cfg: dict = field(default_factory=dict)
    rms_norm: bool = True
    residual_in_fp32: bool = True
    fused_add_norm: bool = True
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True
    norm_epsilon: float = 1e-5

    @property
    def padded_vocab(self) -> int:
        m = self.pad_vocab_size_multiple
        return self.vocab_size + (-self.vocab_size) % m


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()).to(x.dtype)


class GatedRMSNorm(nn.Module):
    """mamba_ssm's RMSNormGated with norm_before_gate=False: normalise y * silu(z) per group."""

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        self.eps, self.group_size = eps, group_size
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y, z):
        h = (y * F.silu(z)).float()
        shape = h.shape
        h = h.view(*shape[:-1], -1, self.group_size)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h.view(shape) * self.weight.float()).to(y.dtype)


def _causal_conv(x, conv: nn.Conv1d, prev):
    """Depthwise causal convolution of x [B, L, D] continuing from the last k-1 inputs `prev`
    [B, D, k-1]; returns the output [B, L, D] and the new `prev`."""
    xt = torch.cat([prev, x.transpose(1, 2)], dim=-1)
    out = F.conv1d(xt, conv.weight, conv.bias, groups=conv.groups)
    return out.transpose(1, 2), xt[..., xt.shape[-1] - prev.shape[-1]:]


def _segsum(x):
    """out[..., i, j] = x[..., j+1] + ... + x[..., i] for i >= j, and -inf above the diagonal."""
    t = x.shape[-1]
    x = x[..., None].expand(*x.shape, t)
    x = x.masked_fill(~torch.tril(torch.ones(t, t, dtype=torch.bool, device=x.device), -1), 0)
    out = torch.cumsum(x, dim=-2)
    return out.masked_fill(~torch.tril(torch.ones(t, t, dtype=torch.bool, device=x.device), 0), -math.inf)


def ssd_chunked(x, dt, a, b, c, h0, chunk: int):
    """The SSD scan in chunks. x [B,L,H,P], dt [B,L,H] (after softplus), a [H] (negative),
    b, c [B,L,H,N], h0 [B,H,P,N]. Returns y [B,L,H,P] (without the D skip) and the final state."""
    length = x.shape[1]
    pad = (-length) % chunk
    if pad:  # dt = 0 on padding: no decay, no input, so the final state is untouched
        x, dt, b, c = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, b, c))
    bsz, total, heads, p = x.shape
    n = b.shape[-1]
    k = total // chunk
    xs = (x * dt[..., None]).view(bsz, k, chunk, heads, p)
    bs, cs = b.view(bsz, k, chunk, heads, n), c.view(bsz, k, chunk, heads, n)
    da = (dt * a).view(bsz, k, chunk, heads).permute(0, 3, 1, 2)  # B H K S
    cum = torch.cumsum(da, dim=-1)
    y_diag = torch.einsum("bklhn,bkshn,bhkls,bkshp->bklhp", cs, bs, torch.exp(_segsum(da)), xs)
    states = torch.einsum("bklhn,bhkl,bklhp->bkhpn", bs, torch.exp(cum[..., -1:] - cum), xs)
    states = torch.cat([h0[:, None].to(states.dtype), states], dim=1)
    decay = torch.exp(_segsum(F.pad(cum[..., -1], (1, 0))))  # B H K+1 K+1
    states = torch.einsum("bhzk,bkhpn->bzhpn", decay, states)
    y_off = torch.einsum("bklhn,bkhpn,bhkl->bklhp", cs, states[:, :-1], torch.exp(cum))
    y = (y_diag + y_off).reshape(bsz, total, heads, p)[:, :length]
    return y, states[:, -1]


def ssd_reference(x, dt, a, b, c, h0):
    """The same scan as a plain recurrence, one position at a time (the naive reference)."""
    h, ys = h0, []
    for t in range(x.shape[1]):
        decay = torch.exp(dt[:, t] * a)[..., None, None]
        h = decay * h + (dt[:, t, :, None, None] * x[:, t, :, :, None]) * b[:, t, :, None, :]
        ys.append((h * c[:, t, :, None, :]).sum(-1))
    return torch.stack(ys, dim=1), h


class Mamba2Mixer(nn.Module):
    def __init__(self, d_model: int, d_state: int = 128, d_conv: int = 4, expand: int = 2, headdim: int = 64,
                 d_ssm: int | None = None, ngroups: int = 1, chunk_size: int = 256, bias: bool = False,
                 conv_bias: bool = True, D_has_hdim: bool = False, rmsnorm: bool = True, norm_before_gate: bool = False,
                 dt_limit: tuple = (0.0, float("inf")), **ignored: Any):
        super().__init__()
        if not rmsnorm or norm_before_gate:
            raise NotImplementedError("only mamba_ssm's default gated RMSNorm (norm_before_gate=False) is supported")
        self.d_inner = expand * d_model
        self.d_ssm = d_ssm or self.d_inner
        self.headdim, self.d_state, self.ngroups, self.chunk = headdim, d_state, ngroups, chunk_size
        self.nheads = self.d_ssm // headdim
        self.dt_limit = tuple(dt_limit)
        conv_dim = self.d_ssm + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * ngroups * d_state + self.nheads, bias=bias)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv - 1, bias=conv_bias)
        self.dt_bias = nn.Parameter(torch.zeros(self.nheads))
        self.A_log = nn.Parameter(torch.zeros(self.nheads))
        self.D = nn.Parameter(torch.ones(self.d_ssm if D_has_hdim else self.nheads))
        self.norm = GatedRMSNorm(self.d_ssm, self.d_ssm // ngroups)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def empty_state(self, batch: int, device, dtype):
        conv = torch.zeros(batch, self.conv1d.weight.shape[0], self.conv1d.kernel_size[0] - 1, device=device, dtype=dtype)
        ssm = torch.zeros(batch, self.nheads, self.headdim, self.d_state, device=device, dtype=torch.float32)
        return conv, ssm

    def forward(self, u, state, scan=None, rows=None):
        """`rows` (left-padded rows, or None): padding is zeroed before the convolution, so a real
        position's window sees zeros there as it would alone, and before the scan, so the state
        stays zero until a row's first real position."""
        bsz, length, _ = u.shape
        zxbcdt = self.in_proj(u)
        d_mlp = (zxbcdt.shape[-1] - 2 * self.d_ssm - 2 * self.ngroups * self.d_state - self.nheads) // 2
        z0, x0, z, xbc, dt = zxbcdt.split([d_mlp, d_mlp, self.d_ssm, self.d_ssm + 2 * self.ngroups * self.d_state,
                                           self.nheads], dim=-1)
        if rows is not None:
            xbc = xbc.masked_fill(~rows.real[..., None], 0)
        xbc, conv_state = _causal_conv(xbc, self.conv1d, state[0])
        x, b, c = F.silu(xbc).split([self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        if rows is not None:
            x = x.masked_fill(~rows.real[..., None], 0)  # the state takes in dt * b * x: nothing at padding
        dt = F.softplus((dt + self.dt_bias).float()).clamp(*self.dt_limit)
        a = -torch.exp(self.A_log.float())
        per_group = self.nheads // self.ngroups
        heads = lambda t: t.view(bsz, length, self.ngroups, 1, self.d_state).expand(
            -1, -1, -1, per_group, -1).reshape(bsz, length, self.nheads, self.d_state).float()
        xh = x.view(bsz, length, self.nheads, self.headdim).float()
        if scan is not None:
            y, ssm_state = scan(xh, dt, a, heads(b), heads(c), state[1])
        else:
            y, ssm_state = ssd_chunked(xh, dt, a, heads(b), heads(c), state[1], self.chunk)
        d = self.D.float().view(self.nheads, -1) if self.D.numel() == self.d_ssm else self.D.float()[:, None]
        y = (y + xh * d).reshape(bsz, length, self.d_ssm).to(u.dtype)
        y = self.norm(y, z)
        if d_mlp > 0:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)
        return self.out_proj(y), (conv_state, ssm_state)


def _rotate(x, pos, dim: int, base: float):
    """flash-attn's non-interleaved rotary on the first `dim` channels of each head; x [B,L,H,D]."""
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim))
    ang = pos.float()[:, None] * inv[None]  # L, dim/2
    cos, sin = ang.cos()[None, :, None, :], ang.sin()[None, :, None, :]
    x1, x2, rest = x[..., : dim // 2].float(), x[..., dim // 2: dim].float(), x[..., dim:]
    rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)
    return torch.cat([rotated, rest], dim=-1)


class MHA(nn.Module):
    def __init__(self, d_model: int, num_heads: int, num_heads_kv: int | None = None, head_dim: int | None = None,
                 mlp_dim: int = 0, qkv_proj_bias: bool = True, out_proj_bias: bool = True,
                 softmax_scale: float | None = None, causal: bool = True, d_conv: int = 0, rotary_emb_dim: int = 0,
                 rotary_emb_base: float = 10000.0, rotary_emb_interleaved: bool = False, **ignored: Any):
        super().__init__()
        if not causal or rotary_emb_interleaved:
            raise NotImplementedError("only causal attention with non-interleaved rotary is supported")
        self.h, self.hkv = num_heads, num_heads_kv or num_heads
        self.d = head_dim or d_model // num_heads
        self.mlp_dim = math.ceil(mlp_dim / 256) * 256
        self.scale, self.rot, self.base = softmax_scale, rotary_emb_dim, rotary_emb_base
        qkv_dim = self.d * (self.h + 2 * self.hkv)
        self.in_proj = nn.Linear(d_model, qkv_dim + self.mlp_dim, bias=qkv_proj_bias)
        if d_conv > 0:
            self.conv1d = nn.Conv1d(qkv_dim, qkv_dim, d_conv, padding=d_conv - 1, groups=qkv_dim)
        self.out_proj = nn.Linear(self.d * self.h + self.mlp_dim // 2, d_model, bias=out_proj_bias)

    def empty_state(self, batch: int, device, dtype):
        conv = None
        if hasattr(self, "conv1d"):
            conv = torch.zeros(batch, self.conv1d.weight.shape[0], self.conv1d.kernel_size[0] - 1, device=device, dtype=dtype)
        kv = torch.zeros(batch, 0, 2, self.hkv, self.d, device=device, dtype=dtype)
        return conv, kv

    def forward(self, x, state, rows=None):
        """`rows` (left-padded rows, or None): padding is zeroed before the convolution, and no real
        position attends to padding."""
        bsz, length, _ = x.shape
        conv, kv_cache = state
        qkv = self.in_proj(x)
        if self.mlp_dim:
            qkv, mlp = qkv.split([qkv.shape[-1] - self.mlp_dim, self.mlp_dim], dim=-1)
            up, gate = mlp.chunk(2, dim=-1)
            mlp = up * F.silu(gate)
        if conv is not None:
            if rows is not None:
                qkv = qkv.masked_fill(~rows.real[..., None], 0)
            qkv, conv = _causal_conv(qkv, self.conv1d, conv)
        q, kv = qkv.split([self.h * self.d, 2 * self.hkv * self.d], dim=-1)
        q, kv = q.view(bsz, length, self.h, self.d), kv.view(bsz, length, 2, self.hkv, self.d)
        past = kv_cache.shape[1]
        if self.rot:  # (relative: a row's padding shifts all its positions alike, which changes no score)
            pos = torch.arange(past, past + length, device=x.device)
            q = _rotate(q, pos, self.rot, self.base)
            kv = torch.stack([_rotate(kv[:, :, 0], pos, self.rot, self.base), kv[:, :, 1]], dim=2)
        kv_cache = torch.cat([kv_cache, kv], dim=1)
        k, v = (kv_cache[:, :, i].repeat_interleave(self.h // self.hkv, dim=2).transpose(1, 2) for i in (0, 1))
        allowed = torch.ones(length, past + length, dtype=torch.bool, device=x.device).tril(past)
        if rows is not None:
            # Keys of padding are out. A query of padding keeps its own key: torch's SDPA gives zeros
            # for a row with none on the CPU, but a kernel that gave NaN there would put NaN into
            # real rows' sums (NaN times a zero weight is NaN).
            columns = torch.arange(past + length, device=x.device)
            allowed = (allowed & (columns >= rows.pads[:, None, None])) | (columns == past + torch.arange(
                length, device=x.device)[:, None])
            allowed = allowed[:, None]  # [B, 1, L, past + L]
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=allowed, scale=self.scale)
        out = out.transpose(1, 2).reshape(bsz, length, self.h * self.d)
        if self.mlp_dim:
            out = torch.cat([out, mlp], dim=-1)
        return self.out_proj(out), (conv, kv_cache)


class GatedMLP(nn.Module):
    def __init__(self, d_model: int, hidden: int, multiple_of: int = 128):
        super().__init__()
        hidden = (hidden + multiple_of - 1) // multiple_of * multiple_of
        self.fc1 = nn.Linear(d_model, 2 * hidden, bias=False)
        self.fc2 = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x):
        y, gate = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(y * F.silu(gate))


class Block(nn.Module):
    """Add -> Norm -> Mixer (-> Add -> Norm -> MLP), returning (mixer/MLP output, residual)."""

    def __init__(self, cfg: MixerConfig, idx: int):
        super().__init__()
        norm = (lambda: RMSNorm(cfg.d_model, cfg.norm_epsilon)) if cfg.rms_norm else (
            lambda: nn.LayerNorm(cfg.d_model, eps=cfg.norm_epsilon))
        self.norm = norm()
        if idx in cfg.attn_layer_idx:
            self.mixer = MHA(cfg.d_model, **cfg.attn_cfg)
        else:
            layer = cfg.ssm_cfg.get("layer", "Mamba1")
            if layer != "Mamba2":
                raise NotImplementedError(f"mamba_ssm layer {layer!r} is not supported (only Mamba2)")
            self.mixer = Mamba2Mixer(cfg.d_model, **{k: v for k, v in cfg.ssm_cfg.items() if k != "layer"})
        if cfg.d_intermediate > 0:
            self.norm2 = norm()
            self.mlp = GatedMLP(cfg.d_model, cfg.d_intermediate)
        self.residual_in_fp32 = cfg.residual_in_fp32

    def forward(self, h, residual, state, rows=None):
        residual = h if residual is None else h + residual
        h = self.norm(residual.to(self.norm.weight.dtype))
        if self.residual_in_fp32:
            residual = residual.float()
        h, state = self.mixer(h, state, rows=rows)
        if hasattr(self, "mlp"):
            residual = h + residual
            h = self.mlp(self.norm2(residual.to(self.norm2.weight.dtype)))
        return h, residual, state


class Backbone(nn.Module):
    def __init__(self, cfg: MixerConfig):
        super().__init__()
        self.embedding = nn.Embedding(cfg.padded_vocab, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_epsilon) if cfg.rms_norm else nn.LayerNorm(cfg.d_model, eps=cfg.norm_epsilon)


class MixerLM(nn.Module):
    takes_padding = True  # `step` keeps left padding out of every row (stateful.PADDED_IN_LOOP)

    def __init__(self, cfg: MixerConfig):
        super().__init__()
        self.config = cfg
        self.backbone = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.padded_vocab, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    def empty_state(self, batch: int):
        p = self.lm_head.weight
        return [layer.mixer.empty_state(batch, p.device, p.dtype) for layer in self.backbone.layers]

    def hidden(self, ids, state, rows=None):
        h, residual, new_state = self.backbone.embedding(ids), None, []
        for layer, s in zip(self.backbone.layers, state):
            h, residual, s = layer(h, residual, s, rows=rows)
            new_state.append(s)
        residual = h + residual
        return self.backbone.norm_f(residual.to(self.backbone.norm_f.weight.dtype)), new_state

    def forward(self, ids):
        """Logits at every position (tests and training); generation uses `step`."""
        h, _ = self.hidden(ids, self.empty_state(ids.shape[0]))
        return self.lm_head(h)

    def step(self, ids, state=None, pads=None):
        """Continue from `state` over ids [B, L]; returns the last position's logits and the new
        state. `pads` (first call only): each row's left padding, kept out of every row."""
        if state is None:
            state = StepState(self.empty_state(ids.shape[0]), 0, None if pads is None else pads.to(ids.device))
        rows = None
        if state.pads is not None:
            rows = Rows(state.pads, real_columns(state.pads, state.seen, state.seen + ids.shape[1]))
        h, layers = self.hidden(ids, state.layers, rows)
        return self.lm_head(h[:, -1]), StepState(layers, state.seen + ids.shape[1], state.pads)


@dataclass
class StepState:
    """What `MixerLM.step` carries: each layer's state, the columns seen, the rows' left padding."""
    layers: list
    seen: int
    pads: Any = None  # [B] long tensor, or None


@dataclass
class Rows:
    """Left-padded rows during one call: each row's padding, and which of the call's columns are real."""
    pads: Any  # [B]
    real: Any  # [B, L] bool
