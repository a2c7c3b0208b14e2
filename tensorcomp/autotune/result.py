"""What a search returns (``TuneResult``), and the progress bar it shows while it runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from tqdm import tqdm

from ..schedule.records import Record


@dataclass
class TuneResult:
    """What ``tc.tune`` found: the best schedule, its time, and every trial."""

    schedule: tuple[Record, ...]
    best_s: float
    default_s: float
    flops: float
    tuning_s: float
    trials: list[dict] = field(default_factory=list)
    stopped: str = ""  # why the search ended before the budget did, if it did
    stored: bool = False  # the result was already in the database: nothing was searched
    unsaved: bool = False  # the database could not be written: the result holds for this process only

    @property
    def speedup(self) -> float:
        return self.default_s / self.best_s

    def summary(self) -> str:
        ok = [t for t in self.trials if "seconds" in t]
        head = (f"stored result, not searched again (retune=True / --retune searches again); when it was tuned: "
                f"{len(self.trials)} schedules, {len(ok)} verified and timed") if self.stored else (
            f"tried {len(self.trials)} schedules in {self.tuning_s:.1f} s ({len(ok)} verified and timed, "
            f"{len(self.trials) - len(ok)} skipped)")
        lines = [head,
                 f"default {self.default_s * 1e3:.2f} ms -> best {self.best_s * 1e3:.2f} ms "
                 f"({self.speedup:.1f}x; {self.flops / self.best_s / 1e9:.1f} GFLOP/s)",
                 f"best schedule: {list(self.schedule) or 'the default'}"]
        if self.stopped:
            lines.append(f"stopped early: {self.stopped}")
        if self.unsaved:
            lines.append("not saved: the tuning database could not be written (this process uses the result)")
        return "\n".join(lines)


def progress_bar(total: int, enabled: bool) -> tqdm | None:
    """A progress bar over ``total`` candidates (None when not ``enabled``)."""
    if not enabled:
        return None
    return tqdm(total=total, desc="tuning", unit="schedule", leave=False)
