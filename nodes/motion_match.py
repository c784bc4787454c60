"""(being written for issue 21: motion as an asset)"""

from __future__ import annotations

NODES: list = []
