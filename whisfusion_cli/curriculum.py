"""The paper's curriculum: which parameters train in each stage, layer-wise LR decay, the LR
schedule, per-clip mask noise, and fresh models (Whisper encoder + a new or SMDM-initialised
decoder, or the whisper-mdm family). See `train.py` for the stages and the exact LLRD rule.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import (init_from_whisper, load_whisper_encoder_weights, read_config, resolve_model_dir)
from .config import DecoderConfig, TrainConfig, WhisfusionConfig, whisper_configs_from_hf
from .diffusion import forward_process
from .errors import ConfigError
from .model import Whisfusion
from .tokenizer import Tokenizer, train_bpe_tokenizer

log = logging.getLogger("whisfusion_cli")


def _load_smdm(model: Whisfusion, path: str) -> None:
    """Initialises the decoder's text stack from SMDM weights (adapters keep their init)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model", state)
    try:
        missing = model.load_smdm_decoder({k.removeprefix("_orig_mod."): v for k, v in state.items()})
    except (KeyError, RuntimeError) as e:
        raise ConfigError(f"{path}: does not fit decoder (use SMDM's tokenizer via tokenizer=...): "
                          f"{str(e).splitlines()[0]}") from None
    if any(not any(a in k for a in model.decoder.adapter_names) for k in missing):
        raise ConfigError(f"{path}: SMDM weights lack text-stack keys, e.g. {missing[0]}")


def fresh_model(cfg: TrainConfig, texts: list[str]) -> tuple[Whisfusion, WhisfusionConfig, Tokenizer]:
    """A Whisper encoder (cfg.encoder) + a fresh decoder (cfg.decoder_config, optional SMDM init)."""
    enc_dir = resolve_model_dir(str(cfg.encoder))
    if cfg.decoder_config == "whisper-mdm":
        if cfg.tokenizer:
            raise ConfigError("a whisper-mdm decoder uses Whisper's tokenizer: drop tokenizer")
        return init_from_whisper(enc_dir)
    tokenizer = (Tokenizer.from_file(cfg.tokenizer, "bpe") if cfg.tokenizer
                 else train_bpe_tokenizer(texts, cfg.vocab_size))
    enc_cfg, _ = whisper_configs_from_hf(read_config(enc_dir))
    dec_cfg = DecoderConfig.from_name(cfg.decoder_config, n_audio_state=enc_cfg.n_audio_state,
                                      vocab_size=tokenizer.vocab_size)
    model = Whisfusion(enc_cfg, dec_cfg)
    model.encoder.load_state_dict(load_whisper_encoder_weights(enc_dir), strict=True)
    if cfg.smdm_init:
        _load_smdm(model, cfg.smdm_init)
    elif cfg.stage != "scratch":
        log.warning("stage %s on a randomly initialised decoder (no smdm_init)", cfg.stage)
    return model, WhisfusionConfig(enc_cfg, dec_cfg, eos_id=tokenizer.eos_id), tokenizer


def set_trainable(model: Whisfusion, stage: str) -> list[nn.Parameter]:
    """Freezes the encoder always and, in stage 1, all but the adapters; returns the trainable params."""
    model.encoder.requires_grad_(False)
    adapters = model.decoder.adapter_names
    for name, p in model.decoder.named_parameters():
        p.requires_grad_(stage != "1" or any(a in name for a in adapters))
    return [p for p in model.decoder.parameters() if p.requires_grad]


def param_groups(decoder: nn.Module, stage: str, lr: float, weight_decay: float,
                 llrd: float) -> list[dict[str, Any]]:
    """AdamW groups of the trainable params: per LR scale (stage 2: see the module docstring) and
    decay (matrices) / no decay (vectors). Each group has a "name", e.g. "block.3" or "embedding"."""
    blocks = decoder.blocks
    n = len(blocks)
    where = {id(p): (f"block.{i}", llrd ** (n - 1 - i)) for i, b in enumerate(blocks) for p in b.parameters()}
    where.update({id(p): ("embedding", llrd ** n) for m in decoder.modules() if isinstance(m, nn.Embedding)
                  for p in m.parameters()})
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    for p in decoder.parameters():
        if not p.requires_grad:
            continue
        name, scale = where.get(id(p), ("head", 1.0))
        if stage != "2":
            scale = 1.0
        decay = p.ndim >= 2
        group = groups.setdefault((name, decay), {"params": [], "name": name, "lr": lr * scale,
                                                  "weight_decay": weight_decay if decay else 0.0})
        group["params"].append(p)
    return list(groups.values())


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1 over `warmup` steps, then a cosine to min_ratio at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def noise_seed(seed: int, epoch: int, position: int) -> int:
    """The mask-noise seed of the clip at `position` of epoch `epoch`'s order."""
    return ((seed * 1_000_003 + epoch) * 1_000_000_007 + position) % (1 << 63)


def add_noise(x0: Tensor, seeds: list[int], mask_id: int, t_range: tuple[float, float],
              width: int) -> tuple[Tensor, Tensor, Tensor]:
    """forward_process row by row with one generator per clip, on the CPU: xt, masked (B, L), t (B,).

    Each row's draws are made on a `width`-long canvas and cut to L, so a clip's mask does not
    depend on its batch's canvas length, batch or process.
    """
    rows = []
    for row, s in zip(x0, seeds):
        padded = F.pad(row[None], (0, width - x0.shape[1]))  # (1, width)
        rows.append(forward_process(padded, mask_id, *t_range, torch.Generator().manual_seed(s)))
    xt, masked, t = (torch.cat([r[i] for r in rows]) for i in range(3))
    return xt[:, : x0.shape[1]], masked[:, : x0.shape[1]], t
