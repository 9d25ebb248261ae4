"""The one place that decides where ablate's files go."""

from __future__ import annotations

import os
import pathlib


def cache_dir() -> pathlib.Path:
    """Shared caches (datasets, teachers, fixed-teacher targets, compiled programs): $ABLATE_CACHE or ~/.cache/ablate."""
    return pathlib.Path(os.environ.get("ABLATE_CACHE") or pathlib.Path.home() / ".cache" / "ablate")


def store_dir() -> pathlib.Path:
    """The local run store: $ABLATE_STORE or ./runs."""
    return pathlib.Path(os.environ.get("ABLATE_STORE") or "runs")


def reports_dir() -> pathlib.Path:
    """Where reports are rendered: $ABLATE_REPORTS or ./reports."""
    return pathlib.Path(os.environ.get("ABLATE_REPORTS") or "reports")


def teachers_dir() -> pathlib.Path:
    return cache_dir() / "teachers"


def targets_dir() -> pathlib.Path:
    return cache_dir() / "targets"
