"""`python -m echoreel_core.convert IN OUT.safetensors [--dtype fp16]`

Writes any supported official checkpoint (or one of our files) as safetensors with metadata
(family, preset, dtype), in the official key names. Converted files load without pickle and
load back bit-identical.
"""

from __future__ import annotations

import argparse
import sys

from .checkpoints import DTYPES, CheckpointError, load_video_model, save_video_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m echoreel_core.convert", description=__doc__.split("\n\n")[1])
    parser.add_argument("input", help="official .ckpt/.pt (Lightning or DeepSpeed) or .safetensors")
    parser.add_argument("output", help="the .safetensors file to write")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="weight dtype (default: as stored)")
    args = parser.parse_args(argv)
    if not args.output.endswith(".safetensors"):
        parser.error(f"the output must end in .safetensors, got {args.output}")
    try:
        model = load_video_model(args.input, dtype=None)
        save_video_model(model, args.output, dtype=DTYPES[args.dtype] if args.dtype else None)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: {model.preset.name} ({args.dtype or 'stored dtype'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
