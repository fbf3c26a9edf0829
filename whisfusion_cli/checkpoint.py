"""Checkpoint directories: config.json + *.safetensors + tokenizer.json, local or on the hub.

A whisfusion directory's config.json has `"model_type": "whisfusion"` (see WhisfusionConfig);
a plain Hugging Face `openai/whisper-*` directory (`"model_type": "whisper"`) is recognised too
and loads as the autoregressive baseline. Weights may be one file or several shards.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .config import WhisfusionConfig, WhisperMDMConfig, whisper_configs_from_hf
from .errors import CheckpointError
from .model import Whisfusion
from .rescoring import Rescorer
from .tokenizer import Tokenizer
from .whisper import WhisperModel

HUB_FILES = ["config.json", "*.safetensors", "tokenizer.json", "MODEL_CARD.md", "README.md"]
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError("--device cuda asked for, but no CUDA GPU is available")
    return dev


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """auto: bf16 on a GPU that supports it, else fp16 on GPU, fp32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}; choose auto, bf16, fp16 or fp32")
    return DTYPES[dtype]


def resolve_model_dir(path_or_repo: str | Path) -> Path:
    """A local directory as is; otherwise a hub repo id fetched into (or found in) the HF cache.

    huggingface_hub honours HF_HUB_OFFLINE, HF_HOME and HF_HUB_CACHE.
    """
    path = Path(path_or_repo).expanduser()
    if path.is_dir():
        return path
    name = str(path_or_repo)
    if path.exists() or name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise CheckpointError(f"{name}: no such model directory")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, allow_patterns=HUB_FILES))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{name}: not a local directory and not fetchable from the hub ({reason})") from None


