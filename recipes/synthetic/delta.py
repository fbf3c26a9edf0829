"""Moves a trained whisper-mdm checkpoint through a narrow pipe as what training changed.

The encoder and the tied embedding stay frozen in `stream_train.py` (all but the [MASK] row), so a
trained model is its Whisper checkpoint plus a delta: every other decoder tensor and the [MASK]
row, ~51 MB in fp16 for whisper-base instead of 145 MB.

    python recipes/synthetic/delta.py extract /tmp/run/model OUT_DIR          # on the GPU machine
    python recipes/synthetic/delta.py apply WHISPER_DIR OUT_DIR MODEL_DIR --presets presets.json  # here
    python recipes/synthetic/delta.py rescorer WHISPER_DIR MODEL_DIR --presets presets.json  # + Whisper's AR decoder
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from whisfusion_cli.checkpoint import (
    add_rescorer,
    init_from_whisper,
    load_weights,
    read_config,
    save_whisfusion,
    shard_state,
)
from whisfusion_cli.config import WhisfusionConfig

EMBED = "decoder.embed_tokens.weight"
MASK_ROW = "decoder.embed_tokens.mask_row"


def extract(model_dir: Path, out: Path, max_bytes: int = 14 << 20) -> list[Path]:
    """The decoder tensors a frozen-embedding run trains, as fp16 shards of at most max_bytes."""
    cfg = WhisfusionConfig.from_dict(read_config(model_dir))
    state = load_weights(model_dir)
    delta = {k: v.half() for k, v in state.items() if k.startswith("decoder.") and k != EMBED}
    delta[MASK_ROW] = state[EMBED][cfg.decoder.mask_id].half().clone()
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, shard in enumerate(shard_state(delta, max_bytes)):
        paths.append(out / f"delta-{i}.safetensors")
        save_file(shard, str(paths[-1]))
    (out / "delta-config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
    return paths


def apply(whisper_dir: Path, delta_dir: Path, model_dir: Path, presets: Path | None = None,
          max_shard_bytes: int = 15_000_000, default_preset: str | None = None, rescorer: bool = False) -> Path:
    """whisper-mdm from `whisper_dir` with the delta's tensors, saved as fp16 shards; `presets`: a
    JSON file of this model's tuned decoding presets (WhisfusionConfig.presets); `default_preset`:
    the one `transcribe` uses when none is named; `rescorer`: ship `whisper_dir`'s AR decoder beside it
    (rescoring.py), which presets that rescore or verify need."""
    model, _, tok = init_from_whisper(whisper_dir)
    cfg = WhisfusionConfig.from_dict(json.loads((delta_dir / "delta-config.json").read_text()))
    if presets is not None:
        cfg = _with_presets(cfg, presets)
    if default_preset is not None:
        cfg = replace(cfg, default_preset=default_preset)
        cfg.decoding_options()  # an unknown name fails here
    model.decoder.config = cfg.decoder  # e.g. shift, max_seq_len as trained
    delta: dict[str, torch.Tensor] = {}
    for f in sorted(delta_dir.glob("delta-*.safetensors")):
        delta.update(load_file(str(f)))
    mask_row = delta.pop(MASK_ROW)
    state = model.state_dict()
    missing = [k for k in state if k.startswith("decoder.") and k != EMBED and k not in delta]
    if missing:
        raise SystemExit(f"delta lacks {missing[:3]}...")
    with torch.no_grad():
        for k, v in delta.items():
            state[k].copy_(v.float())
        model.decoder.embed_tokens.weight[cfg.decoder.mask_id] = mask_row.float()
    save_whisfusion(model, cfg, tok, model_dir, dtype=torch.float16, max_shard_bytes=max_shard_bytes)
    if rescorer:
        add_rescorer(model_dir, whisper_dir, max_shard_bytes)
    return model_dir


def ship_rescorer(whisper_dir: Path, model_dir: Path, presets: Path | None = None) -> list[Path]:
    """An existing model directory gets `whisper_dir`'s AR decoder beside it (its own shards untouched)
    and, with `presets`, those decoding presets in its config.json."""
    paths = add_rescorer(model_dir, whisper_dir)
    if presets is not None:
        data = read_config(model_dir)
        data["presets"] = _with_presets(WhisfusionConfig.from_dict(data), presets).presets
        (model_dir / "config.json").write_text(json.dumps(data, indent=2) + "\n")
    return paths


def _with_presets(cfg: WhisfusionConfig, presets: Path) -> WhisfusionConfig:
    """cfg with the decoding presets of a JSON file; a bad preset fails here, not in a user's transcribe."""
    cfg = replace(cfg, presets=json.loads(presets.read_text()))
    for name in cfg.presets:
        cfg.decoding_options(name)
    return cfg


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract")
    e.add_argument("model", type=Path)
    e.add_argument("out", type=Path)
    a = sub.add_parser("apply")
    a.add_argument("whisper", type=Path)
    a.add_argument("delta", type=Path)
    a.add_argument("out", type=Path)
    a.add_argument("--presets", type=Path, help="JSON: this model's decoding presets")
    a.add_argument("--default-preset", help="the preset transcribe uses when none is named (default: balanced)")
    a.add_argument("--rescorer", action="store_true", help="ship the Whisper checkpoint's AR decoder beside it")
    r = sub.add_parser("rescorer", help="ship a Whisper checkpoint's AR decoder beside an existing model")
    r.add_argument("whisper", type=Path)
    r.add_argument("model", type=Path)
    r.add_argument("--presets", type=Path, help="JSON: the model's decoding presets, written into config.json")
    args = p.parse_args(argv)
    if args.cmd == "rescorer":
        print(ship_rescorer(args.whisper, args.model, args.presets))
        return
    print(extract(args.model, args.out) if args.cmd == "extract"
          else apply(args.whisper, args.delta, args.out, args.presets, default_preset=args.default_preset,
                     rescorer=args.rescorer))


if __name__ == "__main__":
    main()
