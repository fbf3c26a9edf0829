"""Synthesises a speech-recognition training set from book text with offline TTS voices.

    python recipes/synthetic/make_dataset.py --books ../shared/data/text/books.txt.xz --out DIR \
        --hours 300 --seed 0 --workers 16 [--voices ID|ENGINE ...] [--eval-transcripts DIR ...]

writes DIR/train.jsonl (training books, training voices), DIR/val.jsonl (held-out books, training
voices), DIR/test_voices.jsonl (held-out books, held-out voices), with audio under
DIR/<split>/<shard>/<id>.flac (16 kHz mono; 1,000 clips a shard), DIR/config.json (the run's
inputs) and DIR/summary.json. Every item's text, voice, TTS rate/pitch and augmentation chain is
drawn from (seed, split, index) before any synthesis, so worker count and order do not change
the result. A rerun skips the clips already written (resume). Items whose TTS fails, or whose
clip is > 30 s or < 0.3 s, are skipped and counted. The manifest rows are what
whisfusion_cli.data.read_manifest reads, plus provenance keys (voice, engine, tts, aug, book, line).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time
import wave
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import augment
import texts
import voices as tts

MAX_CLIP_S, MIN_CLIP_S = 30.0, 0.3  # clips outside are skipped
PLAN_WORDS_PER_S = 2.85  # words per second of audio, measured over the default voice mix + augmentation
# ffmpeg codec flags per output format: FLAC is lossless; Ogg Opus at 16 kb/s is ~10x smaller (for
# moving hours of speech through a narrow pipe, e.g. to a GPU machine)
CODECS = {".flac": ["-c:a", "flac"], ".ogg": ["-c:a", "libopus", "-b:a", "16k", "-application", "voip"]}
SHARD_SIZE = 1000  # clips per audio folder
SPLITS = {"train": 1, "val": 2, "test_voices": 3}  # split -> code in the per-item seed
MANIFESTS = {"train": "train.jsonl", "val": "val.jsonl", "test_voices": "test_voices.jsonl"}
PROGRESS = "progress.jsonl"  # rows appended as clips finish (see render_all)


@dataclass(frozen=True)
class Item:
    """One planned clip: everything needed to render it, fixed before dispatch."""

    split: str
    index: int
    text: str
    book: int
    line: int
    voice: str
    tts: dict
    aug: list
    audio: str  # path relative to the output folder

    @property
    def id(self) -> str:
        return f"{self.split}-{self.index:07d}"


@dataclass(frozen=True)
class Result:
    split: str
    index: int
    duration: float | None  # seconds, None when skipped
    reason: str = ""  # why skipped
    rendered: bool = False  # synthesised in this run (not found on disk)
    work_s: float = 0.0  # worker wall time spent on it (TTS + augmentation + encoding)


# ---- planning -------------------------------------------------------------------------------

def select(utts: list[texts.Utterance], hours: float, rng: np.random.Generator,
           words_per_s: float = PLAN_WORDS_PER_S) -> list[texts.Utterance]:
    """Random utterances whose estimated durations add up to `hours`; text is reused (new
    permutation) only when the pool runs out."""
    out: list[texts.Utterance] = []
    need, total = hours * 3600.0 * words_per_s, 0  # in words
    while utts and total < need:
        for i in rng.permutation(len(utts)):
            if total >= need:
                break
            out.append(utts[i])
            total += utts[i].n_words
    return out


def assign(split: str, index: int, utt: texts.Utterance, pool: list[tts.Voice], seed: int, fmt: str) -> Item:
    """Voice, TTS parameters and augmentation of one item, from its own (seed, split, index) stream."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    weights = np.array([v.weight for v in pool])
    voice = pool[int(rng.choice(len(pool), p=weights / weights.sum()))]
    params = tts.sample_params(voice, rng)
    chain = augment.sample_chain(rng)
    audio = f"{split}/{index // SHARD_SIZE:04d}/{split}-{index:07d}.{fmt}"
    return Item(split, index, texts.written(utt.text), utt.book, utt.line, voice.id, params, chain, audio)


