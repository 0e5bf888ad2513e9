"""Channels and spend in the admin: secrets write-only, spend per tenant and month."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model

from conversations.models import AICall
from vocoeng.models import Channel, Tenant

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def staff(client):
    user = get_user_model().objects.create_superuser("admin", "a@example.com", "pw")
    client.force_login(user)
    return client


def _form(tenant: Tenant, **overrides: str) -> dict[str, str]:
    data = {
        "tenant": str(tenant.pk),
        "name": "Support line",
        "kind": "whatsapp",
        "is_active": "on",
        "phone_number_id": "555000111",
        "access_token": "EAAG-live-token",
        "app_secret": "app-secret-123",
        "verify_token": "",
        "aisensy_webhook_secret": "",
        "aisensy_api_key": "",
        "api_base": "",
        "system_prompt": "Be brief.",
        "providers": '["openai"]',
        "provider_models": '{"openai": "gpt-4o-mini"}',
        "history_length": "",
        "tools": '["current_time"]',
        "rate_limit": "10/min",
    }
    data.update(overrides)
    return data


def test_secrets_are_taken_once_and_never_shown_again(staff) -> None:
    tenant = Tenant.objects.create(slug="acme", name="Acme")
    added = staff.post("/admin/vocoeng/channel/add/", _form(tenant))
    assert added.status_code == 302, added.content[:2000]
    channel = Channel.objects.get()
    assert channel.app_secret == "app-secret-123"

    page = staff.get(f"/admin/vocoeng/channel/{channel.pk}/change/").content.decode()
    assert "app-secret-123" not in page and "EAAG-live-token" not in page
    assert "A value is stored" in page

    # Saving with the secret inputs empty keeps them; a new value replaces one.
    changed = staff.post(
        f"/admin/vocoeng/channel/{channel.pk}/change/",
        _form(tenant, access_token="", app_secret="rotated-secret", name="Renamed"),
    )
    assert changed.status_code == 302, changed.content[:2000]
    channel.refresh_from_db()
    assert channel.name == "Renamed"
    assert channel.access_token == "EAAG-live-token"
    assert channel.app_secret == "rotated-secret"

    cleared = staff.post(
        f"/admin/vocoeng/channel/{channel.pk}/change/",
        _form(tenant, access_token="", app_secret="", access_token__clear="on"),
    )
    assert cleared.status_code == 302
    channel.refresh_from_db()
    assert channel.access_token == "" and channel.app_secret == "rotated-secret"


def test_invalid_agent_settings_are_form_errors_not_500s(staff) -> None:
    tenant = Tenant.objects.create(slug="acme", name="Acme")
    response = staff.post(
        "/admin/vocoeng/channel/add/",
        _form(tenant, providers='["gpt-5"]', rate_limit="lots", phone_number_id=""),
    )
    assert response.status_code == 200
    page = response.content.decode()
    assert "A list of" in page and "20/min" in page and "number id" in page
    assert not Channel.objects.exists()


def test_spend_per_tenant_per_month_per_model(staff) -> None:
    acme = Tenant.objects.create(slug="acme", name="Acme", monthly_budget=5)
    for model, cost in (
        ("gpt-4o-mini", "0.25"),
        ("gpt-4o-mini", "0.50"),
        ("claude", "1"),
    ):
        AICall.objects.create(
            tenant=acme,
            provider="openai",
            model=model,
            attempt=1,
            status="succeeded",
            total_tokens=100,
            cost=Decimal(cost),
        )
    page = staff.get("/admin/conversations/aicall/spend/").content.decode()
    assert "acme" in page and "gpt-4o-mini" in page and "0.750000" in page
    assert "claude" in page and "5.00" in page
    tenant_page = staff.get(f"/admin/vocoeng/tenant/{acme.pk}/change/").content
    assert b"1.750000" in tenant_page  # spend this month
    assert (
        b"Spend per tenant and month"
        in staff.get("/admin/conversations/aicall/").content
    )


def test_rotate_secrets_re_encrypts_with_the_new_first_key(settings) -> None:
    from cryptography.fernet import Fernet
    from django.core.management import call_command
    from django.db import connection

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEY = [old]
    tenant = Tenant.objects.create(slug="acme", name="Acme")
    channel = Channel.objects.create(
        tenant=tenant, name="x", kind="api", access_token="tok-1"
    )
    settings.FIELD_ENCRYPTION_KEY = [new, old]
    call_command("rotate_secrets", stdout=open("/dev/null", "w"))
    settings.FIELD_ENCRYPTION_KEY = [new]  # the old key is gone
    assert Channel.objects.get(pk=channel.pk).access_token == "tok-1"
    with connection.cursor() as cursor:
        cursor.execute("SELECT access_token FROM vocoeng_channel")
        (raw,) = cursor.fetchone()
    assert Fernet(new.encode()).decrypt(raw.encode()) == b"tok-1"
