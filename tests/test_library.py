"""Reference retrieval (echoreel_core.library) on a generated toy library whose captions name the action.

The library's clips are short (4 frames of 32x32: retrieval reads captions, and short clips write
fast); the embeddings come from the shipped toy model's own text encoder.
"""

from __future__ import annotations

import copy
import json
import random
import shutil

import pytest
import torch

from echoreel_core.loading.checkpoints import load_video_model
from echoreel_core.training.data import load_entries
from echoreel_core.library import (
    IndexMismatchError, LibraryError, Searcher, TextEmbedder, load_index, update_index,
)
from echoreel_core.library import cli, index as index_module, lexical
from echoreel_core.library.embed import fingerprint
from echoreel_core.library.index import InterruptedIndexing
from echoreel_core.library.probe import probe_clip
from echoreel_core.models.text_encoders import CLIPTextConfig, CLIPTextEncoder, OpenCLIPTextConfig, OpenCLIPTextEncoder
from echoreel_core.toy.evaluate import LibraryPicker
from echoreel_core.toy.library import write_library
from echoreel_core.toy.models import TOY_MODEL_FILE, shipped
from echoreel_core.toy.world import ACTIONS, DEFAULT_SPLIT, World, caption

WORLD = World(height=32, width=32, frames=4, stride=1)
PER_ACTION = 6
DUPLICATES = 4
QUERIES_PER_ACTION = 10


@pytest.fixture(scope="module")
def model():
    return load_video_model(shipped(TOY_MODEL_FILE))


@pytest.fixture(scope="module")
def embedder(model):
    return TextEmbedder(model.text_encoder, model.tokenizer)


@pytest.fixture(scope="module")
def library(tmp_path_factory, embedder):
    folder = tmp_path_factory.mktemp("toy_library")
    write_library(folder, PER_ACTION, seed=0, world=WORLD, duplicates=DUPLICATES)
    index, report = update_index(folder, embedder)
    return folder, index, report


def captions_json(folder) -> dict[str, dict]:
    return {c["video"]: c for c in json.loads((folder / "captions.json").read_text())}


def test_the_toy_library_names_every_action_shown_by_varied_objects(library):
    folder, index, report = library
    entries = captions_json(folder)
    assert len(entries) == PER_ACTION * len(ACTIONS) + DUPLICATES
    assert report.indexed == len(entries) and report.counts() == {} and report.probed == len(entries)
    for action, spec in ACTIONS.items():
        clips = [c for c in entries.values() if c["action"] == action and not c["video"].endswith("_copy.mp4")]
        assert len(clips) == PER_ACTION
        assert all(c["caption"].endswith(spec.phrase) for c in clips)
        assert len({(c["clip"]["colour"], c["clip"]["shape"]) for c in clips}) > 1
    copies = [c for c in entries.values() if c["video"].endswith("_copy.mp4")]
    assert len(copies) == DUPLICATES and all(entries[c["video"].replace("_copy", "")]["clip"] == c["clip"] for c in copies)
    assert set(DEFAULT_SPLIT.held_out) <= {c["action"] for c in entries.values()}
    e = index.entries[0]
    assert (e.frames, e.width, e.height, e.fps) == (WORLD.file_frames, 32, 32, WORLD.file_fps)
    assert e.duration == pytest.approx(WORLD.file_frames / WORLD.file_fps)


def test_a_prompt_finds_a_clip_of_its_action_first(library, embedder):
    """"a <colour> <shape> <action>" for every action (held-out ones included), random objects:
    the first clip shows that action in >= 95% of the prompts."""
    folder, index, _ = library
    searcher = Searcher(index, embedder)
    rng = random.Random(0)
    queries = [(a, rng.choice(WORLD.colours), rng.choice(WORLD.shapes)) for a in ACTIONS for _ in range(QUERIES_PER_ACTION)]
    found = {a: 0 for a in ACTIONS}
    for action, colour, shape in queries:
        (hit,) = searcher.search(caption(colour, shape, action), top=1)
        found[action] += hit.entry.extra["action"] == action
    rate = sum(found.values()) / len(queries)
    held_out = sum(found[a] for a in DEFAULT_SPLIT.held_out) / (QUERIES_PER_ACTION * len(DEFAULT_SPLIT.held_out))
    print(f"\nrank-1 of the prompt's action: {rate:.1%} of {len(queries)} prompts ({held_out:.1%} for held-out actions)")
    assert rate >= 0.95 and held_out >= 0.95, found
    # the toy encoder's embeddings alone rank by object, never by an action it never learnt
    alone = Searcher(index, embedder, lexical_weight=0.0)
    by_embedding = sum(alone.search(caption(c, s, a), top=1)[0].entry.extra["action"] == a for a, c, s in queries)
    assert by_embedding / len(queries) < 0.8


