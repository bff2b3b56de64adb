"""Startup validation of settings, and the worker refusing to start without them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from settings import CONSOLE, DISPATCH, WORKER, ConfigError, load_settings
from tests.conftest import ROOT

WORKER_ENV = {
    "LIVEKIT_URL": "ws://127.0.0.1:7880",
    "LIVEKIT_API_KEY": "devkey",
    "LIVEKIT_API_SECRET": "devsecret",
    "OPENAI_API_KEY": "sk-test",
    "DEEPGRAM_API_KEY": "dg-test",
    "OUTBOUND_TRUNK_ID": "ST_test",
}


def problems_for(env: dict[str, str], mode: str = WORKER) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(env, mode=mode)
    return caught.value.problems


def test_settings_complete_worker_env_loads():
    settings = load_settings(WORKER_ENV, mode=WORKER)

    assert settings.outbound_trunk_id == "ST_test"
    assert settings.default_region == "IN"
    assert settings.crm_lookup_timeout == 2.0
    assert settings.webhook_url is None
    assert "dg-test" not in repr(settings)
    assert "devsecret" not in repr(settings)


@pytest.mark.parametrize("name", sorted(WORKER_ENV))
def test_settings_missing_required_named(name):
    env = {**WORKER_ENV, name: "  "}

    problems = problems_for(env)

    assert len(problems) == 1
    assert problems[0].startswith(f"{name} is missing")


def test_settings_console_needs_only_openai_key():
    settings = load_settings({"OPENAI_API_KEY": "sk-test"}, mode=CONSOLE)

    problems = problems_for({}, mode=CONSOLE)

    assert settings.openai_api_key == "sk-test"
    assert len(problems) == 1
    assert problems[0].startswith("OPENAI_API_KEY is missing")


def test_settings_dispatch_needs_livekit_only():
    problems = problems_for({"LIVEKIT_URL": "ws://127.0.0.1:7880"}, mode=DISPATCH)

    assert [p.split(" ")[0] for p in problems] == ["LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"]


def test_settings_webhook_url_without_secret_rejected():
    problems = problems_for({**WORKER_ENV, "WEBHOOK_URL": "https://hooks.example.com/calls"})

    assert len(problems) == 1
    assert problems[0].startswith("WEBHOOK_SECRET is missing")


def test_settings_plain_http_webhook_off_loopback_rejected():
    env = {**WORKER_ENV, "WEBHOOK_URL": "http://hooks.example.com/calls", "WEBHOOK_SECRET": "s"}

    problems = problems_for(env)

    assert problems[0].startswith("WEBHOOK_URL is invalid")
    assert "WEBHOOK_ALLOW_INSECURE" in problems[0]


@pytest.mark.parametrize("url", ["http://127.0.0.1:8781/webhooks", "http://localhost/h", "http://[::1]:80/h"])
def test_settings_plain_http_loopback_webhook_allowed(url):
    settings = load_settings({**WORKER_ENV, "WEBHOOK_URL": url, "WEBHOOK_SECRET": "s"})

    assert settings.webhook_url == url.rstrip("/")
    assert settings.webhook_secret == b"s"


def test_settings_plain_http_allowed_when_insecure_set():
    env = {
        **WORKER_ENV,
        "WEBHOOK_URL": "http://hooks.example.com/calls",
        "WEBHOOK_SECRET": "s",
        "WEBHOOK_ALLOW_INSECURE": "true",
    }

    assert load_settings(env).webhook_url == "http://hooks.example.com/calls"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LIVEKIT_URL", "127.0.0.1:1"),
        ("OUTBOUND_TRUNK_ID", "trunk1"),
        ("CRM_BASE_URL", "crm.example.com"),
        ("OPENAI_BASE_URL", "ftp://127.0.0.1/v1"),
        ("CRM_LOOKUP_TIMEOUT", "abc"),
        ("CRM_TOOL_TIMEOUT", "-1"),
        ("RINGING_TIMEOUT", "0"),
        ("WEBHOOK_DRAIN_TIMEOUT", "30"),
        ("PHONE_DEFAULT_REGION", "XX"),
        ("TRANSFER_SALES", "12345"),
        ("TRANSFER_ALLOWLIST", "+919800000001, nope"),
        ("VOBIZ_SIP_DOMAIN", "sip:trunk.example.com"),
    ],
)
def test_settings_malformed_value_named(name, value):
    env = {**WORKER_ENV, "CRM_API_KEY": "k", "VOBIZ_SIP_DOMAIN": "trunk.example.com", name: value}

    problems = problems_for(env)

    assert any(p.startswith(f"{name} is invalid") for p in problems), problems


def test_settings_crm_url_without_key_rejected():
    problems = problems_for({**WORKER_ENV, "CRM_BASE_URL": "http://127.0.0.1:8780"})

    assert len(problems) == 1
    assert problems[0].startswith("CRM_API_KEY is missing")


def test_settings_transfers_need_sip_domain():
    problems = problems_for({**WORKER_ENV, "TRANSFER_BILLING": "+919800000099"})

    assert problems[0].startswith("VOBIZ_SIP_DOMAIN is missing")


def test_settings_transfer_numbers_normalised():
    env = {
        **WORKER_ENV,
        "VOBIZ_SIP_DOMAIN": "trunk.example.com",
        "TRANSFER_BILLING": "09800000099",
        "TRANSFER_ALLOWLIST": "919800000077, +91 98000-00066",
    }

    settings = load_settings(env)

    assert settings.transfer_destinations == {"billing": "+919800000099"}
    assert settings.transfer_allowlist == {"+919800000077", "+919800000066"}


def test_agent_dev_missing_setting_exits_nonzero():
    # Blank values stay blank: .env never overrides a variable that is already set.
    blank = ("OUTBOUND_TRUNK_ID", "WEBHOOK_URL", "CRM_BASE_URL", "TRANSFER_SALES", "TRANSFER_BILLING", "TRANSFER_SUPPORT")
    env = {**os.environ, **WORKER_ENV, **dict.fromkeys(blank, "")}

    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "agent.py"), "dev"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 2
    assert "OUTBOUND_TRUNK_ID is missing" in result.stderr


def test_settings_crm_key_without_url_rejected():
    problems = problems_for({**WORKER_ENV, "CRM_API_KEY": "k"})

    assert len(problems) == 1
    assert problems[0].startswith("CRM_BASE_URL is missing")


def test_settings_bad_webhook_url_and_missing_secret_both_named():
    problems = problems_for({**WORKER_ENV, "WEBHOOK_URL": "http://hooks.example.com/calls"})

    assert [problem.split(" ")[0] for problem in problems] == ["WEBHOOK_URL", "WEBHOOK_SECRET"]
