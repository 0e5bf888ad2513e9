"""VocoEng: the Django project (settings, urls, Celery app, bus, health)."""

from __future__ import annotations

# Make the Celery app load with Django so @shared_task binds to it.
from .celery import app as celery_app

__all__ = ["celery_app"]
