"""Model configurations and decoding presets as frozen dataclasses with named tables.

Torch-free on purpose: the CLI imports this module at start-up (and on every TAB).
Pattern from openai-whisper's ModelDimensions and litgpt's Config.from_name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from .errors import ConfigError


def _from_table(table: dict[str, Any], kind: str, name: str, overrides: dict[str, Any]) -> Any:
    """A named preset with field overrides; ConfigError naming the choices for an unknown name."""
    if name not in table:
        raise ConfigError(f"unknown {kind} {name!r}; choose from {', '.join(table)}")
    return replace(table[name], **overrides)


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Builds a dataclass from a dict, ignoring unknown keys (forward-compatible checkpoints)."""
    names = {f.name for f in fields(cls)}
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names}
    return cls(**kwargs)


@dataclass(frozen=True)
class EncoderConfig:
    """Whisper audio encoder dimensions (Hugging Face `openai/whisper-*` config names in comments)."""

    n_mels: int = 80  # num_mel_bins
    n_audio_ctx: int = 1500  # max_source_positions
    n_audio_state: int = 384  # d_model
    n_audio_head: int = 6  # encoder_attention_heads
    n_audio_layer: int = 4  # encoder_layers
    n_audio_mlp: int = 1536  # encoder_ffn_dim

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> EncoderConfig:
        return _from_table(ENCODER_CONFIGS, "encoder config", name, overrides)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        return _from_dict(cls, data)


def _enc(n_mels: int, d: int, heads: int, layers: int) -> EncoderConfig:
    return EncoderConfig(n_mels, 1500, d, heads, layers, 4 * d)


ENCODER_CONFIGS: dict[str, EncoderConfig] = {
    "test-tiny": EncoderConfig(80, 1500, 64, 2, 2, 128),  # for unit tests only
    "whisper-tiny": _enc(80, 384, 6, 4),  # openai/whisper-tiny(.en)
    "whisper-base": _enc(80, 512, 8, 6),  # openai/whisper-base(.en)
    "whisper-small": _enc(80, 768, 12, 12),  # openai/whisper-small(.en)
    "whisper-medium": _enc(80, 1024, 16, 24),  # openai/whisper-medium(.en)
    "whisper-large": _enc(80, 1280, 20, 32),  # openai/whisper-large(-v2)
    "whisper-large-v3": _enc(128, 1280, 20, 32),  # openai/whisper-large-v3(-turbo encoder)
}


@dataclass(frozen=True)
class WhisperTextConfig:
    """Whisper's autoregressive text decoder (the AR baseline)."""

    n_vocab: int = 51865  # vocab_size (51864 for English-only models)
    n_text_ctx: int = 448  # max_target_positions
    n_text_state: int = 512  # d_model
    n_text_head: int = 8  # decoder_attention_heads
    n_text_layer: int = 6  # decoder_layers
    n_text_mlp: int = 2048  # decoder_ffn_dim

    @property
    def is_multilingual(self) -> bool:
        return self.n_vocab >= 51865


def whisper_configs_from_hf(hf: dict[str, Any]) -> tuple[EncoderConfig, WhisperTextConfig]:
    """Maps a Hugging Face `openai/whisper-*` config.json onto our encoder and decoder configs."""
    enc = EncoderConfig(hf["num_mel_bins"], hf["max_source_positions"], hf["d_model"],
                        hf["encoder_attention_heads"], hf["encoder_layers"], hf["encoder_ffn_dim"])
    dec = WhisperTextConfig(hf["vocab_size"], hf["max_target_positions"], hf["d_model"],
                            hf["decoder_attention_heads"], hf["decoder_layers"], hf["decoder_ffn_dim"])
    return enc, dec


@dataclass(frozen=True)
class DecoderConfig:
    """SMDM / LLaMA-style masked-diffusion decoder with a cross-attention adapter in every block.

    `vocab_size` counts real tokens; the [MASK] token is the extra id `vocab_size` (SMDM:
    32000), present in the embedding table but never predicted by `lm_head`.
    """

    vocab_size: int = 32000
    n_layer: int = 18
    n_head: int = 12
    n_query_groups: int = 12
    n_embd: int = 768
    intermediate_size: int = 3072
    rope_base: int = 10000
    norm_eps: float = 1e-5
    max_seq_len: int = 256  # canvas length limit
    n_audio_state: int = 512  # width of the encoder states the adapters read
    family: str = "smdm"

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> DecoderConfig:
        return _from_table(DECODER_CONFIGS, "decoder config", name, overrides)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecoderConfig:
        return _from_dict(cls, data)


