"""Optional TensorBoard logging for the trainers.

`TBLogger(run_dir, cfg)` writes event files under `<run_dir>/tensorboard/` when the config asks
(`training.tensorboard: true`) and the `tensorboard` package is importable; otherwise every call
is a no-op, with one warning when it was asked for but the package is missing. Only the main
process should create one with `enabled=True` (pass `enabled=utils.distributed.is_main()`).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

_warned = False


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


class TBLogger:
    def __init__(self, run_dir, cfg: dict, enabled: bool = True):
        global _warned
        self.writer = None
        if not (enabled and cfg.get("training", {}).get("tensorboard", False)):
            return
        if not tensorboard_available():
            if not _warned:
                msg = "training.tensorboard is true but the tensorboard package is not installed; not logging to TensorBoard"
                warnings.warn(msg, stacklevel=2)
                print(f"warning: {msg}", flush=True)
                _warned = True
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    @property
    def active(self) -> bool:
        return self.writer is not None

    def add_scalars(self, values: dict, step: int, prefix: str = "") -> None:
        """One scalar per numeric entry (non-finite and non-numeric entries are skipped)."""
        if self.writer is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self.writer.add_scalar(prefix + k, v, step)

    def add_figure(self, name: str, fig, step: int) -> None:
        if self.writer is None:
            return
        self.writer.add_figure(name, fig, step, close=False)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
