"""Words and BM25: the lexical half of caption retrieval.

Why a lexical index beside the embeddings: a text encoder's pooled embedding is dominated by what
its training made salient (the toy encoder knows colours and shapes, never orbits or zigzags; a
real CLIP weighs the subject as much as the verb), while the word that names an action is often
rare in a library, and BM25 rewards exactly rare words that a caption shares with the prompt.

Words (`words`): NFKC, lower case; runs of letters and digits; a hyphenated compound is one word
("up-left": "moving left" must not match "moving down-left" by a part of it; a prompt's "up left"
is joined into the compound when the library has it, see `query_terms`); a possessive "'s" is
dropped and other apostrophes are joined ("don't" -> "dont"); common English function words are
dropped; a light
suffix stripper makes "orbits", "orbiting" and "orbit" one word, "zigzagging" and "zigzag", and
"moves", "moving" and "move" (see `stem`; not a full Porter stemmer: irregular forms stay apart).

BM25 (Robertson-Sparck Jones idf with the +1 that keeps it positive; k1 = 1.2, b = 0.75): each query
word counts once, the words of the prompt's action phrase (from its first word in -ing on, the way
video captions say what happens: "a red circle *moving down*", "a man *doing a cartwheel*") twice
(`ACTION_WEIGHT`; see `query_terms`), and the action phrase's neighbouring word pairs are index
words of their own ("mov down", in captions and prompts alike). Why: EchoReel wants a reference of
the action, whatever shows it, and in a caption the subject's words can be as rare as the
action's (the toy library: 12 objects, 20 actions), so without them "a red square moving down"
prefers "a red square bouncing up and down", which shares "red", "square" and "down", to "a blue
circle moving down", which shares only the action. `Bm25.scores` returns the raw score per document; `Bm25.ideal` is the score of a
document that says exactly the query's words, so `scores / ideal` is 1 for such a caption and
shares of it otherwise (a caption repeating a word can pass 1). Query words the library never uses
still count in `ideal` with the largest idf: no caption matches them, and the score says so.

The inverted index is stored as three arrays (`Postings`): for word i, documents
`doc[offsets[i]:offsets[i+1]]` with counts `tf[...]`, plus each document's length in words.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import torch

VERSION = "words-2"  # changes whenever `words` would index a caption differently: indexes rebuild their postings
K1 = 1.2
B = 0.75
ACTION_WEIGHT = 2.0

# words in -ing that are nouns far more often than verbs in captions
NOT_VERBS = frozenset("""
thing something nothing anything everything king ring string spring wing ceiling building morning evening
wedding clothing painting drawing ending beginning setting landing opening crossing
""".split())

STOPWORDS = frozenset("""
a an the and or but of in on at to into onto from by with without for as is are was were be been being
it its this that these those there here then than so very his her their our your my them they he she we
you i me him us while who whom which what when where why how all any some each other another one
""".split())

_WORD = re.compile(r"[^\W_]+(?:['\u2019\-][^\W_]+)*")


@lru_cache(maxsize=1 << 16)
def stem(word: str) -> str:
    """A light suffix stripper: -ies -> y, plural -s (not -ss, -us, -is), -ing and -ed (a doubled
    final consonant then halved: zigzagging -> zigzag), a final silent -e (move, moving, moves ->
    mov). Words of 3 letters or fewer are kept as they are."""
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            if len(word) >= 4 and word[-1] == word[-2] and word[-1] not in "aeioulsz":
                word = word[:-1]
            break
    if word.endswith("e") and len(word) > 3:
        word = word[:-1]
    return word


def _pieces(token: str) -> list[str]:
    """The stemmed pieces of one token: one for a word, several for a hyphenated compound; none
    for a function word standing alone."""
    if "'" in token or "\u2019" in token:
        token = re.sub(r"['\u2019]s$", "", token)
        token = re.sub(r"['\u2019]", "", token)
    pieces = [p for p in token.split("-") if p] if "-" in token else [token]
    if len(pieces) == 1 and pieces[0] in STOPWORDS:
        return []
    return [stem(p) for p in pieces]


def _raw(text: str) -> list[str]:
    return [m.group() for m in _WORD.finditer(unicodedata.normalize("NFKC", text).lower())]


def tokens(text: str) -> list[list[str]]:
    """The text's tokens as lists of stemmed pieces, in order."""
    return [p for p in map(_pieces, _raw(text)) if p]


def words(text: str) -> list[str]:
    """A caption's index words, in order: its words (a compound is one word, "up-left"), then the
    pairs of neighbouring words of its action phrase ("mov up-left"; see `action_pairs`)."""
    return list(_words(text))


@lru_cache(maxsize=1 << 16)
def _words(text: str) -> tuple[str, ...]:  # libraries repeat captions; indexing reads them all again
    raw = _raw(text)
    first = action_start(raw)
    single, action = [], []
    for i, token in enumerate(raw):
        pieces = _pieces(token)
        if pieces:
            single.append("-".join(pieces))
            if i >= first:
                action.append(single[-1])
    return tuple(single + action_pairs(action))


def action_pairs(action: list[str]) -> list[str]:
    """The neighbouring pairs of an action phrase's words, "mov up": they tell "moving up" from
    "bouncing up and down", which share the word "up" (function words are already out)."""
    return [f"{a} {b}" for a, b in zip(action, action[1:])]


