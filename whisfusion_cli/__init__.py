"""whisfusion: fast non-autoregressive speech transcription (Whisper encoder + masked-diffusion decoder).

The public API is loaded lazily (PEP 562) so that `import whisfusion_cli` and the CLI's
start-up do not import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__version__ = "0.1.0"
BUNDLED_MODEL = Path(__file__).parent / "assets" / "default-model"  # the model `transcribe` uses by default
__all__ = ["BUNDLED_MODEL", "DecodingOptions", "PRESETS", "Transcript", "Segment", "load_audio", "load_model",
           "__version__"]

_LAZY = {
    "DecodingOptions": "config", "PRESETS": "config", "Transcript": "transcript", "Segment": "transcript",
    "load_audio": "audio", "load_model": "asr",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
