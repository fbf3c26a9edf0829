"""Encoder-feature cache: the frozen Whisper encoder runs once per clip, training reads its states.

Layout of a cache directory (one directory may hold the features of several encoders):

    index.json                   {"version": 1, "entries": {key: {shard, name, n_frames, text, duration}}}
    index.part-<p>.json          entries written by writer <p> (a DDP rank) not yet merged into index.json
    shard-<p>-<n>.safetensors    fp16 states, one tensor per clip named by its key, (n_frames, C)

A clip's key is `<encoder fingerprint>-<audio hash>`: the fingerprint hashes the encoder's config
and the bytes of a few of its weight tensors (another encoder, or other weights, gives other
keys), the audio hash is of the resolved path, size and modification time (cheap; an edited
file is re-encoded, an identical copy elsewhere is encoded again). Each clip's states are trimmed
to `audio.audio_frames(n_samples)` rows, what the decoder's adapters attend to in decoding too.

Every shard and index is written to a temp file and renamed into place, so a build killed at any
moment leaves a valid cache; re-running it encodes only the clips not yet indexed (resumable).
Clips ffmpeg cannot read, empty clips and clips over 30 s are skipped and counted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from .audio import N_AUDIO_CTX, N_SAMPLES, SAMPLE_RATE, audio_frames, load_audio, log_mel_windows
from .data import Example
from .errors import AudioError, WhisfusionError
from .whisper import WhisperEncoder

log = logging.getLogger("whisfusion_cli")

INDEX_VERSION = 1
SHARD_BYTES = 256 << 20  # bytes of fp16 states per shard: at most this much work is lost to a kill
LOAD_THREADS = 4  # ffmpeg decodes running ahead of the encoder


@dataclass(frozen=True)
class CacheEntry:
    """Where one clip's states live and what they transcribe."""

    shard: str  # file name inside the cache directory
    name: str  # tensor name inside the shard (the key)
    n_frames: int  # rows kept: audio_frames(n_samples)
    text: str
    duration: float  # seconds


@dataclass(frozen=True)
class CacheReport:
    """What `build_cache` did."""

    keys: tuple[str, ...]  # the key of every usable example, in input order (skipped ones left out)
    kept: tuple[int, ...]  # their positions in the input
    n_encoded: int  # clips encoded by this call
    n_reused: int  # clips found in the cache already
    skipped: Counter  # reason -> count (audio_error, empty_audio, too_long, empty_text)
    fingerprint: str


def encoder_fingerprint(encoder: WhisperEncoder) -> str:
    """sha256 of the encoder's config and the bytes of a few of its weights (first, last, final norm)."""
    h = hashlib.sha256(json.dumps(asdict(encoder.config), sort_keys=True).encode())
    layer = encoder.layers[-1] if len(encoder.layers) else None
    tensors = [encoder.conv1.weight, encoder.conv2.bias, encoder.layer_norm.weight]
    if layer is not None:
        tensors.append(layer.self_attn.out_proj.weight)
    for t in tensors:
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def audio_hash(path: Path) -> str:
    """sha256 of the resolved path, size and mtime (ns) of an audio file."""
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()


def clip_key(fingerprint: str, path: Path) -> str:
    return f"{fingerprint[:16]}-{audio_hash(path)[:32]}"


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: ranks may write at once
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _read_index(cache_dir: Path) -> tuple[dict[str, CacheEntry], dict[str, str]]:
    """Entries and skipped clips (key -> reason) of index.json and of any part indexes not merged yet."""
    entries: dict[str, CacheEntry] = {}
    skipped: dict[str, str] = {}
    for f in [cache_dir / "index.json", *sorted(cache_dir.glob("index.part-*.json"))]:
        if f.is_file():
            data = json.loads(f.read_text())
            if data.get("version") != INDEX_VERSION:
                raise WhisfusionError(f"{f}: cache index version {data.get('version')}, "
                                      f"expected {INDEX_VERSION}")
            entries.update({k: CacheEntry(**v) for k, v in data["entries"].items()})
            skipped.update(data.get("skipped", {}))
    return entries, skipped


