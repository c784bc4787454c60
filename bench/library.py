"""Reference retrieval at scale: index and query time for N synthetic captions on the CPU.

    python bench/library.py                     # 10,000 captions, the shipped toy model's text encoder
    python bench/library.py --captions 100000 --queries 50
    python bench/library.py --model videocrafter2.safetensors   # a real encoder (OpenCLIP-H: much slower to embed)
    python bench/library.py --full-size-prompts 10              # also: prompt embedding by full-size towers

The captions are drawn from a grammar ("a <adjective> <subject> <action phrase> <place>": 40
subjects, 120 actions, 30 places, 20 adjectives), one placeholder file per caption; the index
is built by `update_index` with the videos' probe replaced by a constant (the captions are what
is measured; the per-video probe cost is measured apart, on toy clips written for it, and
scales linearly). Reported: the full build (caption scan, embedding, BM25 postings, the atomic
write), an up-to-date re-run (a stat per file), loading the index, and per query (p50 / p95 /
max over --queries prompts, after one warm-up): embedding the prompt, scoring and ranking
(BM25 + one matrix-vector product + top-k), the total. The target: a query under 100 ms.
--full-size-prompts N also times embedding N prompts with full-size OpenCLIP ViT-H/14 and CLIP
ViT-L/14 text towers (random weights: the cost is what is measured), what a query costs on top
of the scoring with a real VideoCrafter or LVDM checkpoint.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from echoreel_core.library import Searcher, load_index, update_index
from echoreel_core.library.cli import load_embedder
from echoreel_core.library.probe import SIGNATURE_SIZE, Facts, probe_clip
from echoreel_core.common.threads import add_threads_argument, configure_threads

SUBJECTS = """man woman child girl boy dog cat horse bird eagle dolphin fish car bus train bicycle skateboarder surfer
dancer gymnast runner swimmer skier snowboarder chef drummer guitarist violinist climber boxer wrestler juggler
robot drone boat plane crowd couple soldier farmer""".split()
VERBS = """running walking jumping dancing swimming climbing spinning rolling flipping sliding skating surfing
skiing riding juggling boxing kicking punching throwing catching diving falling flying waving clapping
crawling hopping stretching bowing turning twirling""".split()
OBJECTS = ["a ball", "a rope", "the stairs", "a wave", "a bike", "a horse", "a kite", "the drums"]
PLACES = """on the beach|in a park|in the snow|on a stage|in the city|in a gym|at night|in slow motion|under water|
in the rain|on a road|in a field|in the mountains|in a forest|at sunset|indoors|on a bridge|in a kitchen|in a studio|
on ice|in the desert|at a stadium|on a rooftop|by a lake|in traffic|in a garden|on a boat|in a classroom|in a cave|
at a party""".replace("\n", "").split("|")
ADJECTIVES = """young old tall small happy tired red blue black white brown green little big fast slow strong
smiling lone professional""".split()


def actions() -> list[str]:
    out = [v for v in VERBS] + [f"{v} {o}" for v in VERBS[:11] for o in OBJECTS]
    return out[:120]


def captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    acts = actions()
    return [f"a {rng.choice(ADJECTIVES)} {rng.choice(SUBJECTS)} {rng.choice(acts)} {rng.choice(PLACES)}"
            for _ in range(n)]


def stub_probe(path) -> Facts:
    return Facts(61, 32.0, 64, 64, torch.zeros(SIGNATURE_SIZE))


def percentiles(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    return f"{statistics.median(ms):7.2f} / {ms[int(0.95 * (len(ms) - 1))]:7.2f} / {ms[-1]:7.2f}"


def probe_cost(clips: int) -> float:
    """Seconds per toy clip (64x64, 61 frames, mp4) of probe_clip."""
    from echoreel_core.toy.library import write_library

    with tempfile.TemporaryDirectory() as tmp:
        write_library(tmp, 1, seed=0)
        videos = sorted(Path(tmp, "videos").glob("*.mp4"))[:clips]
        start = time.perf_counter()
        for v in videos:
            probe_clip(v)
        return (time.perf_counter() - start) / len(videos)


def full_size_prompt_cost(prompts: list[str], tokenizer) -> dict[str, list[float]]:
    """Seconds per prompt embedding with each full-size text tower (random weights)."""
    from echoreel_core.library import TextEmbedder
    from echoreel_core.models.text_encoders import CLIPTextConfig, CLIPTextEncoder, OpenCLIPTextConfig, OpenCLIPTextEncoder

    out = {}
    for name, build in (("OpenCLIP ViT-H/14", lambda: OpenCLIPTextEncoder(OpenCLIPTextConfig())),
                        ("CLIP ViT-L/14", lambda: CLIPTextEncoder(CLIPTextConfig()))):
        embedder = TextEmbedder(build().eval(), tokenizer)
        embedder.embed(prompts[:1])  # warm-up
        times = []
        for prompt in prompts:
            start = time.perf_counter()
            embedder.embed([prompt])
            times.append(time.perf_counter() - start)
        out[name] = times
        del embedder
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--model", help="a video model whose text encoder embeds (default: the shipped toy model)")
    parser.add_argument("--probe-clips", type=int, default=16, help="toy clips over which the video probe is timed")
    parser.add_argument("--full-size-prompts", type=int, default=0,
                        help="also time this many prompt embeddings with full-size OpenCLIP-H and CLIP-L towers")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    print(configure_threads(args.threads))
    embedder = load_embedder(args.model)
    print(f"text encoder: {embedder.info.describe()}")
    texts = captions(args.captions)
    rng = random.Random(1)
    acts = actions()
    prompts = [f"a {rng.choice(SUBJECTS)} {rng.choice(acts)}" for _ in range(args.queries)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "v").mkdir()
        records = []
        for i, text in enumerate(texts):
            (folder / "v" / f"{i:06d}.mp4").touch()
            records.append({"video": f"v/{i:06d}.mp4", "caption": text})
        (folder / "captions.json").write_text(json.dumps(records))

        start = time.perf_counter()
        index, report = update_index(folder, embedder, probe=stub_probe)
        build = time.perf_counter() - start
        start = time.perf_counter()
        update_index(folder, embedder, probe=stub_probe)
        rerun = time.perf_counter() - start
        start = time.perf_counter()
        index = load_index(folder)
        load = time.perf_counter() - start
        size = index.path.stat().st_size
        searcher = Searcher(index, embedder)
        searcher.search(prompts[0], args.top)  # warm-up
        embed_t, score_t, total_t = [], [], []
        for prompt in prompts:
            t0 = time.perf_counter()
            vector = embedder.embed([prompt])[0]
            t1 = time.perf_counter()
            score, *_ = searcher.scores(prompt, vector)
            searcher.rank(score, args.top, 0, None)
            t2 = time.perf_counter()
            searcher.search(prompt, args.top)
            t3 = time.perf_counter()
            embed_t.append(t1 - t0)
            score_t.append(t2 - t1)
            total_t.append(t3 - t2)
    per_probe = probe_cost(args.probe_clips)
    unique = len(set(texts))
    print(f"\n{args.captions} captions ({unique} distinct), {len(index.postings.vocabulary)} index words, "
          f"embeddings {tuple(index.embeddings.shape)}, index file {size / 2**20:.1f} MiB")
    print(f"build (scan, embed, BM25, write): {build:7.2f} s   ({report.embedded} captions embedded)")
    print(f"re-run, nothing changed:          {rerun:7.2f} s")
    print(f"load the index:                   {load:7.2f} s")
    print(f"video probe per toy clip:         {per_probe * 1000:7.1f} ms (adds {per_probe * args.captions:.0f} s "
          f"to a first build of {args.captions} real videos)")
    print(f"\nper query, ms (p50 / p95 / max over {len(prompts)} prompts, top {args.top}):")
    print(f"  embed the prompt:   {percentiles(embed_t)}")
    print(f"  score and rank:     {percentiles(score_t)}")
    print(f"  search (total):     {percentiles(total_t)}")
    worst = max(total_t) * 1000
    print(f"\nquery under 100 ms: {'yes' if worst < 100 else 'NO'} (slowest {worst:.1f} ms)")
    if args.full_size_prompts:
        print(f"\nprompt embedding by full-size text towers (random weights), ms (p50 / p95 / max over "
              f"{args.full_size_prompts} prompts):")
        for name, times in full_size_prompt_cost(prompts[:args.full_size_prompts], embedder.tokenizer).items():
            print(f"  {name:<18}  {percentiles(times)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
