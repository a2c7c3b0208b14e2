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

    @property
    def speedup(self) -> float:
        return self.default_s / self.best_s

    def summary(self) -> str:
        ok = [t for t in self.trials if "seconds" in t]
        lines = [f"tried {len(self.trials)} schedules in {self.tuning_s:.1f} s ({len(ok)} verified and timed, "
                 f"{len(self.trials) - len(ok)} skipped)",
                 f"default {self.default_s * 1e3:.2f} ms -> best {self.best_s * 1e3:.2f} ms "
                 f"({self.speedup:.1f}x; {self.flops / self.best_s / 1e9:.1f} GFLOP/s)",
                 f"best schedule: {list(self.schedule) or 'the default'}"]
        if self.stopped:
            lines.append(f"stopped early: {self.stopped}")
        return "\n".join(lines)


def progress_bar(total: int, enabled: bool) -> tqdm | None:
    """A progress bar over ``total`` candidates (None when not ``enabled``)."""
    if not enabled:
        return None
    return tqdm(total=total, desc="tuning", unit="schedule", leave=False)