def load_index(cache_dir: str | Path) -> dict[str, CacheEntry]:
    """key -> CacheEntry for every cached clip."""
    return _read_index(Path(cache_dir))[0]


def _index_json(entries: dict[str, CacheEntry], skipped: dict[str, str]) -> dict[str, Any]:
    return {"version": INDEX_VERSION, "entries": {k: asdict(e) for k, e in entries.items()},
            "skipped": skipped}


def merge_index(cache_dir: str | Path) -> int:
    """Folds the part indexes (one per DDP rank) into index.json; returns the entry count."""
    cache_dir = Path(cache_dir)
    entries, skipped = _read_index(cache_dir)
    _write_json(cache_dir / "index.json", _index_json(entries, skipped))
    for f in cache_dir.glob("index.part-*.json"):
        f.unlink()
    return len(entries)


class _Writer:
    """Accumulates clips' states into the shards of one writer `part`; each flush rewrites its index."""

    def __init__(self, cache_dir: Path, part: str, entries: dict[str, CacheEntry], skipped: dict[str, str],
                 shard_bytes: int):
        self.dir, self.shard_bytes = cache_dir, shard_bytes
        self.index_path = cache_dir / ("index.json" if part == "" else f"index.part-{part}.json")
        self.entries, self.skipped = entries, skipped  # what this writer's index file holds
        self.pending: dict[str, Tensor] = {}
        self.pending_entries: dict[str, CacheEntry] = {}
        self.pending_bytes = 0
        self.prefix = f"shard-{part or 'main'}-"
        shards = cache_dir.glob(f"{self.prefix}*.safetensors")
        numbers = [int(p.stem.removeprefix(self.prefix)) for p in shards]
        self.next_shard = max(numbers, default=0) + 1  # never reuse a name, even an unindexed one

    def add(self, key: str, states: Tensor, text: str, duration: float) -> None:
        """states (n_frames, C) fp16."""
        shard = f"{self.prefix}{self.next_shard:05d}.safetensors"
        self.pending[key] = states
        self.pending_entries[key] = CacheEntry(shard, key, states.shape[0], text, duration)
        self.pending_bytes += states.numel() * states.element_size()
        if self.pending_bytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            path = self.dir / f"{self.prefix}{self.next_shard:05d}.safetensors"
            tmp = path.with_name(f".{path.name}.tmp")
            save_file(self.pending, str(tmp))
            os.replace(tmp, path)  # the shard is whole before any index names it
            self.entries.update(self.pending_entries)
            self.pending, self.pending_entries, self.pending_bytes = {}, {}, 0
            self.next_shard += 1
        _write_json(self.index_path, _index_json(self.entries, self.skipped))


def _load(ex: Example) -> np.ndarray | str:
    """The clip's samples, or the reason it is skipped."""
    try:
        audio = load_audio(ex.audio)
    except AudioError as e:
        log.warning("cache: skipping %s", e)
        return "audio_error"
    if len(audio) == 0:
        return "empty_audio"
    return "too_long" if len(audio) > N_SAMPLES else audio


