"""The README's code blocks and commands, read the way a user reads them: the tests run them."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def code_blocks(language: str) -> list[str]:
    """Every fenced block of `language`, in order of appearance."""
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), re.S | re.M)


def commands(block: str) -> list[str]:
    """A bash block's command lines: comments dropped, `\\` continuations joined."""
    lines = re.sub(r"\\\n\s*", " ", block).splitlines()
    return [line.split("  #")[0].strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def setup_commands() -> tuple[str, str]:
    """The two set-up commands of "## Set-up": (the demo's, the tests')."""
    section = README.read_text().split("## Set-up", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    demo, tests = commands(block)
    return demo, tests
