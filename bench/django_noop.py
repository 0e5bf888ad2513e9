"""Answer POST /webhooks/whatsapp/ with 200 through Django's full stack, no I/O.

The floor for bench/webhooks: the project's settings and middleware, a URL
resolved to a view that only returns 200. The gap between this and
``bench/bare_wsgi.py`` is the framework; the gap between this and the real
webhook is what the webhook itself costs.
"""

from __future__ import annotations

import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vocoeng.settings")


@csrf_exempt
def noop(request: HttpRequest) -> HttpResponse:
    """Read the body and return 200."""
    request.body  # noqa: B018 - drain it as the webhook does
    return HttpResponse("ok", content_type="text/plain")


urlpatterns = [path("webhooks/whatsapp/", noop)]


app = get_wsgi_application()
settings.ROOT_URLCONF = __name__  # the project's settings, this URLconf