def run_cli(monkeypatch, capsys, embedder, *argv) -> tuple[int, str, str]:
    monkeypatch.setattr(cli, "load_embedder", lambda model: embedder)
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_search_command_prints_the_best_clips_with_scores_and_why(library, embedder, monkeypatch, capsys):
    folder, _, _ = library
    code, out, err = run_cli(monkeypatch, capsys, embedder, "search", folder, "a red circle zigzagging", "--top", 3)
    assert code == 0 and err.startswith("torch threads: ")
    lines = out.splitlines()
    assert [line.split(".")[0] for line in lines[::2]] == ["1", "2", "3"]
    assert all("videos/zigzag_" in line and "lexical" in line and "embedding" in line for line in lines[::2])
    assert "matched" in lines[0] and "zigzag" in lines[0]
    code, out, _ = run_cli(monkeypatch, capsys, embedder, "search", folder, "a red circle zigzagging", "--filter=-zigzagging")
    assert code == 0 and "zigzag_" not in out


def test_pairs_command_pairs_clips_of_the_same_action_never_a_copy(library, embedder, monkeypatch, capsys, tmp_path):
    folder, index, _ = library
    out_json = tmp_path / "pairs" / "train.json"
    code, out, _ = run_cli(monkeypatch, capsys, embedder, "pairs", folder, "--out", out_json, "--per-target", 2)
    assert code == 0 and f"{2 * len(index)} pairs for {len(index)} clips" in out
    pairs = json.loads(out_json.read_text())
    entries, skips = load_entries(out_json)  # the official training JSON, as the trainer reads it
    assert len(entries) == len(pairs) == 2 * len(index) and not skips
    by_path = {(folder / v).resolve(): c for v, c in captions_json(folder).items()}
    same = 0
    for entry in entries:
        target, reference = by_path[entry.target.resolve()], by_path[entry.reference.resolve()]
        assert entry.target.resolve() != entry.reference.resolve()
        assert target["clip"] != reference["clip"]  # never the clip itself, nor a re-encoded copy of it
        same += target["action"] == reference["action"]
    with capsys.disabled():
        print(f"\npairs of the same action: {same / len(entries):.1%} of {len(entries)}")
    assert same / len(entries) >= 0.95
    # a minimum score leaves clips without a reference, counted
    code, out, _ = run_cli(monkeypatch, capsys, embedder, "pairs", folder, "--out", out_json, "--min-score", 0.99)
    kept = json.loads(out_json.read_text())
    assert code == 0 and all(p["score"] >= 0.99 for p in kept) and len(kept) < len(index)
    assert f"({len(index) - len(kept)} without a reference scoring >= 0.99" in out


def test_near_duplicates_and_shared_sources_are_never_paired(library, embedder, tmp_path):
    from echoreel_core.library.pairs import make_pairs

    folder = tmp_path / "lib"
    shutil.copytree(library[0] / "videos", folder / "videos")
    clips = [c for c in captions_json(library[0]).values() if c["action"] == "zigzag" and "_copy" not in c["video"]][:3]
    records = [{"video": c["video"], "caption": "a circle zigzagging", "source": "shot-1" if i < 2 else ""}
               for i, c in enumerate(clips)]
    (folder / "captions.json").write_text(json.dumps(records))
    index, _ = update_index(folder, embedder)
    pairs, report = make_pairs(Searcher(index, embedder), per_target=2)
    named = {(index.entries[r].video, h.entry.video) for r, h in pairs}
    assert (clips[0]["video"], clips[1]["video"]) not in named and (clips[1]["video"], clips[0]["video"]) not in named
    assert report.pairs == 4 and report.duplicates_excluded == 2


def small_library(tmp_path, source) -> tuple:
    """Three good clips, an unreadable video, an empty caption, a missing file, a sidecar caption
    and a video without any caption."""
    folder = tmp_path / "small"
    (folder / "clips").mkdir(parents=True)
    videos = sorted((source / "videos").glob("orbit_cw_00*.mp4"))[:4]
    for v in videos:
        shutil.copy(v, folder / "clips" / v.name)
    (folder / "clips" / "broken.mp4").write_bytes(b"\x00not a video" * 100)
    shutil.copy(videos[0], folder / "clips" / "silent.mp4")
    shutil.copy(videos[0], folder / "clips" / "sidecar.mp4")
    (folder / "clips" / "sidecar.txt").write_text("a red square orbiting clockwise\n")
    records = [{"video": f"clips/{v.name}", "caption": f"clip {n} orbiting clockwise"} for n, v in enumerate(videos[:3])]
    records += [{"video": "clips/broken.mp4", "caption": "a broken clip"},
                {"video": f"clips/{videos[3].name}", "caption": "  "},
                {"video": "clips/gone.mp4", "caption": "a clip that is not there"}]
    (folder / "captions.json").write_text(json.dumps(records))
    return folder, videos