def plan(lines: list[str], books: list[texts.Book], args: argparse.Namespace, train_voices: list[tts.Voice],
         test_voices: list[tts.Voice]) -> tuple[list[Item], dict]:
    """All items of all splits, and facts about the text (held-out books, filtered utterances)."""
    grams = texts.eval_ngrams(args.eval_transcripts)
    held = set(texts.heldout_books(len(books), args.seed))
    train_utts, dropped_a = texts.utterances(lines, [b for b in books if b.index not in held], args.seed, grams)
    held_utts, dropped_b = texts.utterances(lines, [b for b in books if b.index in held], args.seed, grams)
    wps = args.words_per_second
    stream = [args.seed, 0x5E1, 1] + ([args.text_stream] if args.text_stream else [])
    train = select(train_utts, args.hours, np.random.default_rng(stream), wps)
    held_pick = select(held_utts, args.val_hours + args.test_hours, np.random.default_rng([args.seed, 0x5E1, 2]), wps)
    n_val = next((i + 1 for i, s in enumerate(np.cumsum([u.n_words for u in held_pick]))
                  if s >= args.val_hours * 3600 * wps), len(held_pick))
    items = [assign("train", i, u, train_voices, args.seed, args.format) for i, u in enumerate(train)]
    items += [assign("val", i, u, train_voices, args.seed, args.format) for i, u in enumerate(held_pick[:n_val])]
    if test_voices:
        items += [assign("test_voices", i, u, test_voices, args.seed, args.format)
                  for i, u in enumerate(held_pick[n_val:])]
    facts = {"heldout_books": [books[i].title for i in sorted(held)], "eval_ngrams": len(grams),
             "dropped_eval_overlap": dropped_a + dropped_b, "train_text_pool_hours": round(
                 sum(u.est_seconds for u in train_utts) / 3600, 1)}
    return items, facts


# ---- rendering (worker processes) -------------------------------------------------------------

def flac_samples(path: Path) -> int:
    """Total samples from a FLAC file's STREAMINFO block."""
    with open(path, "rb") as f:
        head = f.read(26)  # "fLaC", block header (4), STREAMINFO: block/frame sizes (10), then 64 bits
    if head[:4] != b"fLaC":
        raise ValueError(f"{path}: not FLAC")
    return int.from_bytes(head[18:26], "big") & ((1 << 36) - 1)  # rate 20, channels 3, bits 5, samples 36


