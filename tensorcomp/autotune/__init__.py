"""Schedule search (``tune``) and the tuning database."""

from .search import TuneResult, stored_schedule, tune

__all__ = ["TuneResult", "stored_schedule", "tune"]