def test_unreadable_files_and_empty_captions_do_not_stop_indexing(library, embedder, tmp_path):
    folder, videos = small_library(tmp_path, library[0])
    expected = {"unreadable video": 1, "empty caption": 1, "missing video": 1, "no caption": 1}
    index, report = update_index(folder, embedder)
    assert report.counts() == expected and report.indexed == len(index) == 4 and report.probed == 4
    assert load_index(folder).entries[-1].video == "clips/sidecar.mp4"
    # again: nothing read or embedded, the unreadable file counted again without decoding it, the
    # index not written again
    written = index.path.stat().st_mtime_ns
    index, report = update_index(folder, embedder, probe=lambda path: pytest.fail(f"{path} decoded again"))
    assert (report.kept, report.probed, report.embedded, report.counts()) == (4, 0, 0, expected)
    assert index.path.stat().st_mtime_ns == written
    # a changed caption is embedded again, a changed video read again, a dropped clip removed
    records = json.loads((folder / "captions.json").read_text())
    records[0]["caption"] = "clip 0 orbiting anticlockwise"
    del records[1]
    (folder / "captions.json").write_text(json.dumps(records))
    shutil.copy(videos[1], folder / "clips" / videos[2].name)
    index, report = update_index(folder, embedder)
    assert (report.kept, report.probed, report.embedded, report.removed) == (1, 1, 2, 1)
    assert len(index) == 3 and index.entries[0].caption == "clip 0 orbiting anticlockwise"


def test_interrupted_indexing_keeps_its_work_and_continues(library, embedder, tmp_path, monkeypatch):
    folder, _ = small_library(tmp_path, library[0])
    monkeypatch.setattr(index_module, "BATCH", 2)
    calls = []

    def probe(path):
        calls.append(path)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return probe_clip(path)

    with pytest.raises(InterruptedIndexing) as stop:
        update_index(folder, embedder, probe=probe)
    # broken.mp4 and the first clip made the first batch; the second clip was probed when Ctrl-C came
    assert stop.value.report.interrupted and len(load_index(folder)) == 2
    index, report = update_index(folder, embedder)
    assert (report.kept, report.probed, len(index)) == (2, 2, 4)


def other_encoder() -> TextEmbedder:
    torch.manual_seed(1)
    return TextEmbedder(OpenCLIPTextEncoder(OpenCLIPTextConfig(width=64, heads=2, layers=2, embed_dim=64,
                                                               skip_last_layers=0)), None)


def test_an_index_from_another_text_encoder_is_refused(library, embedder, monkeypatch, capsys, tmp_path):
    folder, index, _ = library
    other = other_encoder()
    other.tokenizer = embedder.tokenizer
    with pytest.raises(IndexMismatchError) as refused:
        Searcher(index, other)
    message = str(refused.value)
    assert "another text encoder" in message and embedder.info.fingerprint[:12] in message
    assert other.info.fingerprint[:12] in message and "--rebuild" in message
    with pytest.raises(IndexMismatchError):
        update_index(folder, other, save=False)
    code, _, err = run_cli(monkeypatch, capsys, other, "search", folder, "a red circle")
    assert code == 1 and "error: " in err and "another text encoder" in err
    # --rebuild starts afresh with the new encoder
    small, _ = small_library(tmp_path, folder)
    first, _ = update_index(small, embedder)
    rebuilt, report = update_index(small, other, rebuild=True)
    assert report.kept == 0 and report.embedded == len(rebuilt) == len(first) and rebuilt.encoder == other.info
    assert load_index(small).encoder == other.info
    # the same weights loaded in another dtype are the same encoder
    assert fingerprint(copy.deepcopy(embedder.encoder).half()) == embedder.info.fingerprint
    with pytest.raises(LibraryError, match="no index"):
        load_index(tmp_path)