DECODER_CONFIGS: dict[str, DecoderConfig] = {
    # SMDM Diff_LLaMA_170M, the paper's decoder (arXiv 2508.07048, Sec. 3)
    "smdm-170m": DecoderConfig(),
    # SMDM Diff_LLaMA_113M shape, for cheaper training runs
    "smdm-113m": DecoderConfig(n_layer=12, n_head=12, n_query_groups=12, n_embd=768, intermediate_size=3072),
    # a small decoder for our own quick training runs on a 4k tokenizer
    "smdm-small": DecoderConfig(vocab_size=4096, n_layer=8, n_head=8, n_query_groups=8, n_embd=512,
                                intermediate_size=2048),
    # unit tests only
    "test-tiny": DecoderConfig(vocab_size=320, n_layer=2, n_head=4, n_query_groups=2, n_embd=64,
                               intermediate_size=128, max_seq_len=64, n_audio_state=64),
}


@dataclass(frozen=True)
class WhisperMDMConfig:
    """A Whisper text decoder turned into a masked-diffusion decoder (family "whisper-mdm").

    Whisper's blocks with bidirectional self-attention, its cross-attention as the adapter,
    learned positions, the output head tied to the embedding, and a [MASK] row appended to the
    embedding (id `n_vocab`, never predicted). `prefix` (e.g. <|startoftranscript|><|en|>
    <|transcribe|><|notimestamps|>) sits unmasked before the canvas, as in Whisper's training.
    """

    n_vocab: int = 51865
    n_text_ctx: int = 448
    n_text_state: int = 512
    n_text_head: int = 8
    n_text_layer: int = 6
    n_text_mlp: int = 2048
    prefix: tuple[int, ...] = ()
    max_seq_len: int = 256  # canvas length limit (<= n_text_ctx - len(prefix))
    family: str = "whisper-mdm"
    shift: bool = True  # canvas token i is read from the state one position back, as the AR head did

    @property
    def mask_id(self) -> int:
        return self.n_vocab

    @property
    def vocab_size(self) -> int:
        return self.n_vocab

    @classmethod
    def from_whisper(cls, text: WhisperTextConfig, prefix: tuple[int, ...], max_seq_len: int = 256) -> WhisperMDMConfig:
        return cls(text.n_vocab, text.n_text_ctx, text.n_text_state, text.n_text_head, text.n_text_layer,
                   text.n_text_mlp, prefix, min(max_seq_len, text.n_text_ctx - len(prefix)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WhisperMDMConfig:
        return _from_dict(cls, data)


RemaskRule = Literal["low_confidence", "random"]
RemaskScope = Literal["text", "canvas"]
SelectRule = Literal["confidence", "consensus", "vote", "rescore"]


@dataclass(frozen=True)
class DecodingOptions:
    """Parallel Diffusion Decoding (PDD) options: k candidates, N steps, re-mask schedule rho_t.

    Step 1 predicts the fully masked canvas (rho_1 = 1.0) and samples k candidates; each later
    step t re-masks a fraction rho_t of every candidate and re-predicts it; the candidate with
    the highest mean token confidence wins.
    """

    k: int = 10
    steps: int = 4
    schedule: tuple[float, ...] = (1.0, 0.9, 0.85, 0.8)
    remask: RemaskRule = "low_confidence"
    temperature: float = 1.0  # sampling temperature of the first step (candidate 0 is always greedy)
    canvas_len: int | None = None  # None: adaptive, from the window's duration (decoding.canvas_length)
    seed: int | None = 0
    # "text": rho_t applies to each candidate's text as the last step predicted its length (positions
    # before its first end-of-text, that end, and any padding predicted with doubt); "canvas": to
    # every position, padding included (then the kept tokens are mostly confident padding)
    scope: RemaskScope = "text"
    dedupe: float = 0.5  # adjacent repeated tokens merge when either's confidence is below this (0: off)
    # which candidate wins: "confidence", the highest mean token confidence (the paper's); "consensus",
    # the one whose words differ least from the other candidates' (MBR), ties to confidence; "vote":
    # the candidates' word-level vote around the consensus one (ROVER; selection.py); "rescore": the one
    # Whisper's own AR decoder finds most likely (rescoring.py; models that ship it)
    select: SelectRule = "confidence"
    # > 0: Whisper's AR decoder verifies the chosen text (rescoring.py): a token stays where its AR
    # probability is >= verify x the AR decoder's best there, else the AR's token replaces it; 1.0 gives
    # Whisper's greedy transcript exactly, in a few parallel passes. 0: off
    verify: float = 0.0
    # verification as a product of experts (rescoring.trusted_margins): a draft token the diffusion decoder
    # predicted with probability q also stays where log p_AR(token) + trust x log q >= log p_AR(AR's choice) +
    # trust x log(1 - q) + log verify (1 - q: the most the diffusion decoder left for the AR's choice), so
    # a confident token may fall further short of the AR's choice, a doubtful one less far. 0: verify alone;
    # ignored at verify = 1 (Whisper's greedy text exactly)
    trust: float = 0.0
    preset: str | None = field(default=None, compare=False)  # the name it was built from (a label only)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError(f"k must be >= 1, got {self.k}")
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if len(self.schedule) != self.steps:
            raise ConfigError(f"schedule has {len(self.schedule)} values but steps={self.steps}")
        if any(not 0.0 < r <= 1.0 for r in self.schedule) or self.schedule[0] != 1.0:
            raise ConfigError(f"schedule must start at 1.0 and stay in (0, 1], got {list(self.schedule)}")
        if self.remask not in ("low_confidence", "random"):
            raise ConfigError(f"remask must be 'low_confidence' or 'random', got {self.remask!r}")
        if self.scope not in ("text", "canvas"):
            raise ConfigError(f"scope must be 'text' or 'canvas', got {self.scope!r}")
        if not 0.0 <= self.dedupe <= 1.0:
            raise ConfigError(f"dedupe must be in [0, 1], got {self.dedupe}")
        if self.select not in ("confidence", "consensus", "vote", "rescore"):
            raise ConfigError(f"select must be 'confidence', 'consensus', 'vote' or 'rescore', got {self.select!r}")
        if not 0.0 <= self.verify <= 1.0:
            raise ConfigError(f"verify must be in [0, 1] (0: off), got {self.verify}")
        if self.trust < 0.0:
            raise ConfigError(f"trust must be >= 0 (0: verify's ratio alone), got {self.trust}")

    @property
    def preset_name(self) -> str | None:
        """The preset these options are (whatever the seed), or None for a custom setting."""
        return self.preset or next((n for n, p in PRESETS.items() if replace(self, seed=p.seed) == p), None)

    def with_overrides(self, **overrides: Any) -> DecodingOptions:
        """These options with some fields changed; the preset label goes if k, steps or schedule change."""
        out = replace(self, **overrides)
        same = (out.k, out.steps, out.schedule) == (self.k, self.steps, self.schedule)
        return out if same else replace(out, preset=None)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> DecodingOptions:
        return replace(_from_table(PRESETS, "preset", name, {}), preset=name).with_overrides(**overrides)


PRESETS: dict[str, DecodingOptions] = {
    # the paper's PDD presets (arXiv 2508.07048, Table 5)
    "fast": DecodingOptions(k=5, steps=3, schedule=(1.0, 0.9, 0.8)),
    "balanced": DecodingOptions(k=10, steps=4, schedule=(1.0, 0.9, 0.85, 0.8)),
    "accurate": DecodingOptions(k=15, steps=4, schedule=(1.0, 0.9, 0.85, 0.8)),
}
DEFAULT_PRESET = "balanced"


def default_schedule(steps: int) -> tuple[float, ...]:
    """Re-mask fractions for `steps` passes when only the count is given: 1.0, then 0.9 falling
    evenly to 0.8 (the presets' range)."""
    if steps <= 1:
        return (1.0,)
    return (1.0,) + tuple(round(0.9 - 0.1 * i / max(1, steps - 2), 4) for i in range(steps - 1))


def parse_schedule(text: str) -> tuple[float, ...]:
    """Parses '1.0,0.9,0.8' into a schedule tuple; raises ConfigError with a one-line message."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"bad schedule {text!r}: expected comma-separated numbers like 1.0,0.9,0.8") from None
    if not values:
        raise ConfigError("empty schedule")
    return values


def decoding_overrides(k: int | None = None, steps: int | None = None, schedule: str | None = None,
                       seed: int | None = None, select: str | None = None,
                       verify: float | None = None) -> dict[str, Any]:
    """DecodingOptions fields the user set explicitly (CLI flags); raises WhisfusionError for a bad schedule."""
    overrides: dict[str, Any] = {} if select is None else {"select": select}
    if verify is not None:
        overrides["verify"] = verify
    if k is not None:
        overrides["k"] = k
    if schedule is not None:
        overrides["schedule"] = parse_schedule(schedule)
        overrides["steps"] = len(overrides["schedule"])
    if steps is not None:
        overrides["steps"] = steps
        if schedule is None:
            overrides["schedule"] = default_schedule(steps)
    if seed is not None:
        overrides["seed"] = seed
    return overrides


def resolve_decoding_options(preset: str | None, overrides: dict[str, Any],
                             model_cfg: WhisfusionConfig | None = None) -> DecodingOptions | None:
    """Preset + overrides as the loaded model tunes its presets (model_cfg: its WhisfusionConfig), else
    the paper's; None (nothing asked for): the model's default. Raises WhisfusionError when invalid."""
    if preset is None and not overrides:
        return None
    if model_cfg is not None:
        return model_cfg.decoding_options(preset, **overrides)
    return DecodingOptions.from_preset(preset or DEFAULT_PRESET, **overrides)


@dataclass(frozen=True)
class WhisfusionConfig:
    """Everything a checkpoint's config.json holds."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig | WhisperMDMConfig = field(default_factory=DecoderConfig)
    eos_id: int = 2  # end-of-text, also the canvas padding target
    tokenizer_kind: str = "bpe"
    default_preset: str = DEFAULT_PRESET
    model_type: str = "whisfusion"
    # this model's own settings for preset names (fields of DecodingOptions), measured on it; a name
    # not listed here is the paper's preset (PRESETS)
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Whisper's AR text decoder shipped beside a whisper-mdm decoder, sharing its frozen embedding
    # (rescoring.py; weights in rescorer*.safetensors); None: the model has none
    rescorer: WhisperTextConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def decoding_options(self, preset: str | None = None, **overrides: Any) -> DecodingOptions:
        """Options for a preset name (default: this model's default) as this model tunes it, plus overrides."""
        name = preset or self.default_preset
        tuned = {k: tuple(v) if isinstance(v, list) else v for k, v in self.presets.get(name, {}).items()}
        return replace(DecodingOptions.from_preset(name, **tuned), preset=name).with_overrides(**overrides)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WhisfusionConfig:
        return cls(
            encoder=EncoderConfig.from_dict(data["encoder"]),
            decoder=(WhisperMDMConfig if data["decoder"].get("family") == "whisper-mdm"
                     else DecoderConfig).from_dict(data["decoder"]),
            eos_id=int(data["eos_id"]),
            tokenizer_kind=data.get("tokenizer_kind", "bpe"),
            default_preset=data.get("default_preset", DEFAULT_PRESET),
            presets={name: dict(fields) for name, fields in data.get("presets", {}).items()},
            rescorer=_from_dict(WhisperTextConfig, data["rescorer"]) if data.get("rescorer") else None,
        )


Stage = Literal["1", "2", "scratch"]
STAGE_MASK_RANGE: dict[str, tuple[float, float]] = {"1": (0.0, 1.0), "2": (0.7, 1.0), "scratch": (0.0, 1.0)}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; `whisfusion train` flags map onto these fields."""

    data: tuple[str, ...]  # training sources: JSONL manifests and/or LibriSpeech-layout folders
    output: str  # run directory: last/, best/, metrics.jsonl (features/ unless cache_dir)
    stage: Stage = "1"
    init: str | None = None  # whisfusion checkpoint (dir or hub repo) to start from
    encoder: str | None = None  # Whisper checkpoint (dir or hub repo) for a fresh model (no init)
    decoder_config: str = "smdm-small"  # named DecoderConfig for a fresh decoder, or "whisper-mdm"
    smdm_init: str | None = None  # SMDM weights (.safetensors/.pt/.pth) for a fresh decoder
    tokenizer: str | None = None  # tokenizer.json to reuse (kind "bpe", </s> = eos); None: train one
    vocab_size: int = 4096  # of the trained tokenizer
    val_data: tuple[str, ...] = ()  # held-out sources; empty: val_fraction of data
    val_fraction: float = 0.02
    cache_dir: str | None = None  # feature cache (share it between runs); None: <output>/features
    steps: int | None = None  # optimizer steps (overrides epochs); None: epochs over the data
    epochs: int = 1
    batch_size: int = 32  # clips per micro-batch per process
    grad_accum: int = 1
    lr: float = 3e-4  # peak LR (the top block's in stage 2)
    min_lr_ratio: float = 0.1  # the cosine ends at lr * this
    warmup_steps: int = 500
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    llrd: float = 0.9  # stage 2 layer-wise LR decay
    mask_range: tuple[float, float] | None = None  # t ~ U(a, b); None: the stage's (STAGE_MASK_RANGE)
    val_t: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)  # mask ratios of the validation loss
    log_every: int = 10
    val_every: int = 500
    save_every: int = 500
    encode_batch_size: int = 16
    seed: int = 0
    device: str = "auto"
    resume: bool = False  # continue from <output>/last's training state (fresh start if none)

    def __post_init__(self) -> None:
        for name in ("data", "val_data", "betas", "val_t"):  # lists from a CLI or JSON become tuples
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.stage not in STAGE_MASK_RANGE:
            raise ConfigError(f"stage must be 1, 2 or scratch, got {self.stage!r}")
        if self.init is None and self.encoder is None:
            raise ConfigError("give init (a whisfusion checkpoint) or encoder (Whisper weights, fresh model)")
        if min(self.batch_size, self.grad_accum, self.epochs, self.log_every, self.val_every,
               self.save_every, self.steps or 1) < 1:
            raise ConfigError("batch_size, grad_accum, epochs, steps and the *_every intervals must be >= 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    @property
    def t_range(self) -> tuple[float, float]:
        return self.mask_range or STAGE_MASK_RANGE[self.stage]