def clip_seconds(path: Path) -> float:
    if path.suffix == ".wav":
        with wave.open(str(path)) as w:
            return w.getnframes() / w.getframerate()
    if path.suffix == ".flac":
        return flac_samples(path) / augment.SAMPLE_RATE
    cmd = ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)]
    return float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def write_audio(path: Path, audio: np.ndarray) -> None:
    """16-bit mono at 16 kHz, written to a temporary name and renamed (a crash leaves no clip)."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).round().astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".part" + path.suffix)
    if path.suffix == ".wav":
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(augment.SAMPLE_RATE)
            w.writeframes(pcm.tobytes())
    else:
        cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "s16le", "-ar", str(augment.SAMPLE_RATE),
               "-ac", "1", "-i", "pipe:0", *CODECS[path.suffix], "-bitexact", "-fflags", "+bitexact", str(tmp)]
        proc = subprocess.run(cmd, input=pcm.tobytes(), capture_output=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"ffmpeg: {proc.stderr.decode(errors='replace').strip()}")
    os.replace(tmp, path)


def render(job: tuple[Item, str]) -> Result:
    """Synthesises, augments and writes one clip, unless it (or its skip marker) exists."""
    item, out_dir = job
    path = Path(out_dir) / item.audio
    marker = path.with_suffix(".skip")
    if path.is_file():
        return Result(item.split, item.index, round(clip_seconds(path), 3))
    if marker.is_file():
        return Result(item.split, item.index, None, marker.read_text().strip())
    t0 = time.perf_counter()
    try:
        audio = tts.synthesize(item.text, tts.BY_ID[item.voice], item.tts)
    except tts.TTSError:
        return Result(item.split, item.index, None, "tts_failed", True, time.perf_counter() - t0)
    audio = augment.apply_chain(audio, item.aug)
    seconds = len(audio) / augment.SAMPLE_RATE
    if not MIN_CLIP_S <= seconds <= MAX_CLIP_S:  # deterministic outcome: remembered for reruns
        reason = "too_long" if seconds > MAX_CLIP_S else "too_short"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(reason + "\n")
        return Result(item.split, item.index, None, reason, True, time.perf_counter() - t0)
    write_audio(path, audio)
    return Result(item.split, item.index, round(seconds, 3), rendered=True, work_s=time.perf_counter() - t0)


def _init_worker() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def manifest_row(it: Item, duration: float) -> dict:
    return {"audio": it.audio, "text": it.text, "duration": duration, "voice": it.voice,
            "engine": tts.BY_ID[it.voice].engine, "tts": it.tts, "aug": it.aug, "book": it.book, "line": it.line}


def render_all(items: list[Item], out_dir: Path, workers: int) -> list[Result]:
    """Renders every item with a process pool, held-out splits dispatched first (small, and what a
    trainer that reads a growing dataset validates on); results come back in plan order.

    Each finished clip is appended at once to `progress.jsonl` (its manifest row plus "split"), so a
    trainer can start on a dataset still being made and a cut-off run keeps what it rendered.
    """
    jobs = sorted(((it, str(out_dir)) for it in items), key=lambda j: j[0].split == "train")
    by_key = {(it.split, it.index): it for it in items}
    results, t0, last = [], time.time(), 0.0
    ctx = mp.get_context("spawn")  # no fork after onnxruntime/torch threads exist
    with ctx.Pool(max(1, workers), initializer=_init_worker) as pool, \
            open(out_dir / PROGRESS, "w", encoding="utf-8") as progress:
        for r in pool.imap_unordered(render, jobs, chunksize=4):
            results.append(r)
            if r.duration is not None:
                row = {"split": r.split, **manifest_row(by_key[(r.split, r.index)], r.duration)}
                progress.write(json.dumps(row, ensure_ascii=False) + "\n")
                progress.flush()
            if time.time() - last > 30 or len(results) == len(jobs):
                last = time.time()
                print(f"  {len(results)}/{len(jobs)} clips, {time.time() - t0:.0f} s", file=sys.stderr)
    order = {(it.split, it.index): k for k, it in enumerate(items)}
    return sorted(results, key=lambda r: order[(r.split, r.index)])


# ---- outputs ----------------------------------------------------------------------------------

def write_manifests(items: list[Item], results: list[Result], out_dir: Path) -> None:
    rows: dict[str, list[str]] = {s: [] for s in SPLITS}
    for it, r in zip(items, results):
        if r.duration is not None:
            rows[it.split].append(json.dumps(manifest_row(it, r.duration), ensure_ascii=False))
    for split, lines in rows.items():
        tmp = out_dir / (MANIFESTS[split] + ".part")
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.replace(tmp, out_dir / MANIFESTS[split])


def summarise(items: list[Item], results: list[Result], wall_s: float) -> dict:
    """Hours per split, engine and voice; skips by reason; this run's synthesis throughput."""
    out: dict = {"splits": {}, "wall_s": round(wall_s, 1)}
    rendered_s = 0.0
    engine_audio, engine_work = defaultdict(float), defaultdict(float)  # this run's rendering only
    for split in SPLITS:
        pairs = [(it, r) for it, r in zip(items, results) if it.split == split]
        per_engine, per_voice = defaultdict(float), defaultdict(float)
        for it, r in pairs:
            if r.duration is not None:
                per_engine[tts.BY_ID[it.voice].engine] += r.duration / 3600
                per_voice[it.voice] += r.duration / 3600
                rendered_s += r.duration if r.rendered else 0.0
            if r.rendered:
                engine_audio[tts.BY_ID[it.voice].engine] += r.duration or 0.0
                engine_work[tts.BY_ID[it.voice].engine] += r.work_s
        out["splits"][split] = {
            "planned": len(pairs), "clips": sum(r.duration is not None for _, r in pairs),
            "hours": round(sum(per_engine.values()), 4),
            "skipped": dict(Counter(r.reason for _, r in pairs if r.duration is None)),
            "hours_per_engine": {k: round(v, 4) for k, v in sorted(per_engine.items())},
            "hours_per_voice": {k: round(v, 4) for k, v in sorted(per_voice.items())},
        }
    out["synthesised_audio_s"] = round(rendered_s, 1)
    out["audio_s_per_wall_s"] = round(rendered_s / wall_s, 2) if wall_s > 0 else None
    out["audio_s_per_worker_s"] = {e: round(engine_audio[e] / engine_work[e], 2)
                                   for e in sorted(engine_work) if engine_work[e] > 0}
    return out


def print_summary(summary: dict, file=sys.stderr) -> None:
    for split, s in summary["splits"].items():
        print(f"{split}: {s['clips']}/{s['planned']} clips, {s['hours']:.3f} h, skipped {s['skipped'] or 0}", file=file)
        for engine, h in s["hours_per_engine"].items():
            voices_of = {v: h2 for v, h2 in s["hours_per_voice"].items() if tts.BY_ID[v].engine == engine}
            detail = ", ".join(f"{tts.BY_ID[v].name} {h2:.3f}" for v, h2 in voices_of.items())
            print(f"  {engine:10} {h:8.3f} h  ({detail})", file=file)
    print(f"synthesised {summary['synthesised_audio_s'] / 3600:.3f} h of audio in {summary['wall_s']:.0f} s: "
          f"{summary['audio_s_per_wall_s']} s of audio per wall-clock second", file=file)
    per_worker = ", ".join(f"{e} {x}" for e, x in summary["audio_s_per_worker_s"].items())
    print(f"audio seconds per worker second, by engine: {per_worker or '-'}", file=file)


# ---- command line -----------------------------------------------------------------------------

