"""The headers a delivery keeps are read from META as dict(request.headers) has
them."""

from __future__ import annotations

from django.test import RequestFactory

from webhooks.services import KEPT_HEADERS, headers_kept


def test_the_kept_headers_are_those_of_request_headers() -> None:
    request = RequestFactory().post(
        "/webhooks/whatsapp/",
        data=b"{}",
        content_type="application/json",
        HTTP_X_HUB_SIGNATURE_256="sha256=ab",
        HTTP_USER_AGENT="facebookexternalua",
        HTTP_X_REQUEST_ID="cid-1",
        HTTP_X_VOCOENG_TENANT="acme",  # spelled X-Vocoeng-Tenant by Django
        HTTP_X_FORWARDED_FOR="10.0.0.1",
        HTTP_AUTHORIZATION="Bearer secret",
    )
    expected = {k: v for k, v in dict(request.headers).items() if k in KEPT_HEADERS}
    assert headers_kept(request.META) == expected
    assert set(expected) == {
        "Content-Type",
        "User-Agent",
        "X-Hub-Signature-256",
        "X-Request-Id",
        "X-Forwarded-For",
    }
    assert headers_kept({}) == {}
