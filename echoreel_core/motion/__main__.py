"""`python -m echoreel_core.motion encode|info`: see cli.py. Guarded, so importing every module
of the core (the no-comfy check does) runs nothing."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
