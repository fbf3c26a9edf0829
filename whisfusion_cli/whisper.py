"""Whisper in plain torch: the frozen audio encoder and the autoregressive baseline decoder.

Module and parameter names are Hugging Face's (`model.encoder.layers.{i}.self_attn.q_proj`, ...)
so `openai/whisper-*` safetensors load without renaming. Architecture after openai-whisper
`model.py` (Radford et al., 2022); greedy decoding with a pre-allocated KV cache after gpt-fast.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import EncoderConfig, WhisperTextConfig

KVCache = tuple[Tensor, Tensor]  # (B, H, T_max, Dh) each
KV = tuple[Tensor, Tensor, Tensor | None]  # adapter keys, values (B, H, S, Dh) and a key mask (B, 1, 1, S)


def audio_key_mask(n_frames: Tensor | None, n_states: int) -> Tensor | None:
    """(B, 1, 1, S) True where a window's encoder state holds audio; None: attend to all S states."""
    if n_frames is None:
        return None
    return (torch.arange(n_states, device=n_frames.device) < n_frames[:, None])[:, None, None, :]


def gather_positions(x: Tensor, positions: Tensor | None) -> Tensor:
    """x (N, L, C) -> (N, P, C) at positions (N, P) int64; None keeps all L (the diffusion heads' input)."""
    if positions is None:
        return x
    return x.gather(1, positions[..., None].expand(-1, -1, x.shape[-1]))


HEAD_ALIGN = 64  # output-head rows are padded to a multiple of this on CUDA


def tied_head(module: nn.Module, x: Tensor, weight: Tensor, n_vocab: int) -> Tensor:
    """x (..., C) @ weight[:n_vocab].T -> logits (..., n_vocab), the output head tied to the embedding.

    On CUDA the product is taken against the weight padded to a multiple of HEAD_ALIGN rows and the
    result sliced back (a view, rows strided): Whisper's odd 51,865-token vocabulary leaves the
    output rows unaligned and cuBLAS falls back to a slow kernel (H100, 2,655 x 512 x 51,865 bf16:
    0.86 ms, an sm75 kernel). Without grad the padded copy is kept on `module` until the weight changes.
    """
    if not x.is_cuda or n_vocab % HEAD_ALIGN == 0:
        return x @ weight[:n_vocab].T
    rows = -(-n_vocab // HEAD_ALIGN) * HEAD_ALIGN
    key = (weight.data_ptr(), weight._version, n_vocab, weight.dtype)
    cached = module.__dict__.get("_padded_head")
    if cached is not None and cached[0] == key:
        padded = cached[1]
    else:
        padded = F.pad(weight[:n_vocab], (0, 0, 0, rows - n_vocab))  # (rows, C)
        if not (torch.is_grad_enabled() and weight.requires_grad):
            module.__dict__["_padded_head"] = (key, padded)
    return (x @ padded.T)[..., :n_vocab]


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> Tensor:
    """Whisper's fixed sinusoidal positions for the encoder, (length, channels)."""
    log_timescale_increment = np.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2))
    scaled_time = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the weights' dtype."""

    def forward(self, x: Tensor) -> Tensor:
        if x.is_cuda and x.dtype == self.weight.dtype:  # CUDA's kernel accumulates in fp32 by itself:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)  # no casts
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(),
                            self.eps).type(x.dtype)


class MultiHeadAttention(nn.Module):
    """Whisper attention (k_proj has no bias); SDPA for the softmax(QK^T)V part.

    With `keep_scores` set (timing.py, for word timestamps) the attention is computed by hand and
    its logits QK^T/sqrt(Dh), (B, H, T, S) fp32, are kept in `scores`; the default path is SDPA's.
    """

    keep_scores = False
    scores: Tensor | None = None

    def __init__(self, n_state: int, n_head: int, n_kv_state: int | None = None):
        super().__init__()
        self.n_head = n_head
        n_kv_state = n_kv_state or n_state
        self.q_proj = nn.Linear(n_state, n_state)
        self.k_proj = nn.Linear(n_kv_state, n_state, bias=False)
        self.v_proj = nn.Linear(n_kv_state, n_state)
        self.out_proj = nn.Linear(n_state, n_state)

    def heads(self, x: Tensor) -> Tensor:
        b, t, c = x.shape  # (B, T, C) -> (B, H, T, Dh)
        return x.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)

    def project_kv(self, xa: Tensor) -> KVCache:
        """Keys and values of a source sequence, (B, H, T_src, Dh) each; computed once, reused."""
        return self.heads(self.k_proj(xa)), self.heads(self.v_proj(xa))

    def attend(self, x: Tensor, k: Tensor, v: Tensor, is_causal: bool = False,
               attn_mask: Tensor | None = None) -> Tensor:
        q = self.heads(self.q_proj(x))  # (B, H, T, Dh)
        if self.keep_scores:
            y = self._attend_keeping_scores(q, k, v, is_causal, attn_mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        return self.out_proj(y.transpose(1, 2).flatten(2))  # (B, T, C)

    def _attend_keeping_scores(self, q: Tensor, k: Tensor, v: Tensor, is_causal: bool,
                               attn_mask: Tensor | None) -> Tensor:
        """softmax(QK^T/sqrt(Dh))V (B, H, T, Dh) as SDPA computes it, keeping the logits in `scores`."""
        scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, H, T, S)
        if is_causal:
            t, s = scores.shape[-2:]
            attn_mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril()  # SDPA: top-left
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, -math.inf)
        self.scores = scores
        return (scores.softmax(-1) @ v.float()).to(q.dtype)

    def forward(self, x: Tensor, is_causal: bool = False) -> Tensor:
        k, v = self.project_kv(x)
        return self.attend(x, k, v, is_causal)


