"""Text tokenizers: a thin wrapper over Hugging Face `tokenizers` (tokenizer.json files).

Two kinds: "whisper" (OpenAI's GPT-2-style BPE with <|...|> specials, for the AR baseline and
Whisper-initialised decoders) and "bpe" (our byte-level BPE with Llama-style specials
<unk>=0, <s>=1, </s>=2, trained on the training texts).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from .errors import CheckpointError

BPE_SPECIALS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2: the Llama/SMDM convention


class Tokenizer:
    """Encodes text to ids and decodes ids to text, skipping special tokens."""

    def __init__(self, hf: HFTokenizer, kind: str):
        self.hf = hf
        self.kind = kind

    @classmethod
    def from_file(cls, path: str | Path, kind: str) -> Tokenizer:
        try:
            text = Path(path).read_text(encoding="utf-8")
            if kind == "whisper":
                data = json.loads(text)
                merges = restore_merges(data["model"]["vocab"], data["model"]["merges"])
                if merges is not data["model"]["merges"]:
                    data["model"]["merges"] = merges
                    text = json.dumps(data)
            return cls(HFTokenizer.from_str(text), kind)
        except Exception as e:  # tokenizers raises plain Exceptions on bad files
            raise CheckpointError(f"{path}: cannot read tokenizer ({e})") from None

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    @property
    def eos_id(self) -> int:
        return self.token_id("<|endoftext|>" if self.kind == "whisper" else "</s>")

    def token_id(self, token: str) -> int:
        idx = self.hf.token_to_id(token)
        if idx is None:
            raise CheckpointError(f"tokenizer has no token {token!r}")
        return idx

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_transcripts(self, texts: Iterable[str]) -> list[list[int]]:
        """Ids of transcripts as the decoder writes them: Whisper's start with a space (" He hoped")."""
        texts = [" " + t.strip() if self.kind == "whisper" and t.strip() else t for t in texts]  # "": no ids
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=True).strip()

    def piece(self, ids: Iterable[int]) -> str:
        """The text of ids as written, not stripped (" Hello" keeps its space; specials spelt out)."""
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def save(self, path: str | Path) -> None:
        self.hf.save(str(path))

    def whisper_prompt(self, multilingual: bool, language: str = "en") -> list[int]:
        """<|startoftranscript|>(<|en|><|transcribe|>)<|notimestamps|> for Whisper decoders."""
        names = ["<|startoftranscript|>"]
        if multilingual:
            names += [f"<|{language}|>", "<|transcribe|>"]
        return [self.token_id(n) for n in names + ["<|notimestamps|>"]]


def restore_merges(vocab: dict[str, int], merges: list) -> list:
    """Whisper's byte-level BPE merges with any missing merge put back in its place.

    In Whisper's BPE, token 256 + r is made by merge r. Some converted tokenizer.json files lack
    merges: the whisper-base one in faster-whisper's CTranslate2 packages starts at merge 1, so
    "Ġt" (token 256, merge 0) is never formed and " the", " to", " that" encode as "Ġ" + "the"...
    (every word starting with t), which is not what Whisper's decoders read or write. A token
    without its merge gets it back: the split of it into two earlier tokens, by Whisper's ranks.
    """
    pairs = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]
    made = {a + b for a, b in pairs}
    by_id = sorted((i, t) for t, i in vocab.items() if i >= 256)
    missing = [(i, t) for i, t in by_id[: len(pairs) + 1] if t not in made]
    if not missing or len(missing) > 16:  # intact, or not a byte-level BPE of Whisper's kind
        return merges
    for i, token in missing:
        splits = [(token[:j], token[j:]) for j in range(1, len(token))]
        splits = [(a, b) for a, b in splits if vocab.get(a, i) < i and vocab.get(b, i) < i]
        if splits:
            a, b = min(splits, key=lambda ab: max(vocab[ab[0]], vocab[ab[1]]))
            merges = merges[: i - 256] + [[a, b] if isinstance(merges[0], list) else f"{a} {b}"] + merges[i - 256:]
    return merges


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> Tokenizer:
    """Trains a byte-level BPE tokenizer (cased, punctuation kept) with <unk>, <s>, </s> at ids 0-2."""
    hf = HFTokenizer(models.BPE(unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(BPE_SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    hf.train_from_iterator(texts, trainer)
    return Tokenizer(hf, "bpe")
