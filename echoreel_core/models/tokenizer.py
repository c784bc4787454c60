"""CLIP's byte-level BPE tokenizer, as OpenCLIP and the HF CLIP-L tokenizer use it.

Both text towers of the project (OpenCLIP ViT-H/14 and OpenAI CLIP ViT-L/14) share one vocabulary:
256 byte symbols, the same 256 with the end-of-word marker `</w>`, 48,894 merges and the two
special tokens, 49,408 ids in all. The vocabulary is never stored as a table here: it follows
deterministically from the byte alphabet and the ordered merge list, which is read either from
the `bpe_simple_vocab_16e6.txt.gz` file inside the installed `open_clip_torch` package or from a
HF-format `merges.txt` (ComfyUI ships one at `comfy/sd1_tokenizer/merges.txt`). Both files start
with one header line and hold the same merges.

Text is cleaned the OpenCLIP way before splitting: ftfy.fix_text, html.unescape twice, whitespace
collapsed, lower case.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import os
from functools import lru_cache

import ftfy
import regex
import torch

NUM_MERGES = 49152 - 256 - 2  # 48,894: the merges OpenAI's CLIP vocabulary keeps
OPEN_CLIP_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"

# OpenCLIP's spelling of the special tokens; HF spells them "<|startoftext|>" / "<|endoftext|>".
OPEN_CLIP_SPECIAL_TEXTS = ("<start_of_text>", "<end_of_text>")
HF_SPECIAL_TEXTS = ("<|startoftext|>", "<|endoftext|>")

# Contractions, runs of letters, single digits, runs of anything else that is not a space.
_WORD_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


@lru_cache()
def bytes_to_unicode() -> dict[int, str]:
    """Map every byte to a printable unicode character, so BPE never sees spaces or controls.

    Printable Latin-1 bytes map to themselves; the other 68 bytes are moved to 256, 257, ...
    in byte order. The order of this table is the order of the first 256 vocabulary ids.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    others = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return table


def clean_text(text: str) -> str:
    """OpenCLIP's 'lower' cleaning: fix mojibake, unescape HTML twice, collapse spaces, lower-case."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return " ".join(text.split()).lower()


def default_merges_path() -> str | None:
    """The BPE file inside the installed open_clip_torch package, found without importing it.

    Importing open_clip needs torchvision; locating its folder through the import machinery
    does not run its code.
    """
    try:
        spec = importlib.util.find_spec("open_clip")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, OPEN_CLIP_BPE_FILE)
        if os.path.isfile(path):
            return path
    return None


def read_merges(path: str | os.PathLike) -> list[tuple[str, str]]:
    """The first 48,894 merges of a BPE file: OpenCLIP's gz or HF's merges.txt (gz or not).

    Both formats start with a header line holding '#version'; it is skipped.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":  # gzip magic
        raw = gzip.decompress(raw)
    lines = raw.decode("utf-8").split("\n")
    if lines and "#version" in lines[0]:
        lines = lines[1:]
    merges = [tuple(line.split()) for line in lines[:NUM_MERGES]]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{os.fspath(path)} is not a CLIP BPE merges file ({NUM_MERGES} 'a b' lines expected)")
    return merges  # type: ignore[return-value]


class CLIPTokenizer:
    """Byte-level BPE with CLIP's 49,408-id vocabulary.

    `encode(text)` gives the ids of the text alone; calling the tokenizer gives the (b, 77)
    LongTensor a text tower takes: [SOT] + ids + [EOT], truncated with EOT kept last, then padded.
    OpenCLIP pads with 0, HF's CLIPTokenizer (LVDM's CLIP-L) with EOT = 49407: hence `pad_token`.

    `special_texts` are the spellings of SOT/EOT that are recognised inside a prompt and mapped to
    their ids directly, as OpenCLIP does (default) or as HF does (`HF_SPECIAL_TEXTS`).
    """

    def __init__(
        self,
        merges_path: str | os.PathLike | None = None,
        special_texts: tuple[str, str] = OPEN_CLIP_SPECIAL_TEXTS,
    ):
        if merges_path is None:
            merges_path = default_merges_path()
            if merges_path is None:
                raise FileNotFoundError(
                    "CLIPTokenizer needs the CLIP BPE merges: install them with "
                    "`pip install --no-deps open_clip_torch` (its bpe_simple_vocab_16e6.txt.gz is used), "
                    "or pass merges_path= a HF-format merges.txt (e.g. ComfyUI's comfy/sd1_tokenizer/merges.txt)"
                )
        merges = read_merges(merges_path)
        self.merges_path = os.fspath(merges_path)

        byte_symbols = list(bytes_to_unicode().values())
        vocab = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges]
        self.encoder: dict[str, int] = {symbol: i for i, symbol in enumerate(vocab)}
        self.sot_token = len(vocab)  # 49406
        self.eot_token = len(vocab) + 1  # 49407
        self.vocab_size = len(vocab) + 2  # 49408
        self.decoder: dict[int, str] = {i: s for s, i in self.encoder.items()}
        self.decoder[self.sot_token], self.decoder[self.eot_token] = special_texts

        self.merge_rank: dict[tuple[str, str], int] = {m: r for r, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.special_ids = {special_texts[0]: self.sot_token, special_texts[1]: self.eot_token}
        specials = "|".join(regex.escape(s) for s in special_texts)
        self.pattern = regex.compile(specials + "|" + _WORD_PATTERN, regex.IGNORECASE)
        self._cache: dict[str, list[int]] = {}

    # --- BPE -------------------------------------------------------------------------------
    def _bpe(self, word: str) -> list[int]:
        """Ids of one pre-token (already mapped to byte symbols), merging greedily by rank.

        The word starts as single symbols with `</w>` glued to the last one; at each step the
        adjacent pair with the lowest merge rank is merged everywhere it occurs, left to right.
        """
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            ranks = [self.merge_rank.get(pair, NUM_MERGES) for pair in zip(symbols, symbols[1:])]
            best = min(ranks)
            if best == NUM_MERGES:
                break
            first, second = symbols[ranks.index(best)], symbols[ranks.index(best) + 1]
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        ids = [self.encoder[s] for s in symbols]
        self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without SOT/EOT."""
        ids: list[int] = []
        for piece in self.pattern.findall(clean_text(text)):
            special = self.special_ids.get(piece)
            if special is not None:
                ids.append(special)
                continue
            ids.extend(self._bpe("".join(self.byte_encoder[b] for b in piece.encode("utf-8"))))
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of `ids` (special tokens spelled out), word ends turned back into spaces."""
        text = "".join(self.decoder[int(i)] for i in ids).replace("</w>", " ")
        # byte symbols go back to bytes; anything else (the special texts are plain ASCII) stays
        out = bytearray()
        for c in text:
            out.extend(bytes([self.byte_decoder[c]]) if c in self.byte_decoder else c.encode("utf-8"))
        return out.decode("utf-8", errors="replace")

    def __call__(
        self, texts: str | list[str], context_length: int = 77, pad_token: int = 0
    ) -> torch.LongTensor:
        """(b, context_length) ids: [SOT] + ids + [EOT], cut to length with EOT last, padded."""
        if isinstance(texts, str):
            texts = [texts]
        out = torch.full((len(texts), context_length), pad_token, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_token] + self.encode(text) + [self.eot_token]
            if len(ids) > context_length:
                ids = ids[:context_length]
                ids[-1] = self.eot_token
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out  # type: ignore[return-value]
