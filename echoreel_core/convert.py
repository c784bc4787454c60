"""`python -m echoreel_core.convert IN OUT.safetensors [--part auto|model|echoreel] [--dtype fp16]`

Writes a supported official checkpoint, or one of our files, as safetensors with metadata, in the
official key names. `--part model` writes the video model (family, preset, dtype); `--part
echoreel` extracts the EchoReel weights (base family, dimensions, layer count), e.g. from the
official EchoReel `checkpoint.pt`, into the small file the ComfyUI node loads. `auto` (default)
takes EchoReel weights when the input has any, else the model. Converted files load without
pickle and load back bit-identical.
"""

from __future__ import annotations

import argparse
import sys

from .loading.checkpoints import DTYPES, ECHOREEL_KEYS, CheckpointError, load_video_model, read_state_dict, save_video_model
from .echoreel.weights import FORMAT as ECHOREEL_FORMAT
from .echoreel.weights import load_echoreel, save_echoreel
from .common.files import WriteError
from .common.threads import add_threads_argument, configure_threads


def has_echoreel_weights(path: str) -> bool:
    state, metadata = read_state_dict(path)
    return metadata.get("format") == ECHOREEL_FORMAT or any(ECHOREEL_KEYS.match(k) for k in state)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m echoreel_core.convert", description=__doc__.split("\n\n")[1])
    parser.add_argument("input", help="official .ckpt/.pt (Lightning or DeepSpeed) or .safetensors")
    parser.add_argument("output", help="the .safetensors file to write")
    parser.add_argument("--part", choices=["auto", "model", "echoreel"], default="auto")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="weight dtype (default: as stored)")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    if not args.output.endswith(".safetensors"):
        parser.error(f"the output must end in .safetensors, got {args.output}")
    print(configure_threads(args.threads), file=sys.stderr)
    dtype = DTYPES[args.dtype] if args.dtype else None
    try:
        part = args.part
        if part == "auto":
            part = "echoreel" if has_echoreel_weights(args.input) else "model"
        if part == "echoreel":
            echoreel = load_echoreel(args.input, dtype=None)
            save_echoreel(echoreel, args.output, dtype=dtype)
            what = f"EchoReel weights for {echoreel.config.describe()}"
        else:
            model = load_video_model(args.input, dtype=None)
            save_video_model(model, args.output, dtype=dtype)
            what = model.preset.name
    except (CheckpointError, WriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: {what} ({args.dtype or 'stored dtype'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