class EncoderLayer(nn.Module):
    def __init__(self, n_state: int, n_head: int, n_mlp: int):
        super().__init__()
        self.self_attn = MultiHeadAttention(n_state, n_head)
        self.self_attn_layer_norm = LayerNorm(n_state)
        self.fc1 = nn.Linear(n_state, n_mlp)
        self.fc2 = nn.Linear(n_mlp, n_state)
        self.final_layer_norm = LayerNorm(n_state)

    def mlp(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x))
        return x + self.mlp(x)


class WhisperEncoder(nn.Module):
    """Log-mel (B, n_mels, 3000) -> audio states (B, 1500, n_audio_state)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.config = cfg
        d = cfg.n_audio_state
        self.conv1 = nn.Conv1d(cfg.n_mels, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(cfg.n_audio_ctx, d)
        with torch.no_grad():
            self.embed_positions.weight.copy_(sinusoids(cfg.n_audio_ctx, d))
        self.layers = nn.ModuleList(EncoderLayer(d, cfg.n_audio_head, cfg.n_audio_mlp)
                                    for _ in range(cfg.n_audio_layer))
        self.layer_norm = LayerNorm(d)

    def forward(self, mel: Tensor) -> Tensor:
        x = F.gelu(self.conv1(mel.to(self.conv1.weight.dtype)))  # (B, C, 3000)
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, 1500, C)
        x = x + self.embed_positions.weight[: x.shape[1]]
        for layer in self.layers:
            x = layer(x)
        return self.layer_norm(x)


class DecoderLayer(nn.Module):
    """Whisper text-decoder block: self-attention, cross-attention to audio, MLP (all pre-norm)."""

    def __init__(self, n_state: int, n_head: int, n_mlp: int):
        super().__init__()
        self.self_attn = MultiHeadAttention(n_state, n_head)
        self.self_attn_layer_norm = LayerNorm(n_state)
        self.encoder_attn = MultiHeadAttention(n_state, n_head)
        self.encoder_attn_layer_norm = LayerNorm(n_state)
        self.fc1 = nn.Linear(n_state, n_mlp)
        self.fc2 = nn.Linear(n_mlp, n_state)
        self.final_layer_norm = LayerNorm(n_state)

    def forward(self, x: Tensor, cross_kv: KVCache, cache: KVCache, offset: int,
                attn_mask: Tensor | None = None) -> Tensor:
        """x (B, T, C) at cache positions offset..; attn_mask (B, 1, T, offset + T) True = attend, for
        rows whose cached keys are not all theirs (default: causal from an empty cache, or one new token);
        cross_kv: keys, values [, a key mask (B, 1, 1, S) for windows trimmed to their speech frames]."""
        h = self.self_attn_layer_norm(x)
        k_new, v_new = self.self_attn.project_kv(h)  # (B, H, T, Dh)
        end = offset + x.shape[1]
        cache[0][:, :, offset:end] = k_new
        cache[1][:, :, offset:end] = v_new
        x = x + self.self_attn.attend(h, cache[0][:, :, :end], cache[1][:, :, :end],
                                      is_causal=offset == 0 and attn_mask is None, attn_mask=attn_mask)
        audio_mask = cross_kv[2] if len(cross_kv) > 2 else None  # (B, 1, 1, S): states that hold audio
        x = x + self.encoder_attn.attend(self.encoder_attn_layer_norm(x), cross_kv[0], cross_kv[1],
                                         attn_mask=audio_mask)
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class WhisperTextDecoder(nn.Module):
    """Whisper's causal text decoder with learned positions and an output head tied to the embedding."""

    def __init__(self, cfg: WhisperTextConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.n_vocab, cfg.n_text_state)
        self.embed_positions = nn.Embedding(cfg.n_text_ctx, cfg.n_text_state)
        self.layers = nn.ModuleList(DecoderLayer(cfg.n_text_state, cfg.n_text_head, cfg.n_text_mlp)
                                    for _ in range(cfg.n_text_layer))
        self.layer_norm = LayerNorm(cfg.n_text_state)

    def cross_kv(self, xa: Tensor) -> list[KVCache]:
        return [layer.encoder_attn.project_kv(xa) for layer in self.layers]

    def new_cache(self, batch: int, length: int) -> list[KVCache]:
        cfg, w = self.config, self.embed_tokens.weight
        shape = (batch, cfg.n_text_head, length, cfg.n_text_state // cfg.n_text_head)
        return [(w.new_zeros(shape), w.new_zeros(shape)) for _ in self.layers]

    def forward(self, tokens: Tensor, cross_kv: list[KVCache], cache: list[KVCache], offset: int,
                positions: Tensor | None = None, attn_mask: Tensor | None = None, head: bool = True) -> Tensor:
        """(B, T) token ids written to the cache at offset.. -> (B, T, n_vocab) logits (head=False: the
        final-norm states (B, T, C) the head reads, for a caller that needs logits at few positions).

        positions (B, T): the tokens' text positions when they differ from offset.. (rows whose cached
        prefixes are left-padded to one length); attn_mask: see DecoderLayer.forward."""
        pos = self.embed_positions.weight[offset: offset + tokens.shape[1]] if positions is None \
            else self.embed_positions.weight[positions]
        x = self.embed_tokens(tokens) + pos
        for layer, ckv, kv in zip(self.layers, cross_kv, cache):
            x = layer(x, ckv, kv, offset, attn_mask)
        x = self.layer_norm(x)
        return tied_head(self, x, self.embed_tokens.weight, self.config.n_vocab) if head else x


class WhisperModel(nn.Module):
    """Encoder + AR decoder, parameter names as in Hugging Face's WhisperModel (`model.` prefix)."""

    def __init__(self, enc: EncoderConfig, dec: WhisperTextConfig):
        super().__init__()
        self.encoder = WhisperEncoder(enc)
        self.decoder = WhisperTextDecoder(dec)

    @torch.inference_mode()
    def greedy(self, xa: Tensor, prompt: list[int], eot: int, suppress_from: int,
               max_new_tokens: int = 224, min_new_tokens: int = 1) -> tuple[list[list[int]], Tensor]:
        """Greedy decoding with a KV cache for a batch of windows.

        Args:
            xa: (B, 1500, C) encoder states.
            prompt: start tokens, e.g. <|startoftranscript|><|en|><|transcribe|><|notimestamps|>.
            eot: end-of-text id. suppress_from: ids >= this (specials, timestamps) are never chosen,
                except `eot` itself.
            max_new_tokens: cap on generated tokens (Whisper's sample_len is 224).
            min_new_tokens: end-of-text is suppressed before this many tokens (benchmarks force
                a realistic length on random weights with min = max).

        Returns:
            The generated ids per window (without prompt and eot) and their mean log-probability (B,).
        """
        b, n_prompt = xa.shape[0], len(prompt)
        cross_kv = self.decoder.cross_kv(xa)
        max_new_tokens = min(max_new_tokens, self.decoder.config.n_text_ctx - n_prompt)
        cache = self.decoder.new_cache(b, n_prompt + max_new_tokens)
        tokens = torch.tensor([prompt] * b, device=xa.device)
        suppress = torch.zeros(self.decoder.config.n_vocab, dtype=torch.bool, device=xa.device)
        suppress[suppress_from:] = True
        suppress[eot] = False
        out = torch.full((b, max_new_tokens), eot, device=xa.device)
        done = torch.zeros(b, dtype=torch.bool, device=xa.device)
        sum_logprob = torch.zeros(b, device=xa.device)
        offset = 0
        for i in range(max_new_tokens):
            logits = self.decoder(tokens, cross_kv, cache, offset)[:, -1].float()
            logits = logits.masked_fill(suppress, -math.inf)
            if i < min_new_tokens:
                logits[:, eot] = -math.inf  # Whisper's suppress_blank: never an empty first token
            logprobs = logits.log_softmax(-1)
            nxt = logits.argmax(-1).masked_fill(done, eot)
            sum_logprob += torch.where(done, 0.0, logprobs.gather(1, nxt[:, None])[:, 0])
            out[:, i] = nxt
            done |= nxt == eot
            offset += tokens.shape[1]
            tokens = nxt[:, None]
            if bool(done.all()):
                break
        lengths = (out != eot).sum(1).clamp(min=1)
        ids = [row[row != eot].tolist() for row in out]
        return ids, sum_logprob / lengths
