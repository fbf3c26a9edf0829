"""tokenizer.py: Whisper's BPE as Whisper's decoders read and write it, even from a damaged tokenizer.json."""

from __future__ import annotations

import json

import pytest

from whisfusion_cli.tokenizer import Tokenizer, restore_merges


def test_restore_merges_puts_back_a_missing_merge_in_its_rank():
    vocab = {chr(0x100 + i) if i < 256 else t: i for i, t in enumerate([None] * 256 + ["ab", "abc", "cd"])}
    vocab = {k: v for k, v in vocab.items() if k is not None}
    vocab |= {"a": 10, "b": 11, "c": 12, "d": 13}
    full = [["a", "b"], ["ab", "c"], ["c", "d"]]
    assert restore_merges(vocab, full) is full  # intact: left as it is
    assert restore_merges(vocab, full[1:]) == full  # merge 0 lost: back at rank 0
    assert restore_merges(vocab, [" ".join(m) for m in full[:1] + full[2:]]) == ["a b", "ab c", "c d"]


@pytest.mark.real_weights
def test_whisper_base_tokenizer_encodes_as_whisper_does(weights_dir):
    """The whisper-base tokenizer.json the offline weights come with lacks merge 0 ("Ġ t"): every word
    starting with t encoded as "Ġ" + "the"...; loaded through Tokenizer, each is one token again."""
    base = weights_dir / "whisper-base" / "tokenizer.json"
    merges = json.loads(base.read_text())["model"]["merges"]
    text = " He hoped there would be stew for dinner, turnips, thick to the end; it was that time."
    tok = Tokenizer.from_file(base, "whisper")
    pieces = [tok.hf.id_to_token(i) for i in tok.encode(text)]
    assert "Ġ" not in pieces  # no space left on its own
    for word in ("the", "there", "thick", "to", "that", "time"):
        assert tok.encode(f" {word}") == [tok.token_id(f"Ġ{word}")]
    assert tok.decode(tok.encode(text)) == text.strip()
    if merges[0] not in (["Ġ", "t"], "Ġ t"):  # the damaged file: raw it splits the t-words
        from tokenizers import Tokenizer as HF

        assert HF.from_file(str(base)).encode(" the", add_special_tokens=False).ids != tok.encode(" the")
