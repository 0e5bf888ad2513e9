"""Configure the test run: development mode, a var/ folder apart from `make run`.

Environment defaults are set before the settings load, and the Celery worker
processes the tests start inherit them, so both sides agree.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("DJANGO_DEV", "1")
os.environ.setdefault(
    "VOCOENG_VAR_DIR", str(Path(__file__).resolve().parent.parent / "var" / "test")
)

from .settings import *  # noqa: F403
