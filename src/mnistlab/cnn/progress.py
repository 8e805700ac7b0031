"""The training progress bar: steps done of the whole run, and the epoch's running loss and
accuracy (on rank 0 alone in a distributed job)."""

from __future__ import annotations


class ProgressBar:
    def __init__(self, total_steps: int, done_steps: int, epochs: int):
        from tqdm.auto import tqdm

        self.epochs = epochs
        self._bar = tqdm(total=total_steps, initial=done_steps, unit="step", dynamic_ncols=True, leave=True)

    def show(self, steps: int, epoch: int, loss: float, accuracy: float) -> None:
        """``steps`` done in all; ``epoch`` counted from 1."""
        self._bar.update(steps - self._bar.n)
        self._bar.set_postfix_str(
            f"epoch {epoch}/{self.epochs} loss {loss:.4f} acc {accuracy:.4f}", refresh=False
        )

    def close(self) -> None:
        self._bar.close()
