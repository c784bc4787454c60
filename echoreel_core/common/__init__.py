"""What every part of the core shares: atomic file writes (files.py), and the command lines' CPU
thread count and argument types (threads.py, cli_args.py).

May import: nothing else of the core.
"""