def read_config(model_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{model_dir}: unreadable config.json ({e})") from None


RESCORER_FILES = "rescorer"  # rescorer*.safetensors: the AR decoder shipped beside the model (rescoring.py)


def load_weights(model_dir: Path, rescorer: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of the directory's *.safetensors files (one file or shards): the model's, or with
    `rescorer` those of the rescorer*.safetensors files."""
    files = [f for f in sorted(model_dir.glob("*.safetensors")) if f.name.startswith(RESCORER_FILES) == rescorer]
    if not files:
        raise CheckpointError(f"{model_dir}: no {'rescorer' if rescorer else ''}*.safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return _join_pieces(state)


PIECE = "@piece"  # "name@piece3": rows of a tensor too large for one shard (see shard_state)


def _join_pieces(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenates the row pieces `shard_state` cut a large tensor into, in piece order."""
    pieces: dict[str, dict[int, torch.Tensor]] = {}
    for name in [k for k in state if PIECE in k]:
        base, i = name.rsplit(PIECE, 1)
        pieces.setdefault(base, {})[int(i)] = state.pop(name)
    for base, parts in pieces.items():
        state[base] = torch.cat([parts[i] for i in range(len(parts))])
    return state


def load_whisper(model_dir: Path, device: torch.device, dtype: torch.dtype) -> tuple[WhisperModel, Tokenizer]:
    """A Hugging Face `openai/whisper-*` directory -> (WhisperModel, Tokenizer)."""
    enc, dec = whisper_configs_from_hf(read_config(model_dir))
    model = WhisperModel(enc, dec)
    state = {k.removeprefix("model."): v for k, v in load_weights(model_dir).items() if k != "proj_out.weight"}
    model.load_state_dict(state, strict=True)
    tokenizer = Tokenizer.from_file(model_dir / "tokenizer.json", "whisper")
    return model.to(device=device, dtype=dtype).eval(), tokenizer


def load_whisper_encoder_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """The encoder's tensors of a Whisper checkpoint, with our (encoder-relative) names."""
    prefix = "model.encoder."
    return {k[len(prefix):]: v for k, v in load_weights(model_dir).items() if k.startswith(prefix)}


def init_from_whisper(model_dir: Path, max_seq_len: int = 256) -> tuple[Whisfusion, WhisfusionConfig, Tokenizer]:
    """A whisper-mdm Whisfusion built from a Whisper checkpoint: its encoder, and its decoder
    turned into a masked-diffusion decoder (bidirectional, [MASK] row = mean embedding)."""
    enc, text = whisper_configs_from_hf(read_config(model_dir))
    tokenizer = Tokenizer.from_file(model_dir / "tokenizer.json", "whisper")
    dec = WhisperMDMConfig.from_whisper(text, tuple(tokenizer.whisper_prompt(text.is_multilingual)), max_seq_len)
    cfg = WhisfusionConfig(enc, dec, eos_id=tokenizer.eos_id, tokenizer_kind="whisper")
    model = Whisfusion(enc, dec)
    state = {k.removeprefix("model."): v for k, v in load_weights(model_dir).items() if k != "proj_out.weight"}
    mask_row = torch.zeros(1, text.n_text_state, dtype=state["decoder.embed_tokens.weight"].dtype)
    state["decoder.embed_tokens.weight"] = torch.cat([state["decoder.embed_tokens.weight"], mask_row])
    model.load_state_dict(state, strict=True)
    model.decoder.init_mask_embedding()
    return model.float(), cfg, tokenizer


def load_rescorer(model_dir: Path, model: Whisfusion, cfg: WhisfusionConfig) -> Rescorer | None:
    """The AR decoder a whisper-mdm checkpoint ships beside it (config `rescorer`), on the model's
    embedding, device and dtype; None if it ships none."""
    with torch.device("meta"):
        rescorer = Rescorer.beside(cfg, model.decoder)
    if rescorer is None:
        return None
    rescorer.decoder.load_state_dict(load_weights(model_dir, rescorer=True), strict=True, assign=True)
    param = next(model.parameters())
    return rescorer.to(device=param.device, dtype=param.dtype).eval()


def add_rescorer(model_dir: Path, whisper_dir: Path, max_shard_bytes: int = 15_000_000) -> list[Path]:
    """Ships `whisper_dir`'s AR text decoder beside the whisper-mdm model in `model_dir` (its tensors
    but the token embedding, which must equal the model's, as fp16 rescorer-*.safetensors shards) and
    names it in config.json. The model's own files are left as they are."""
    data = read_config(model_dir)
    _, text = whisper_configs_from_hf(read_config(whisper_dir))
    mdm = load_weights(model_dir)["decoder.embed_tokens.weight"][: text.n_vocab]
    prefix = "model.decoder."
    state = {k[len(prefix):]: v.half() for k, v in load_weights(whisper_dir).items() if k.startswith(prefix)}
    if not torch.equal(state.pop("embed_tokens.weight"), mdm.half()):
        raise CheckpointError(f"{whisper_dir}: its token embedding is not the model's; it cannot share it")
    for f in model_dir.glob(f"{RESCORER_FILES}*.safetensors"):
        f.unlink()
    paths = write_shards(state, model_dir, RESCORER_FILES, max_shard_bytes)
    for path in paths:
        path.chmod((model_dir / "config.json").stat().st_mode & 0o666)  # as the model's own files
    data["rescorer"] = asdict(text)
    (model_dir / "config.json").write_text(json.dumps(data, indent=2) + "\n")
    return paths


def load_whisfusion(model_dir: Path, device: torch.device,
                    dtype: torch.dtype) -> tuple[Whisfusion, WhisfusionConfig, Tokenizer]:
    cfg = WhisfusionConfig.from_dict(read_config(model_dir))
    with torch.device("meta"):
        model = Whisfusion(cfg.encoder, cfg.decoder)
    model.load_state_dict(load_weights(model_dir), strict=True, assign=True)
    model.decoder.init_buffers()
    tokenizer = Tokenizer.from_file(model_dir / "tokenizer.json", cfg.tokenizer_kind)
    return model.to(device=device, dtype=dtype).eval(), cfg, tokenizer


def _cut(state: dict[str, torch.Tensor], max_bytes: int) -> dict[str, torch.Tensor]:
    """Tensors over max_bytes cut into row pieces `name@pieceN` (joined again by load_weights)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if nbytes <= max_bytes or t.ndim == 0:
            out[name] = t
            continue
        rows = max(1, max_bytes * t.shape[0] // nbytes)
        out.update({f"{name}{PIECE}{i}": part for i, part in enumerate(t.split(rows))})
    return out


def shard_state(state: dict[str, torch.Tensor], max_shard_bytes: int | None) -> list[dict[str, torch.Tensor]]:
    """Consecutive tensors grouped into shards of at most max_shard_bytes each (larger tensors cut)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in (_cut(state, max_shard_bytes) if max_shard_bytes else state).items():
        nbytes = t.numel() * t.element_size()
        if max_shard_bytes and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t.detach().contiguous().cpu()
        size += nbytes
    return shards


def write_shards(state: dict[str, torch.Tensor], folder: Path, prefix: str,
                 max_shard_bytes: int | None) -> list[Path]:
    """Writes `state` as `prefix`.safetensors, or `prefix`-00001-of-0000N.safetensors shards of at most
    max_shard_bytes each (`shard_state`); returns their paths."""
    shards = shard_state(state, max_shard_bytes)
    paths = [folder / (f"{prefix}.safetensors" if len(shards) == 1 else
                       f"{prefix}-{i + 1:05d}-of-{len(shards):05d}.safetensors") for i in range(len(shards))]
    for shard, path in zip(shards, paths):
        save_file(shard, str(path), metadata={"format": "pt"})
    return paths


def save_whisfusion(model: Whisfusion, cfg: WhisfusionConfig, tokenizer: Tokenizer, out_dir: str | Path,
                    dtype: torch.dtype | None = None, max_shard_bytes: int | None = None) -> Path:
    """Writes the checkpoint directory atomically (a temp dir renamed into place).

    Args:
        dtype: store the weights in this dtype (e.g. fp16 to ship); default as they are.
        max_shard_bytes: split the weights into `model-00001-of-0000N.safetensors` shards.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
             for k, v in model.state_dict().items()}
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        write_shards(state, tmp, "model", max_shard_bytes)
        (tmp / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        tokenizer.save(tmp / "tokenizer.json")
        umask = os.umask(0)
        os.umask(umask)
        for f in tmp.iterdir():
            f.chmod(0o666 & ~umask)  # mkdtemp made the folder private; a checkpoint is not
        tmp.chmod(0o777 & ~umask)
        publish(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def recover(final: Path) -> None:
    """Completes or undoes a checkpoint swap a kill interrupted (see `publish`)."""
    old = final.with_name(final.name + ".old")
    if not final.exists() and old.exists():
        os.replace(old, final)
    shutil.rmtree(old, ignore_errors=True)


def publish(staging: Path, final: Path) -> None:
    """Swaps a complete checkpoint directory into place: final -> final.old, staging -> final, drop
    final.old. A kill between the renames leaves final.old, which `recover` puts back."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(model: Whisfusion, wcfg: WhisfusionConfig, tokenizer: Tokenizer, out: Path,
                    extra: dict[str, Any] | None = None, state: dict[str, Any] | None = None) -> Path:
    """A loadable whisfusion directory (+ train_state.pt, + train_info.json), swapped in atomically."""
    staging = out.parent / ".staging" / out.name
    shutil.rmtree(staging, ignore_errors=True)
    save_whisfusion(model, wcfg, tokenizer, staging)
    if extra is not None:
        (staging / "train_info.json").write_text(json.dumps(extra, indent=2) + "\n")
    if state is not None:
        torch.save(state, staging / "train_state.pt")
    publish(staging, out)
    with contextlib.suppress(OSError):
        staging.parent.rmdir()
    return out


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
