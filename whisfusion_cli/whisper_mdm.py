"""Decoder family "whisper-mdm": Whisper's own text decoder turned into a masked-diffusion decoder.

The AR -> diffusion adaptation of DiffuLLaMA / Dream-7B applied to Whisper: the causal mask is
dropped (bidirectional self-attention), a [MASK] row is appended to the embedding, and training
uses the masked-diffusion loss. Its cross-attention (`encoder_attn`, trained on real speech) is
the adapter. It starts out knowing English and how to read the encoder, which a randomly
initialised decoder must learn from synthetic speech alone. Interface identical to
`model.DiffusionDecoder`, so PDD, checkpoints, training and evaluation take either family.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import WhisperMDMConfig
from .whisper import KV, DecoderLayer, LayerNorm, audio_key_mask, gather_positions, tied_head


class MDMLayer(DecoderLayer):
    """Whisper's decoder block (same parameters), attending both ways over the canvas."""

    def forward(self, x: Tensor, kv: KV) -> Tensor:  # type: ignore[override]
        x = x + self.self_attn(self.self_attn_layer_norm(x))  # no causal mask
        n, t, c = x.shape
        k, v, key_mask = kv
        b = k.shape[0]  # windows; the n // b candidates of a window are folded into its sequence
        h = self.encoder_attn_layer_norm(x).reshape(b, (n // b) * t, c)
        x = x + self.encoder_attn.attend(h, k, v, attn_mask=key_mask).reshape(n, t, c)
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.final_layer_norm(x))))


class WhisperMDMDecoder(nn.Module):
    """Canvas (B*k, L) with [MASK]s -> logits (B*k, L, n_vocab); the fixed prefix is prepended inside."""

    adapter_names = ("encoder_attn",)  # parameter-name parts of the cross-attention (+ its norm)

    def __init__(self, cfg: WhisperMDMConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.n_vocab + 1, cfg.n_text_state)  # + the [MASK] row
        self.embed_positions = nn.Embedding(cfg.n_text_ctx, cfg.n_text_state)
        self.layers = nn.ModuleList(MDMLayer(cfg.n_text_state, cfg.n_text_head, cfg.n_text_mlp)
                                    for _ in range(cfg.n_text_layer))
        self.layer_norm = LayerNorm(cfg.n_text_state)
        self.register_buffer("prefix", torch.tensor(cfg.prefix, dtype=torch.long), persistent=False)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.layers

    def init_mask_embedding(self) -> None:
        """[MASK] starts as the mean token embedding: inside the distribution, favouring no token."""
        with torch.no_grad():
            self.embed_tokens.weight[self.config.mask_id] = self.embed_tokens.weight[: self.config.n_vocab].mean(0)

    def cross_kv(self, xa: Tensor, n_frames: Tensor | None = None) -> list[KV]:
        """Cross-attention keys/values per block, once per audio window; states past n_frames masked."""
        key_mask = audio_key_mask(n_frames, xa.shape[1])
        return [(*layer.encoder_attn.project_kv(xa), key_mask) for layer in self.layers]

    def forward(self, tokens: Tensor, cross_kv: list[KV], positions: Tensor | None = None) -> Tensor:
        """Logits (N, L, V), or (N, P, V) at `positions` (N, P) int64 only: the head is skipped elsewhere."""
        n, length = tokens.shape
        p = self.prefix.shape[0]  # >= 1 (<|startoftranscript|>), so a shifted read stays inside
        full = torch.cat([self.prefix.expand(n, p), tokens], dim=1)  # (N, P + L)
        x = self.embed_tokens(full) + self.embed_positions.weight[: p + length]
        for layer, kv in zip(self.layers, cross_kv):
            x = layer(x, kv)
        x = x[:, p - 1: p - 1 + length] if self.config.shift and p else x[:, p:]  # (N, L, C)
        x = self.layer_norm(gather_positions(x, positions))  # (N, L or P, C)
        return tied_head(self, x, self.embed_tokens.weight, self.config.n_vocab)  # [MASK] never predicted

    def init_buffers(self) -> None:
        """Rebuilds the non-persistent prefix buffer (after loading on the meta device)."""
        self.prefix = torch.tensor(self.config.prefix, dtype=torch.long, device=self.embed_tokens.weight.device)
