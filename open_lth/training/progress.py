"""What a run shows while it trains.

Where standard output is a terminal, tqdm's bar. Elsewhere (Slurm, nohup, a notebook's
`!python`) a bar is either nothing (tqdm off) or carriage returns in a log file, so one
plain line per evaluation instead: a log then shows that the run is alive, how it is
doing and when it ends. `--quiet` silences both; under torchrun only rank 0 shows.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from open_lth.foundations import distributed


class Progress:
    def __init__(self, start: int, end: int, quiet: bool) -> None:
        """`start`: the iteration the loop starts (or resumes) at; `end`: its last."""
        shown = not quiet and distributed.is_primary()
        terminal = sys.stdout.isatty()
        self.lines = shown and not terminal
        self.bar = tqdm(
            total=end,
            initial=start,
            disable=not (shown and terminal),
            unit="it",
            dynamic_ncols=True,
            file=sys.stdout,
        )
        self.start, self.end = start, end
        self.started = time.perf_counter()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def step(self) -> None:
        self.bar.update(1)

    def evaluated(self, iteration: int, train_losses: list[float], accuracies: list[float]) -> None:
        """The evaluation at `iteration`: each live copy's mean training loss since the
        last one (none before the first step) and its test accuracy."""
        if not accuracies:
            return
        loss = sum(train_losses) / len(train_losses) if train_losses else None
        accuracy = sum(accuracies) / len(accuracies)
        if not self.lines:
            self.bar.set_postfix(loss=loss, test_acc=accuracy)
            return
        fields = [] if loss is None else [f"train loss {loss:.4f}"]
        if len(accuracies) == 1:
            fields.append(f"test accuracy {accuracy:.4f}")
        else:  # a pack: the mean, and the spread that says whether one run lags
            fields.append(
                f"test accuracy {accuracy:.4f} (mean of {len(accuracies)} runs, "
                f"{min(accuracies):.4f} to {max(accuracies):.4f})"
            )
        done = iteration - self.start
        seconds = time.perf_counter() - self.started  # evaluations included: a true ETA
        if done > 0 and seconds > 0:
            rate = done / seconds
            left = tqdm.format_interval((self.end - iteration) / rate)
            fields += [f"{rate:.1f} it/s", f"{left} left"]
        print(f"iteration {iteration}/{self.end}: {', '.join(fields)}", flush=True)