def _loaded(todo: list[tuple[str, Example]], batch_size: int,
            threads: int) -> Iterator[list[tuple[str, Example, np.ndarray | str]]]:
    """Batches of (key, example, samples or skip reason), decoded by ffmpeg one batch ahead."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        ahead = None
        for i in range(0, len(todo) + batch_size, batch_size):
            batch = todo[i: i + batch_size]
            current, ahead = ahead, (batch, [pool.submit(_load, ex) for _, ex in batch]) if batch else None
            if current is not None:
                yield [(k, ex, f.result()) for (k, ex), f in zip(*current)]


@torch.inference_mode()
def encode_clips(encoder: WhisperEncoder, clips: Sequence[np.ndarray], out_device: str | torch.device = "cpu"
                 ) -> list[Tensor]:
    """Each clip's encoder states trimmed to audio_frames(len(clip)), fp16 on `out_device`: (S_i, C) each.

    bf16 autocast on CUDA; the encoder's own dtype elsewhere.
    """
    param = encoder.conv1.weight
    mel = log_mel_windows(list(clips), encoder.config.n_mels, param.device)  # (B, n_mels, 3000)
    with torch.autocast("cuda", torch.bfloat16, enabled=param.device.type == "cuda"):
        xa = encoder(mel.to(param.dtype))  # (B, 1500, C)
    return [xa[i, : audio_frames(len(clip))].to(out_device, torch.float16, copy=True) for i, clip in enumerate(clips)]


def _plan(examples: Sequence[Example], fingerprint: str, entries: dict[str, CacheEntry],
          known_bad: dict[str, str], skipped: Counter
          ) -> tuple[list[str | None], list[tuple[str, Example]], dict[str, CacheEntry]]:
    """Each example's key (None: skipped), the clips still to encode, and cached entries whose text
    the examples now spell differently (a corrected transcript updates the index, not the states)."""
    keys: list[str | None] = []
    todo: dict[str, Example] = {}
    retext: dict[str, CacheEntry] = {}
    for ex in examples:
        key = None
        if not ex.text.strip():
            skipped["empty_text"] += 1
        else:
            try:
                key = clip_key(fingerprint, ex.audio)
            except OSError:
                skipped["audio_error"] += 1
        keys.append(key)
        if key is None or key in known_bad:
            continue
        if key not in entries:
            todo.setdefault(key, ex)
        elif entries[key].text != ex.text:
            retext[key] = replace(entries[key], text=ex.text)
    return keys, list(todo.items()), retext


def build_cache(examples: Sequence[Example], cache_dir: str | Path, encoder: WhisperEncoder,
                batch_size: int = 16, part: str = "", shard_bytes: int = SHARD_BYTES,
                progress: Callable[[int, int], None] | None = None) -> CacheReport:
    """Encodes every example's audio not cached yet; returns the keys to train on.

    Clips that fail (unreadable, empty, over 30 s) are recorded in the index with their reason,
    so a re-run skips them without decoding them again (a rewritten file gets a new key).

    Args:
        examples: the clips and their transcripts.
        cache_dir: the cache directory (created).
        encoder: the frozen encoder, on the device it should run on.
        batch_size: clips per encoder batch.
        part: writer name; DDP ranks each pass their own and rank 0 calls `merge_index` after.
        shard_bytes: fp16 bytes per shard file.
        progress: called with (clips done, clips to do) after each batch.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    for stale in cache_dir.glob(f".shard-{part or 'main'}-*.tmp"):
        stale.unlink()  # a shard whose writing a kill interrupted
    entries, known_bad = _read_index(cache_dir)
    fingerprint = encoder_fingerprint(encoder)
    skipped: Counter = Counter()
    keys, todo, retext = _plan(examples, fingerprint, entries, known_bad, skipped)
    bad: dict[str, str] = {}  # key -> skip reason, found now
    if todo or retext:  # a part index holds only what its writer adds; index.json holds everything
        writer = _Writer(cache_dir, part, {**({} if part else entries), **retext},
                         {} if part else known_bad, shard_bytes)
        done = 0
        for batch in _loaded(todo, batch_size, LOAD_THREADS):
            bad.update((k, a) for k, _, a in batch if isinstance(a, str))
            good = [(k, ex, a) for k, ex, a in batch if not isinstance(a, str)]
            encoded = encode_clips(encoder, [a for _, _, a in good]) if good else []
            for (k, ex, a), states in zip(good, encoded):
                writer.add(k, states, ex.text, len(a) / SAMPLE_RATE)
            writer.skipped.update(bad)
            done += len(batch)
            if progress is not None:
                progress(done, len(todo))
        writer.flush()
    bad.update(known_bad)
    skipped.update(bad[k] for k in keys if k in bad)
    kept = [i for i, k in enumerate(keys) if k is not None and k not in bad]
    n_encoded = len(todo) - sum(1 for k, _ in todo if k in bad)
    log.info("feature cache %s: %d clips encoded, %d cached already, skipped %s", cache_dir, n_encoded,
             len(kept) - n_encoded, dict(skipped) or "none")
    return CacheReport(tuple(str(keys[i]) for i in kept), tuple(kept), n_encoded, len(kept) - n_encoded,
                       skipped, fingerprint)