def pick_voices(wanted: list[str] | None, test_wanted: list[str] | None, workers: int
                ) -> tuple[list[tts.Voice], list[tts.Voice], dict[str, str]]:
    """(training voices, held-out voices, unavailable id -> reason) among the requested ones."""
    def expand(names: list[str]) -> list[tts.Voice]:
        unknown = [n for n in names if n not in tts.BY_ID and n not in tts.ENGINES]
        if unknown:
            sys.exit(f"unknown voice or engine: {', '.join(unknown)} (see recipes/synthetic/voices.py)")
        return [v for v in tts.VOICES if v.id in names or v.engine in names]

    chosen = expand(wanted) if wanted else list(tts.VOICES)
    test = expand(test_wanted) if test_wanted else [v for v in chosen if v.held_out]
    train = [v for v in chosen if v not in test and (wanted or not v.held_out)]
    status = tts.available(tuple(dict.fromkeys(train + test)), workers)
    missing = {k: v for k, v in status.items() if v}
    return [v for v in train if v.id not in missing], [v for v in test if v.id not in missing], missing


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--books", required=True, type=Path, help="books.txt.xz (one paragraph per line)")
    p.add_argument("--sources", type=Path, help="SOURCES.md with the book line ranges [default: beside --books]")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--hours", required=True, type=float, help="training hours to plan")
    p.add_argument("--words-per-second", type=float, default=PLAN_WORDS_PER_S,
                   help="speaking rate that turns --hours into words of text (measured for the default mix)")
    p.add_argument("--val-hours", type=float, help="held-out-text hours [default: min(2, 1%% of --hours)]")
    p.add_argument("--test-hours", type=float, help="held-out-voice hours [default: as --val-hours]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text-stream", type=int, default=0,
                   help="another draw of training texts with the same held-out books (for a second dataset "
                        "that must not repeat the first one's texts)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--voices", nargs="+", help="voice ids or engine names [default: every voice that runs here]")
    p.add_argument("--test-voices", nargs="+", help="held-out voice ids or engines [default: the table's held-out]")
    p.add_argument("--eval-transcripts", nargs="*", default=[], type=Path,
                   help="folders searched for *.trans.txt; utterances sharing an 8-word run are dropped")
    p.add_argument("--format", choices=["flac", "wav", "ogg"], default="flac",
                   help="flac: lossless; wav: no ffmpeg needed; ogg: Opus 16 kb/s, ~10x smaller than flac")
    args = p.parse_args(argv)
    args.val_hours = min(2.0, 0.01 * args.hours) if args.val_hours is None else args.val_hours
    args.test_hours = args.val_hours if args.test_hours is None else args.test_hours
    args.sources = args.sources or args.books.parent / "SOURCES.md"
    return args


def check_config(out_dir: Path, config: dict) -> None:
    """Refuses to resume into a folder made from other inputs (its clips would not match)."""
    path = out_dir / "config.json"
    if path.is_file() and json.loads(path.read_text()) != config:
        sys.exit(f"{path} differs from this run's inputs (seed, hours, books, voices ...): use a new --out")
    path.write_text(json.dumps(config, indent=1) + "\n")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.format != "wav" and not shutil.which("ffmpeg"):
        sys.exit(f"--format {args.format} needs ffmpeg on PATH (or use --format wav)")
    t0 = time.time()
    train_voices, test_voices, missing = pick_voices(args.voices, args.test_voices, args.workers)
    for vid, why in missing.items():
        print(f"voice {vid} unavailable: {why}", file=sys.stderr)
    if not train_voices:
        sys.exit("no training voice runs here (voices.py lists them; see recipes/synthetic/README.md)")
    if not test_voices:
        print("warning: no held-out voice runs here: test_voices.jsonl will be empty", file=sys.stderr)
    lines, books = texts.read_lines(args.books), texts.read_book_ranges(args.sources)
    items, facts = plan(lines, books, args, train_voices, test_voices)
    args.out.mkdir(parents=True, exist_ok=True)
    config = {"books": args.books.name, "n_books": len(books), "seed": args.seed, "hours": args.hours,
              "val_hours": args.val_hours, "test_hours": args.test_hours, "format": args.format,
              "words_per_second": args.words_per_second, "text_stream": args.text_stream,
              "train_voices": [v.id for v in train_voices], "test_voices": [v.id for v in test_voices],
              "eval_transcripts": sorted(str(p) for p in args.eval_transcripts), **facts}
    check_config(args.out, config)
    print(f"planned {len(items)} clips ({facts['dropped_eval_overlap']} utterances dropped for eval overlap; "
          f"held-out books: {'; '.join(facts['heldout_books'])})", file=sys.stderr)
    t1 = time.time()
    results = render_all(items, args.out, args.workers)
    write_manifests(items, results, args.out)
    summary = summarise(items, results, time.time() - t1)
    summary["plan_s"] = round(t1 - t0, 1)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print_summary(summary)
    return summary


if __name__ == "__main__":
    main()
