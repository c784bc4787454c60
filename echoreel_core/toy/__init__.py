"""The toy world: synthetic coloured-shape videos (`world`) and the measures that judge motion
transfer on them (`metrics`). See docs/toy-world.md for the specification.

May import: any part of the core and its entry points (the toy sits on top).
"""