@torch.no_grad()
def test_pooled_embeddings_are_each_familys_end_of_text_token(embedder):
    texts = ["a red circle orbiting clockwise", "a man", ""]
    tokenizer = embedder.tokenizer
    torch.manual_seed(0)
    openclip = OpenCLIPTextEncoder(OpenCLIPTextConfig(width=64, heads=2, layers=3, embed_dim=32)).eval()
    assert openclip.config.skip_last_layers == 1  # VideoCrafter's penultimate layer: pooling runs them all
    tokens = tokenizer(texts, context_length=77, pad_token=0)
    penultimate = openclip(tokens)
    x = openclip.token_embedding(tokens) + openclip.positional_embedding
    for block in openclip.transformer.resblocks:
        x = block(x)
    x = openclip.ln_final(x)[torch.arange(len(texts)), tokens.argmax(-1)] @ openclip.text_projection
    want = torch.nn.functional.normalize(x, dim=-1)
    got = TextEmbedder(openclip, tokenizer).embed(texts)
    assert got.shape == (3, 32)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(openclip(tokens), penultimate)  # the encoder skips its last block again afterwards
    clip = CLIPTextEncoder(CLIPTextConfig(width=64, heads=2, layers=2, intermediate=128)).eval()
    tokens = tokenizer(texts, context_length=77, pad_token=49407)
    want = torch.nn.functional.normalize(clip(tokens)[torch.arange(len(texts)), tokens.argmax(-1)], dim=-1)
    torch.testing.assert_close(TextEmbedder(clip, tokenizer).embed(texts), want, atol=1e-5, rtol=1e-5)
    # the toy model's encoder: unit rows, the same text the same vector however it is batched
    rows = embedder.embed(texts + [texts[0]])
    torch.testing.assert_close(rows.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(rows[0], embedder.embed(texts[:1])[0], atol=1e-6, rtol=1e-6)


def test_words_compounds_and_action_phrases():
    assert lexical.words("A red circle moving up-left") == ["red", "circl", "mov", "up-left", "mov up-left"]
    assert lexical.words("a red square bouncing up and down")[-2:] == ["bounc up", "up down"]
    assert lexical.words("orbits") == lexical.words("orbiting") == ["orbit"]
    assert lexical.words("zigzagging") == lexical.words("zigzags") == ["zigzag"]
    vocabulary = {"red", "circl", "mov", "up-left", "left", "zigzag"}
    assert lexical.query_terms("a red circle moving up left", vocabulary) == {"red": 1, "circl": 1, "mov": 2, "up-left": 2,
                                                                              "mov up-left": 2}
    assert lexical.query_terms("a red circle", vocabulary) == {"red": 1, "circl": 1}
    assert lexical.query_terms("the building", vocabulary, 3) == {"build": 1}
    postings = lexical.Postings.build([lexical.words(t) for t in ("a blue square moving left", "a red circle moving down-left")])
    bm25 = lexical.Bm25(postings)
    scores = bm25.scores(bm25.query_terms("moving left"))
    assert scores[0] > scores[1] > 0  # "left" is not matched by a part of "down-left"
    ideal = bm25.ideal(bm25.query_terms("a blue square moving left"))
    assert float(bm25.scores(bm25.query_terms("a blue square moving left"))[0]) == pytest.approx(ideal)


def test_an_index_of_older_word_rules_is_brought_up_to_date(library, embedder, tmp_path, monkeypatch):
    folder, _ = small_library(tmp_path, library[0])
    with monkeypatch.context() as m:
        m.setattr(lexical, "VERSION", "words-0")
        m.setattr(lexical, "words", lambda text: text.split())  # what older rules might have made
        update_index(folder, embedder)
        assert "clockwise" in load_index(folder).postings.vocabulary  # the file holds the old rules' words
    loaded = load_index(folder)
    assert loaded.stale_words and "clockwis" in loaded.postings.vocabulary  # rebuilt with today's rules
    assert "clockwise" not in loaded.postings.vocabulary
    index, report = update_index(folder, embedder)
    assert report.kept == len(index) and "clockwis" in index.postings.vocabulary
    assert not load_index(folder).stale_words  # written again with today's rules


def test_ties_are_ordered_by_the_seed(library, embedder):
    _, index, _ = library
    searcher = Searcher(index, embedder)
    query = index.entries[0].caption
    same = [e.video for e in index.entries if e.caption == query]
    firsts = {searcher.search(query, 1, seed=s)[0].entry.video for s in range(12)}
    assert firsts <= set(same)
    assert searcher.search(query, 3, seed=5) == searcher.search(query, 3, seed=5)
    if len(same) > 1:
        assert len(firsts) > 1


def test_the_evaluation_picks_references_by_retrieval_never_the_target(library, model):
    folder, index, _ = library
    picker = LibraryPicker(model, folder)
    target = next(e for e in index.entries if e.extra["action"] == "shrink")
    own = next(e for e in index.entries if e.extra["action"] == "shrink" and e is not target)
    picked = picker({"target_clip": target.extra["clip"], "reference_clip": own.extra["clip"]})
    assert picked.clip["action"] == "shrink" and picked.clip not in (target.extra["clip"], own.extra["clip"])
    assert picked.path.is_file() and picked.caption.endswith("shrinking")
    other = LibraryPicker(model, folder, other_objects=True)({"target_clip": target.extra["clip"],
                                                              "reference_clip": own.extra["clip"]})
    assert other.clip["action"] == "shrink"
    assert other.clip["colour"] != target.extra["clip"]["colour"] and other.clip["shape"] != target.extra["clip"]["shape"]
