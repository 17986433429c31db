"""An independent reference of the SAMA release's numerics, for the equivalence tests.

Written here from the release's stated facts, in the style of the original Wan code
(DiffSynth): it works directly on a state dict in the original key names, applies RoPE as
a complex float64 product, computes the timestep sinusoid in float64, gives semantic
tokens complex-zero rotary frequencies, and samples with flow-match Euler (shift, "extra
one step") and text CFG. Nothing here imports the platform's model code, so the tests
compare two separate implementations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sinusoidal(dim: int, t: torch.Tensor) -> torch.Tensor:
    half = dim // 2
    s = torch.outer(t.double(), torch.pow(10000, -torch.arange(half, dtype=torch.float64).div(half)))
    return torch.cat([torch.cos(s), torch.sin(s)], dim=1).to(t.dtype)


def _rope_1d(dim: int, length: int = 1024) -> torch.Tensor:
    inv = 1.0 / (10000 ** (torch.arange(0, dim, 2)[: dim // 2].double() / dim))
    ang = torch.outer(torch.arange(length, dtype=torch.float64), inv)
    return torch.polar(torch.ones_like(ang), ang)  # complex128


def rope_tables(head_dim: int) -> list[torch.Tensor]:
    hw = 2 * (head_dim // 6)
    return [_rope_1d(head_dim - 2 * hw), _rope_1d(hw), _rope_1d(hw)]


def grid_freqs(tables: list[torch.Tensor], f: int, h: int, w: int) -> torch.Tensor:
    ft, fh, fw = tables
    return torch.cat(
        [
            ft[:f].view(f, 1, 1, -1).expand(f, h, w, -1),
            fh[:h].view(1, h, 1, -1).expand(f, h, w, -1),
            fw[:w].view(1, 1, w, -1).expand(f, h, w, -1),
        ],
        dim=-1,
    ).reshape(f * h * w, 1, -1)


def rope_apply(x: torch.Tensor, freqs: torch.Tensor, heads: int) -> torch.Tensor:
    b, s, _ = x.shape
    xc = torch.view_as_complex(x.to(torch.float64).reshape(b, s, heads, -1, 2))
    return torch.view_as_real(xc * freqs).flatten(2).reshape(b, s, -1).to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


def linear(sd: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, sd[prefix + ".weight"], sd.get(prefix + ".bias"))


def attention(
    sd: dict, p: str, x: torch.Tensor, ctx: torch.Tensor, heads: int, eps: float, freqs: torch.Tensor | None
) -> torch.Tensor:
    q = rms_norm(linear(sd, p + ".q", x), sd[p + ".norm_q.weight"], eps)
    k = rms_norm(linear(sd, p + ".k", ctx), sd[p + ".norm_k.weight"], eps)
    v = linear(sd, p + ".v", ctx)
    if freqs is not None:
        q, k = rope_apply(q, freqs, heads), rope_apply(k, freqs, heads)
    b = x.shape[0]
    q, k, v = (t.view(b, t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
    return linear(sd, p + ".o", out)


def release_forward(
    sd: dict,
    x: torch.Tensor,
    timestep: torch.Tensor,
    context: torch.Tensor,
    source: torch.Tensor | None = None,
    semantic: torch.Tensor | None = None,
    heads: int = 2,
    eps: float = 1e-6,
    sem_eps: float = 1e-6,
):
    """One denoiser call. x (B, C, F, H, W), timestep (B,), context (B, L, text_dim),
    source latents or None, semantic noisy tokens (B, N, D_sig) or None.
    Returns (velocity (B, C, F, H, W), semantic prediction or None)."""
    dim = sd["patch_embedding.weight"].shape[0]
    patch = tuple(sd["patch_embedding.weight"].shape[2:])
    layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    tables = rope_tables(dim // heads)

    t = sinusoidal(sd["time_embedding.0.weight"].shape[1], timestep)
    t = linear(sd, "time_embedding.2", F.silu(linear(sd, "time_embedding.0", t)))
    t_mod = linear(sd, "time_projection.1", F.silu(t)).unflatten(1, (6, dim))
    ctx = linear(sd, "text_embedding.2", F.gelu(linear(sd, "text_embedding.0", context), approximate="tanh"))

    def patchify(lat):
        y = F.conv3d(lat, sd["patch_embedding.weight"], sd["patch_embedding.bias"], stride=patch)
        return y.flatten(2).transpose(1, 2), y.shape[2:]

    tgt, (f, h, w) = patchify(x)
    segs, freqs, types = [], [], []
    if source is not None:
        src, grid = patchify(source)
        (
            segs.append(src),
            freqs.append(grid_freqs(tables, *grid)),
            types.append(torch.zeros(src.shape[1], dtype=torch.long)),
        )
    n_src = sum(s.shape[1] for s in segs)
    n_sem = 0
    if semantic is not None:
        s = F.layer_norm(
            semantic, semantic.shape[-1:], sd["siglip_feat_mlp.norm.weight"], sd["siglip_feat_mlp.norm.bias"], sem_eps
        )
        s = linear(sd, "siglip_feat_mlp.fc2", F.gelu(linear(sd, "siglip_feat_mlp.fc1", s)))
        n_sem = s.shape[1]
        segs.append(s)
        freqs.append(torch.zeros(n_sem, 1, dim // heads // 2, dtype=torch.complex128))  # complex zero
        types.append(torch.ones(n_sem, dtype=torch.long))
    segs.append(tgt), freqs.append(grid_freqs(tables, f, h, w)), types.append(torch.full((tgt.shape[1],), 2))
    tokens = torch.cat(segs, dim=1)
    freqs = torch.cat(freqs, dim=0)
    if "segment_embedding.weight" in sd:
        tokens = tokens + sd["segment_embedding.weight"][torch.cat(types)]

    for i in range(layers):
        p = f"blocks.{i}"
        sh_a, sc_a, g_a, sh_m, sc_m, g_m = (sd[p + ".modulation"] + t_mod).chunk(6, dim=1)
        y = F.layer_norm(tokens, (dim,), eps=eps) * (1 + sc_a) + sh_a
        tokens = tokens + g_a * attention(sd, p + ".self_attn", y, y, heads, eps, freqs)
        y = F.layer_norm(tokens, (dim,), sd[p + ".norm3.weight"], sd[p + ".norm3.bias"], eps)
        tokens = tokens + attention(sd, p + ".cross_attn", y, ctx, heads, eps, None)
        y = F.layer_norm(tokens, (dim,), eps=eps) * (1 + sc_m) + sh_m
        y = linear(sd, p + ".ffn.2", F.gelu(linear(sd, p + ".ffn.0", y), approximate="tanh"))
        tokens = tokens + g_m * y

    sem_pred = None
    if n_sem:
        hs = tokens[:, n_src : n_src + n_sem]
        hs = F.layer_norm(hs, (dim,), sd["semantic_head.norm.weight"], sd["semantic_head.norm.bias"], sem_eps)
        sem_pred = linear(sd, "semantic_head.proj", hs)
    shift, scale = (sd["head.modulation"] + t.unsqueeze(1)).chunk(2, dim=1)
    out = linear(sd, "head.head", F.layer_norm(tokens, (dim,), eps=eps) * (1 + scale) + shift)
    out = out[:, -tgt.shape[1] :]
    c = out.shape[-1] // math.prod(patch)
    b = x.shape[0]
    out = out.view(b, f, h, w, *patch, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
    out = out.reshape(b, c, f * patch[0], h * patch[1], w * patch[2])
    return out, sem_pred


def release_sigmas(steps: int, shift: float = 5.0) -> torch.Tensor:
    s = torch.linspace(1.0, 0.0, steps + 1)[:-1]
    return shift * s / (1 + (shift - 1) * s)


def release_sample(
    sd: dict,
    latents: torch.Tensor,
    semantic: torch.Tensor | None,
    context: torch.Tensor,
    negative: torch.Tensor,
    source: torch.Tensor | None,
    steps: int,
    cfg: float = 5.0,
    shift: float = 5.0,
    heads: int = 2,
):
    """The release's denoising loop: Euler on the shifted grid, text CFG on both states."""
    sigmas = release_sigmas(steps, shift)
    timesteps = sigmas * 1000
    for i, t in enumerate(timesteps):
        tt = t.reshape(1).expand(latents.shape[0])
        pos, sp = release_forward(sd, latents, tt, context, source, semantic, heads)
        neg, sn = release_forward(sd, latents, tt, negative, source, semantic, heads)
        v = neg + cfg * (pos - neg)
        nxt = sigmas[i + 1] if i + 1 < len(sigmas) else torch.tensor(0.0)
        latents = latents + v * (nxt - sigmas[i])
        if semantic is not None:
            semantic = semantic + (sn + cfg * (sp - sn)) * (nxt - sigmas[i])
    return latents, semantic


