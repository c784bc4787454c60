"""Motion Match against the toy tracker: does the flow score rank motions as the tracker's motion
fidelity does, and is it near 0 for unrelated motions?

    .venv/bin/python bench/motion_match.py                        # 60 held-out pairs, 25 steps (~6 min)
    .venv/bin/python bench/motion_match.py --pairs 12 --steps 10  # a quick look
    .venv/bin/python bench/motion_match.py --cache outputs/motion_match_eval.pt   # keep the videos

Two sets of (reference, other video) pairs, each scored by Motion Match
(echoreel_core/motion/match.py) and by the tracker's motion cosine (echoreel_core/toy/metrics.py):
  held-out evaluation: the toy evaluation's pairs (python -m echoreel_core.toy.evaluate: held-out
      actions, the shipped toy model and EchoReel, the official DDIM), each reference against the
      video generated without EchoReel and the one generated with it;
  rendered clips: toy clips drawn by the world itself, each against a clip of the same action with
      another object on the same path ("copy") or at its own speed and place ("rescale"), of
      another action, and the same clip played backwards (reversed).
It prints Spearman's rank correlation between the two scores over each set, and their means per
kind of pair. --cache keeps the generated videos (and reuses them), so that other settings
(--size, --grid, --layout-weight, ...) can be compared without sampling again.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from echoreel_core.motion.match import MatchSettings, motion_match, rank_correlation  # noqa: E402
from echoreel_core.toy import metrics  # noqa: E402
from echoreel_core.toy import world as toy_world  # noqa: E402


def held_out_videos(pairs: int, steps: int, cache: Path | None) -> list[dict]:
    """Per evaluation pair: the reference, the videos without and with EchoReel, the tracker's cosines."""
    if cache is not None and cache.is_file():
        stored = torch.load(cache)
        if stored["pairs"] >= pairs and stored["steps"] == steps:
            return stored["rows"][:pairs]
    from echoreel_core.loading.checkpoints import load_video_model
    from echoreel_core.training.data import load_entries
    from echoreel_core.echoreel.weights import load_echoreel
    from echoreel_core.toy.evaluate import EvalSettings, evaluate_pair
    from echoreel_core.toy.models import TOY_ECHOREEL_FILE, TOY_MODEL_FILE, shipped

    model = load_video_model(shipped(TOY_MODEL_FILE))
    echoreel = load_echoreel(shipped(TOY_ECHOREEL_FILE))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = toy_world.write_dataset(tmp, "eval", pairs, seed=0)  # the evaluation's default set
        entries, _ = load_entries(data)
        import json

        extras = json.loads(Path(data).read_text())
        for i in range(pairs):
            started = time.perf_counter()
            result, (reference, without, with_) = evaluate_pair(model, echoreel, entries[i], extras[i],
                                                                EvalSettings(steps=steps), i, toy_world.World())
            rows.append({"action": result.action, "reference": reference, "without": without, "with": with_,
                         "tracker_without": result.without.cosine, "tracker_with": result.with_echoreel.cosine})
            print(f"  sampled {i + 1}/{pairs} {result.action} ({time.perf_counter() - started:.1f} s)",
                  file=sys.stderr, flush=True)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"pairs": pairs, "steps": steps, "rows": rows}, cache)
    return rows


def rendered_pairs(count: int, seed: int = 0) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(kind, reference, other) for `count` pairs of each kind: copy, rescale, other action, reversed."""
    rng = random.Random(f"motion-match/{seed}")
    world, actions = toy_world.World(), list(toy_world.ACTIONS)
    out = []
    for i in range(count):
        action = actions[i % len(actions)]
        for kind in ("copy", "rescale"):
            other, reference = toy_world.sample_pair(rng, action, world, kind)
            out.append((kind, toy_world.render(reference, world), toy_world.render(other, world)))
        other_action = rng.choice([a for a in actions if a != action])
        reference = toy_world.render(toy_world.sample_clip(rng, action, world), world)
        out.append(("other action", reference, toy_world.render(toy_world.sample_clip(rng, other_action, world), world)))
        out.append(("reversed", reference, reference.flip(0)))
    return out


def tracker_cosine(reference: torch.Tensor, other: torch.Tensor) -> float:
    return metrics.motion_cosine(metrics.track(other), metrics.track(reference))


def report(name: str, rows: list[tuple[str, float, float]]) -> None:
    """rows: (kind, tracker cosine, Motion Match score)."""
    tracker, score = [r[1] for r in rows], [r[2] for r in rows]
    print(f"{name}: {len(rows)} pairs, Spearman(Motion Match, tracker) = {rank_correlation(score, tracker):.3f}")
    for kind in dict.fromkeys(r[0] for r in rows):
        sel = [r for r in rows if r[0] == kind]
        mean = sum(r[2] for r in sel) / len(sel)
        spread = sum(abs(r[2]) for r in sel) / len(sel)
        print(f"  {kind:<22} {len(sel):>3} pairs: tracker {sum(r[1] for r in sel) / len(sel):+.3f}, "
              f"Motion Match {mean:+.3f} (mean |score| {spread:.3f})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=60, help="held-out evaluation pairs (default 60, 0: none)")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps (default 25, the evaluation's)")
    parser.add_argument("--rendered", type=int, default=32, help="rendered clip pairs of each kind (default 32)")
    parser.add_argument("--cache", type=Path, help="a .pt file keeping the generated videos between runs")
    defaults = MatchSettings()
    parser.add_argument("--size", type=int, default=defaults.size)
    parser.add_argument("--grid", type=int, default=defaults.grid)
    parser.add_argument("--layout-weight", type=float, default=defaults.layout_weight)
    parser.add_argument("--window", type=int, default=defaults.window)
    parser.add_argument("--levels", type=int, default=defaults.levels)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = MatchSettings(size=args.size, grid=args.grid, layout_weight=args.layout_weight, window=args.window,
                             levels=args.levels)
    print(f"settings: {settings}")
    started = time.perf_counter()
    if args.pairs > 0:
        rows = []
        videos = held_out_videos(args.pairs, args.steps, args.cache)
        for r in videos:
            for way in ("without", "with"):
                score = motion_match(r["reference"], r[way], settings).score
                rows.append((f"{way} EchoReel", r[f"tracker_{way}"], score))
        report(f"held-out evaluation ({args.pairs} pairs x without/with EchoReel, {args.steps} steps)", rows)
        for way in ("without", "with"):
            sel = [row for row in rows if row[0] == f"{way} EchoReel"]
            print(f"  Spearman over the {way} videos alone: "
                  f"{rank_correlation([s for _, _, s in sel], [t for _, t, _ in sel]):.3f}")
    if args.rendered > 0:
        rows = [(kind, tracker_cosine(ref, other), motion_match(ref, other, settings).score)
                for kind, ref, other in rendered_pairs(args.rendered)]
        report("rendered toy clips", rows)
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