def action_start(raw: list[str]) -> int:
    """Where a text's action phrase starts: at its first word in -ing (not one of the nouns in
    NOT_VERBS), or nowhere (len(raw)) when it has none."""
    for i, token in enumerate(raw):
        if token.isalpha() and len(token) > 4 and token.endswith("ing") and token not in NOT_VERBS:
            return i
    return len(raw)


def query_terms(text: str, vocabulary, action_weight: float = ACTION_WEIGHT) -> dict[str, float]:
    """A prompt's words as the index knows them, each once, with its weight: `action_weight` for
    the words of the action phrase (from the first word in -ing on: "a red circle *moving down*",
    "a man *doing a cartwheel*"), 1 for the others; all 1 when the prompt has no such word.
    The action phrase's neighbouring pairs count too ("mov up", weight `action_weight`), as in
    captions (`words`). A compound the vocabulary lacks is split into its pieces, and two
    neighbouring words that form a compound it has are joined ("moving up left" -> mov, up-left),
    so that "moving left" never matches "moving down-left" by its part "left" while "up left"
    still finds "up-left"."""
    raw = _raw(text)
    first = action_start(raw)
    flat: list[tuple[str, bool]] = []  # (word, in the action phrase)
    for i, token in enumerate(raw):
        pieces = _pieces(token)
        if not pieces:
            continue
        whole = "-".join(pieces)
        kept = [whole] if len(pieces) == 1 or whole in vocabulary else [p for p in pieces if p not in STOPWORDS]
        flat += [(word, i >= first) for word in kept]
    out: dict[str, float] = {}
    action: list[str] = []
    i = 0
    while i < len(flat):
        (word, in_action), joined = flat[i], None
        if i + 1 < len(flat):
            joined = f"{word}-{flat[i + 1][0]}"
        if joined in vocabulary:
            word, in_action, i = joined, in_action or flat[i + 1][1], i + 2
        else:
            i += 1
        out[word] = max(out.get(word, 0.0), action_weight if in_action else 1.0)
        if in_action:
            action.append(word)
    for pair in action_pairs(action):
        out.setdefault(pair, action_weight)
    return out


@dataclass
class Postings:
    """The inverted index: word -> documents and counts; document lengths in words."""

    vocabulary: list[str]
    offsets: torch.Tensor  # (V + 1,) int64
    doc: torch.Tensor  # (nnz,) int32: document rows
    tf: torch.Tensor  # (nnz,) float32: how often the word occurs in that document
    length: torch.Tensor  # (N,) float32

    @staticmethod
    def build(documents: list[list[str]]) -> "Postings":
        table: dict[str, list[tuple[int, int]]] = {}
        for row, doc in enumerate(documents):
            for word, count in Counter(doc).items():
                table.setdefault(word, []).append((row, count))
        vocabulary = sorted(table)
        offsets, rows, counts = [0], [], []
        for word in vocabulary:
            hits = table[word]
            rows += [r for r, _ in hits]
            counts += [c for _, c in hits]
            offsets.append(len(rows))
        return Postings(vocabulary, torch.tensor(offsets, dtype=torch.int64), torch.tensor(rows, dtype=torch.int32),
                        torch.tensor(counts, dtype=torch.float32),
                        torch.tensor([len(d) for d in documents], dtype=torch.float32))


class Bm25:
    """BM25 over a Postings index; scores for every document at once."""

    def __init__(self, postings: Postings):
        self.postings = postings
        self.n = int(postings.length.shape[0])
        self.avgdl = float(postings.length.mean()) if self.n else 1.0
        self.column = {w: i for i, w in enumerate(postings.vocabulary)}
        df = (postings.offsets[1:] - postings.offsets[:-1]).double()
        self.idf = torch.log1p((self.n - df + 0.5) / (df + 0.5)).float()
        self.unseen_idf = math.log1p((self.n + 0.5) / 0.5)
        self.norm = K1 * (1 - B + B * postings.length / max(self.avgdl, 1e-9))  # (N,)

    def query_terms(self, text: str, action_weight: float = ACTION_WEIGHT) -> dict[str, float]:
        return query_terms(text, self.column, action_weight)

    def idf_of(self, word: str) -> float:
        i = self.column.get(word)
        return float(self.idf[i]) if i is not None else self.unseen_idf

    def scores(self, query: dict[str, float]) -> torch.Tensor:
        """(N,) float32 raw BM25 scores of weighted query words."""
        out = torch.zeros(self.n, dtype=torch.float32)
        p = self.postings
        for word, weight in query.items():
            i = self.column.get(word)
            if i is None:
                continue
            lo, hi = int(p.offsets[i]), int(p.offsets[i + 1])
            rows, tf = p.doc[lo:hi].long(), p.tf[lo:hi]
            out.index_add_(0, rows, weight * self.idf[i] * tf * (K1 + 1) / (tf + self.norm[rows]))
        return out

    def ideal(self, query: dict[str, float]) -> float:
        """The score of a caption that says exactly the query's words (each once)."""
        if not query:
            return 0.0
        norm = K1 * (1 - B + B * len(query) / max(self.avgdl, 1e-9))
        return sum(weight * self.idf_of(w) * (K1 + 1) / (1 + norm) for w, weight in query.items())