def random_release_state_dict(
    dim: int = 32,
    heads: int = 2,
    layers: int = 2,
    in_ch: int = 16,
    text_dim: int = 32,
    freq_dim: int = 32,
    ffn: int = 64,
    sem_dim: int = 32,
    sem_hidden: int = 32,
    sama: bool = True,
    seed: int = 0,
    std: float = 0.2,
) -> dict[str, torch.Tensor]:
    """A random model in the release's key names (every tensor non-trivial)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=std):
        return torch.randn(*shape, generator=g) * s

    sd = {
        "patch_embedding.weight": r(dim, in_ch, 1, 2, 2),
        "patch_embedding.bias": r(dim),
        "text_embedding.0.weight": r(dim, text_dim),
        "text_embedding.0.bias": r(dim),
        "text_embedding.2.weight": r(dim, dim),
        "text_embedding.2.bias": r(dim),
        "time_embedding.0.weight": r(dim, freq_dim),
        "time_embedding.0.bias": r(dim),
        "time_embedding.2.weight": r(dim, dim),
        "time_embedding.2.bias": r(dim),
        "time_projection.1.weight": r(6 * dim, dim),
        "time_projection.1.bias": r(6 * dim),
        "head.head.weight": r(in_ch * 4, dim),
        "head.head.bias": r(in_ch * 4),
        "head.modulation": r(1, 2, dim),
    }
    for i in range(layers):
        p = f"blocks.{i}"
        for a in ("self_attn", "cross_attn"):
            for n in "qkvo":
                sd[f"{p}.{a}.{n}.weight"], sd[f"{p}.{a}.{n}.bias"] = r(dim, dim), r(dim)
            sd[f"{p}.{a}.norm_q.weight"], sd[f"{p}.{a}.norm_k.weight"] = 1 + r(dim), 1 + r(dim)
        sd[f"{p}.norm3.weight"], sd[f"{p}.norm3.bias"] = 1 + r(dim), r(dim)
        sd[f"{p}.ffn.0.weight"], sd[f"{p}.ffn.0.bias"] = r(ffn, dim), r(ffn)
        sd[f"{p}.ffn.2.weight"], sd[f"{p}.ffn.2.bias"] = r(dim, ffn), r(dim)
        sd[f"{p}.modulation"] = r(1, 6, dim)
    if sama:
        sd.update(
            {
                "segment_embedding.weight": r(3, dim, s=1.0),
                "siglip_feat_mlp.norm.weight": 1 + r(sem_dim),
                "siglip_feat_mlp.norm.bias": r(sem_dim),
                "siglip_feat_mlp.fc1.weight": r(sem_hidden, sem_dim),
                "siglip_feat_mlp.fc1.bias": r(sem_hidden),
                "siglip_feat_mlp.fc2.weight": r(dim, sem_hidden),
                "siglip_feat_mlp.fc2.bias": r(dim),
                "semantic_head.norm.weight": 1 + r(dim),
                "semantic_head.norm.bias": r(dim),
                "semantic_head.proj.weight": r(sem_dim, dim),
                "semantic_head.proj.bias": r(sem_dim),
            }
        )
    return sd