class FeatureCache:
    """Random access to cached clips: `cache[i]` -> (states (S, C) fp16, text).

    Shards are opened lazily (safetensors memory-maps them) and at most `max_open_shards` stay
    open (least recently used closed first), so memory stays bounded whatever the cache's size.
    """

    def __init__(self, cache_dir: str | Path, keys: Sequence[str] | None = None, max_open_shards: int = 8):
        """Args:
            cache_dir: a directory written by `build_cache`.
            keys: the clips to serve, in this order (e.g. `CacheReport.keys`); None: every clip.
        """
        self.dir = Path(cache_dir)
        index = load_index(self.dir)
        missing = [k for k in (keys or ()) if k not in index]
        if missing:
            raise WhisfusionError(f"{self.dir}: {len(missing)} clips not in the cache (e.g. {missing[0]})")
        self.keys = list(index) if keys is None else list(keys)
        self.entries = [index[k] for k in self.keys]
        self.max_open_shards = max_open_shards
        self._open: OrderedDict[str, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self.entries)

    def _shard(self, name: str) -> Any:
        if name in self._open:
            self._open.move_to_end(name)
        else:
            self._open[name] = safe_open(str(self.dir / name), framework="pt")
            if len(self._open) > self.max_open_shards:
                self._open.popitem(last=False)
        return self._open[name]

    def __getitem__(self, i: int) -> tuple[Tensor, str]:
        entry = self.entries[i]
        return self._shard(entry.shard).get_tensor(entry.name), entry.text  # (n_frames, C) fp16

    def batch(self, idx: Sequence[int], multiple: int = 1) -> tuple[Tensor, Tensor]:
        """xa (B, S, C) fp16 and n_frames (B,): S is the longest clip's frames rounded up to `multiple`
        (few distinct shapes let kernels reuse their plans), zeros past each clip's frames."""
        return pad_states([self[i][0] for i in idx], multiple)


def pad_states(states: Sequence[Tensor], multiple: int = 1) -> tuple[Tensor, Tensor]:
    """Clips' states (S_i, C) -> xa (B, S, C) with S = the longest S_i rounded up to `multiple` (zeros
    past each clip's frames; few distinct shapes let kernels reuse their plans), and n_frames (B,)."""
    n_frames = torch.tensor([s.shape[0] for s in states], device=states[0].device)
    n_states = min(N_AUDIO_CTX, -(-int(n_frames.max()) // multiple) * multiple)
    xa = torch.zeros(len(states), n_states, states[0].shape[1], dtype=states[0].dtype, device=states[0].device)
    for row, s in zip(xa, states):
        row[: s.shape[0]] = s
    return xa, n_frames


def build_shared(examples: Sequence[Example], cache_dir: str | Path, encoder: WhisperEncoder, rank: int,
                 world_size: int, barrier: Callable[[], None], batch_size: int = 16,
                 progress: Callable[[int, int], None] | None = None) -> CacheReport:
    """`build_cache` with the encoding split over `world_size` processes (DDP ranks).

    Rank r encodes examples r, r + world_size, ... into its own shards and part index; rank 0
    then merges the indexes, and every rank gets the report of the whole list.
    """
    if world_size == 1:
        return build_cache(examples, cache_dir, encoder, batch_size, progress=progress)
    build_cache(examples[rank::world_size], cache_dir, encoder, batch_size, part=f"rank{rank}",
                progress=progress)
    barrier()
    if rank == 0:  # picks up what a rank's failure left undone, too
        report = build_cache(examples, cache_dir, encoder, batch_size)
        merge_index(cache_dir)
    barrier()
    return report if rank == 0 else build_cache(examples, cache_dir, encoder, batch_size)  # reads only
