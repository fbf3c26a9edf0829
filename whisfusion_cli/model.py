"""Whisfusion: a frozen Whisper encoder fused with an SMDM masked-diffusion text decoder.

The decoder is SMDM's (Nie et al., 2024, "Scaling up Masked Diffusion Models on Text") LLaMA
stack: bidirectional self-attention with RoPE, RMSNorm, SwiGLU, and an extra [MASK] embedding
row. Whisfusion (arXiv 2508.07048) adds a cross-attention adapter inside every block that reads
the encoder's audio states. Parameter names follow SMDM checkpoints (`transformer.h.{i}.attn.attn`,
`mlp.swiglu.w1|w2|w3`, ...) so its weights load as initialisation; adapter names are whisper's
(`cross_attn`, `cross_attn_ln`). Code shape after nanoGPT / whisper `model.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DecoderConfig, EncoderConfig, WhisperMDMConfig
from .whisper import KV, WhisperEncoder, audio_key_mask, gather_positions
from .whisper_mdm import WhisperMDMDecoder



class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in fp32."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # one fused kernel (fp32 accumulation inside) instead of casts + five elementwise ops
        return F.rms_norm(x, self.weight.shape, self.weight.to(x.dtype), self.eps)


def build_rope_cache(seq_len: int, head_size: int, base: int = 10000) -> tuple[Tensor, Tensor]:
    """cos and sin tables (seq_len, head_size) in the rotate-half (GPT-NeoX / lit-gpt) layout."""
    theta = 1.0 / (base ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size))
    freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32), theta)  # (T, Dh/2)
    freqs = torch.cat([freqs, freqs], dim=-1)  # (T, Dh)
    return freqs.cos(), freqs.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, H, T, Dh) rotated by position; cos/sin (T, Dh) in x's dtype (no fp32 round trip)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos + rotated * sin).type_as(x)


class SelfAttention(nn.Module):
    """Bidirectional multi-/grouped-query attention with a fused qkv projection (lit-gpt layout)."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        shape = (cfg.n_head + 2 * cfg.n_query_groups) * cfg.head_size
        self.attn = nn.Linear(cfg.n_embd, shape, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        cfg = self.cfg
        b, t, c = x.shape
        q_per_kv = cfg.n_head // cfg.n_query_groups
        qkv = self.attn(x).view(b, t, cfg.n_query_groups, q_per_kv + 2, cfg.head_size)
        q, k, v = qkv.split((q_per_kv, 1, 1), dim=-2)  # per group: q_per_kv queries, one key, one value
        q = q.reshape(b, t, cfg.n_head, cfg.head_size).transpose(1, 2)  # (B, nh, T, Dh)
        k = k.reshape(b, t, cfg.n_query_groups, cfg.head_size).transpose(1, 2)  # (B, ng, T, Dh)
        v = v.reshape(b, t, cfg.n_query_groups, cfg.head_size).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if q_per_kv > 1:
            k, v = k.repeat_interleave(q_per_kv, dim=1), v.repeat_interleave(q_per_kv, dim=1)
        y = F.scaled_dot_product_attention(q, k, v)  # no mask: every position sees the whole canvas
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class CrossAttention(nn.Module):
    """The adapter: decoder positions attend to audio states; `out` starts at zero (identity block)."""

    def __init__(self, n_embd: int, n_head: int, n_audio_state: int):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_embd, n_embd, bias=False)
        self.key = nn.Linear(n_audio_state, n_embd, bias=False)
        self.value = nn.Linear(n_audio_state, n_embd, bias=False)
        self.out = nn.Linear(n_embd, n_embd, bias=False)
        nn.init.zeros_(self.out.weight)

    def project_kv(self, xa: Tensor, key_mask: Tensor | None = None) -> KV:
        """Keys/values of the audio states xa (B, S, C_audio); key_mask (B, 1, 1, S) marks real frames."""
        b, s, _ = xa.shape
        k = self.key(xa).view(b, s, self.n_head, -1).transpose(1, 2)  # (B, H, S, Dh)
        v = self.value(xa).view(b, s, self.n_head, -1).transpose(1, 2)
        return k, v, key_mask

    def forward(self, x: Tensor, kv: KV) -> Tensor:
        """x (B*k, T, C) for B audio windows with k candidates each; kv from `project_kv`, batch B.

        The k candidates of a window are folded into its query sequence, so one window's keys and
        values serve all of them without being copied.
        """
        n, t, c = x.shape
        b = kv[0].shape[0]
        q = self.query(x).reshape(b, (n // b) * t, self.n_head, c // self.n_head).transpose(1, 2)
        k, v, key_mask = kv
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # (B, H, k*T, Dh)
        return self.out(y.transpose(1, 2).reshape(n, t, c))


class SwiGLU(nn.Module):
    """w3(silu(w1 x) * w2 x), xformers' naming as in SMDM checkpoints."""

    def __init__(self, n_embd: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(n_embd, hidden, bias=False)
        self.w2 = nn.Linear(n_embd, hidden, bias=False)
        self.w3 = nn.Linear(hidden, n_embd, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class LLaMAMLP(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.swiglu = SwiGLU(cfg.n_embd, cfg.intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.swiglu(x)


class Block(nn.Module):
    """Pre-norm LLaMA block with the cross-attention adapter between attention and MLP."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.norm_1 = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.attn = SelfAttention(cfg)
        self.cross_attn_ln = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.cross_attn = CrossAttention(cfg.n_embd, cfg.n_head, cfg.n_audio_state)
        self.norm_2 = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.mlp = LLaMAMLP(cfg)

    def forward(self, x: Tensor, kv: KV, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.attn(self.norm_1(x), cos, sin)
        x = x + self.cross_attn(self.cross_attn_ln(x), kv)
        return x + self.mlp(self.norm_2(x))


class DiffusionDecoder(nn.Module):
    """Canvas tokens (B*k, L), some equal to MASK_ID -> logits over the real vocabulary (B*k, L, V)."""

    adapter_names = ("cross_attn",)  # parameter-name parts of the adapters (cross_attn, cross_attn_ln)

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size + 1, cfg.n_embd),  # + the [MASK] row
            h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
            ln_f=RMSNorm(cfg.n_embd, cfg.norm_eps),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)  # [MASK] is never predicted
        self.init_buffers()
        self.reset_parameters()

    def init_buffers(self) -> None:
        """(Re)builds the non-persistent RoPE tables, e.g. after loading on the meta device."""
        cfg, device = self.config, self.lm_head.weight.device
        cos, sin = build_rope_cache(cfg.max_seq_len, cfg.head_size, cfg.rope_base)
        self.register_buffer("rope_cos", cos.to(device), persistent=False)
        self.register_buffer("rope_sin", sin.to(device), persistent=False)

    def reset_parameters(self) -> None:
        """N(0, 0.02) weights, unit norms, and zero adapter outputs (an untrained adapter is a no-op)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
        for block in self.transformer.h:
            nn.init.zeros_(block.cross_attn.out.weight)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.h

    def cross_kv(self, xa: Tensor, n_frames: Tensor | None = None) -> list[KV]:
        """Adapter keys/values for every block, computed once per audio window: (B, H, S, Dh) each.

        Args:
            xa: (B, S, C_audio) encoder states, possibly trimmed to the longest window's frames.
            n_frames: (B,) frames of each window that hold audio (see `audio.audio_frames`); states
                past it are masked out. None: attend to all S states.
        """
        key_mask = audio_key_mask(n_frames, xa.shape[1])
        return [block.cross_attn.project_kv(xa, key_mask) for block in self.transformer.h]

    def forward(self, tokens: Tensor, cross_kv: list[KV], positions: Tensor | None = None) -> Tensor:
        """Logits (N, L, V), or (N, P, V) at `positions` (N, P) int64 only: the head is skipped elsewhere."""
        t = tokens.shape[1]
        dtype = self.lm_head.weight.dtype
        cos, sin = self.rope_cos[:t].to(dtype), self.rope_sin[:t].to(dtype)  # (T, Dh), once per pass
        x = self.transformer.wte(tokens)  # (N, L, C)
        for block, kv in zip(self.transformer.h, cross_kv):
            x = block(x, kv, cos, sin)
        return self.lm_head(self.transformer.ln_f(gather_positions(x, positions)))  # (N, L or P, V)


class Whisfusion(nn.Module):
    """Frozen Whisper encoder + diffusion decoder of either family (SMDM or whisper-mdm)."""

    def __init__(self, enc: EncoderConfig, dec: DecoderConfig | WhisperMDMConfig):
        super().__init__()
        self.encoder = WhisperEncoder(enc)
        self.decoder = WhisperMDMDecoder(dec) if isinstance(dec, WhisperMDMConfig) else DiffusionDecoder(dec)

    def load_smdm_decoder(self, state_dict: dict[str, Tensor]) -> list[str]:
        """Initialises the text stack from an SMDM checkpoint; returns the keys it did not set.

        The adapters (`cross_attn*`) are not in SMDM checkpoints and keep their initialisation.
        """
        missing, unexpected = self.decoder.load_state_dict(state_dict, strict=False)
        if unexpected:
            raise KeyError(f"not an SMDM checkpoint of this shape: unexpected keys {unexpected[:3]}")
        return missing
