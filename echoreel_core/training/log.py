"""The training log: `train_log.csv` in the output folder (step, loss, lr, grad norm, samples/s,
entries skipped) and TensorBoard's `tensorboard/` when it is installed, written by rank 0 only.

A resumed run first drops the rows past its step (a killed run may have logged steps it never
saved), so the log always matches the checkpoints.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from ..common.files import WriteError, atomic_write

log = logging.getLogger("echoreel_core.train")
COLUMNS = ["step", "loss", "lr", "grad_norm", "samples_per_s", "skipped"]


class TrainLog:
    def __init__(self, out: Path, step: int, enabled: bool):
        """`step`: where the run starts (0, or the resumed step); `enabled`: rank 0."""
        self.csv_path, self.enabled, self.writer = out / "train_log.csv", enabled, None
        if not enabled:
            return
        self._truncate(step)
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional
        except Exception:  # noqa: BLE001 - TensorBoard is not installed: CSV only
            log.info("TensorBoard is not installed; logging to %s only", self.csv_path)
        else:
            self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=step + 1)

    def _truncate(self, step: int) -> None:
        """Drop rows past the resumed step."""
        if not self.csv_path.is_file():
            return
        with open(self.csv_path, newline="") as f:
            rows = list(csv.reader(f))
        kept = rows[:1] + [r for r in rows[1:] if r and int(r[0]) <= step]

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                csv.writer(f).writerows(kept)

        if len(kept) != len(rows):
            atomic_write(self.csv_path, write)  # never a log cut in half

    def row(self, step: int, metrics: dict[str, float], skipped: int) -> None:
        if not self.enabled:
            return
        new = not self.csv_path.is_file()
        try:  # appended to, not replaced: a failure is reported as atomic_write's are
            with open(self.csv_path, "a", newline="") as f:
                writer = csv.writer(f)
                if new:
                    writer.writerow(COLUMNS)
                writer.writerow([step, f"{metrics['loss']:.6g}", f"{metrics['lr']:.6g}", f"{metrics['grad_norm']:.6g}",
                                 f"{metrics['samples_per_s']:.4g}", skipped])
        except OSError as error:
            raise WriteError(self.csv_path, error) from error
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
