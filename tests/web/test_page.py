"""The web page, end to end: a real Chromium, the real server process and the real voice."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.support import decode_wav, plausible_duration
from tests.web.conftest import PageSession, missing_browser_reason

if (_reason := missing_browser_reason()) is not None:
    pytest.skip(_reason, allow_module_level=True)

from playwright.sync_api import expect  # noqa: E402

SYNTH_TIMEOUT_MS = 60_000  # synthesis plus playing the audio, on a busy two-core machine
MEASURE = re.compile(r"^([\d.]+)\s*(ms|s|毫秒|秒)$")


def seconds(shown: str) -> float:
    """'323 ms' / '1.24 s' -> seconds."""
    match = MEASURE.match(shown.strip())
    assert match, f"not a duration: {shown!r}"
    value = float(match.group(1))
    return value / 1000 if match.group(2) in ("ms", "毫秒") else value


def synthesize(session: PageSession, text: str) -> Any:
    """Type the text, click Synthesize; returns the /api/tts response."""
    page = session.page
    page.fill("#text", text)
    with page.expect_response("**/api/tts") as response:
        page.click("#synthesize")
    return response.value


def wait_until_played(session: PageSession) -> None:
    """The last scheduled audio buffer (or the <audio> element) reached its end."""
    expect(session.page.locator("#result")).to_have_attribute(
        "data-playback", "ended", timeout=SYNTH_TIMEOUT_MS
    )


def voices_loaded(session: PageSession) -> None:
    expect(session.page.locator("#voice optgroup")).not_to_have_count(0)


def test_streamed_synthesis_plays_shows_timings_and_then_a_cache_hit(shared_server, open_page):
    session = open_page(shared_server.url)
    page = session.page
    voices_loaded(session)
    group = page.locator("#voice optgroup").first
    assert "en_US" in group.get_attribute("label")
    assert "piper" in group.locator("option[value=joe]").inner_text()
    assert "medium" in group.locator("option[value=joe]").inner_text()
    page.select_option("#voice", "joe")
    expect(page.locator("#stream")).to_be_checked()

    text = "Hello from the web page test. It plays while it streams."
    response = synthesize(session, text)
    assert response.status == 200
    assert response.request.post_data_json == {
        "text": text, "voice": "joe", "speed": 1, "format": "pcm", "stream": True
    }
    assert response.headers["transfer-encoding"] == "chunked"
    wait_until_played(session)

    first = seconds(page.inner_text("#m-first"))
    total = seconds(page.inner_text("#m-total"))
    duration = seconds(page.inner_text("#m-duration"))
    assert 0 < first <= total
    assert plausible_duration(text, duration)
    expect(page.locator("#m-cache")).to_have_text("miss")
    expect(page.locator("#m-engine")).to_have_text("piper")
    expect(page.locator("#m-voice")).to_have_text("joe")
    expect(page.locator("#status")).to_contain_text("Done")
    # After the stream, the same audio is a WAV in a plain <audio> element for replay.
    page.wait_for_function("() => document.getElementById('player').duration > 0")
    replay_s = page.evaluate("() => document.getElementById('player').duration")
    assert replay_s == pytest.approx(duration, abs=0.02)

    with page.expect_download() as download_info:
        page.click("#download")
    download = download_info.value
    assert re.fullmatch(r"tts-joe-\d{8}-\d{6}\.wav", download.suggested_filename)
    samples, rate, _ = decode_wav(Path(download.path()).read_bytes())
    assert rate == 22050
    assert len(samples) / rate == pytest.approx(duration, abs=0.01)

    response = synthesize(session, text)
    assert response.status == 200
    expect(page.locator("#m-cache")).to_have_text("hit-l1")
    expect(page.locator("#history li")).to_have_count(2)
    wait_until_played(session)
    assert seconds(page.inner_text("#m-first")) > 0
    history = page.locator("#history li")
    expect(history.nth(0)).to_contain_text("hit-l1")
    expect(history.nth(1)).to_contain_text("miss")
    session.assert_clean()


def test_whole_file_in_the_chosen_format_plays_in_the_audio_element(shared_server, open_page):
    session = open_page(shared_server.url)
    page = session.page
    voices_loaded(session)
    page.uncheck("#stream")
    expect(page.locator("#format")).to_be_enabled()
    page.select_option("#format", "wav")
    response = synthesize(session, "This one arrives as a whole file.")
    assert response.request.post_data_json["stream"] is False
    assert response.headers["content-type"] == "audio/wav"
    wait_until_played(session)
    duration = float(response.headers["x-audio-duration"])
    assert seconds(page.inner_text("#m-duration")) == pytest.approx(duration, abs=0.01)
    played = page.evaluate("() => document.getElementById('player').currentTime")
    assert played == pytest.approx(duration, abs=0.05)
    session.assert_clean()


def test_markup_in_the_text_stays_text(shared_server, open_page):
    session = open_page(shared_server.url)
    page = session.page
    voices_loaded(session)
    text = "<img src=x onerror=alert(1)>"
    assert synthesize(session, text).status == 200
    expect(page.locator("#history li")).to_have_count(1)
    expect(page.locator("#history .history-text")).to_have_text(text)
    expect(page.locator("#result-text")).to_have_text(text)
    assert page.locator("#history img, #result img").count() == 0
    assert page.locator("img").count() == 1  # the logo, nothing else
    wait_until_played(session)
    assert session.dialogs == []
    session.assert_clean()


def test_rate_limited_request_shows_the_retry_time(running_server, open_page):
    # One request in the burst, refilled every 100 s: the voice list spends it.
    server = running_server({"limits": {"tiers": {"anonymous": {"requests_per_s": 0.01, "burst": 1}}}})
    session = open_page(server.url)
    page = session.page
    voices_loaded(session)
    response = synthesize(session, "This request is over the limit.")
    assert response.status == 429
    retry = int(response.headers["retry-after"])
    assert retry > 1
    expect(page.locator("#error-text")).to_have_text(f"Too many requests. Try again in {retry} s.")
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error-detail")).to_contain_text("rate_limited")
    expect(page.locator("#synthesize")).to_be_enabled()
    expect(page.locator("#history li")).to_have_count(0)
    session.assert_clean(expected_statuses=frozenset({429}))


def test_token_is_asked_for_kept_in_session_storage_and_sent(running_server, open_page):
    token = "web-page-test-token-0123456789"
    digest = hashlib.sha256(token.encode()).hexdigest()
    server = running_server({"auth": {"tokens": [{"name": "t", "tier": "standard", "sha256": digest}]}})
    session = open_page(server.url)
    page = session.page
    # Without a token the voice list is refused and the page asks for one.
    expect(page.locator("#auth-panel")).to_be_visible()
    expect(page.locator("#error-text")).to_contain_text("needs an access token")
    expect(page.locator("#token")).to_have_attribute("type", "password")
    response = synthesize(session, "Tokens keep this server private.")
    assert response.status == 401
    expect(page.locator("#token")).to_be_focused()

    page.fill("#token", token)
    voices_loaded(session)
    expect(page.locator("#error")).not_to_be_visible()
    response = synthesize(session, "Tokens keep this server private.")
    assert response.status == 200
    assert response.request.headers["authorization"] == f"Bearer {token}"
    wait_until_played(session)
    expect(page.locator("#m-cache")).to_have_text("miss")

    assert page.evaluate("() => sessionStorage.getItem('tts.token')") == token
    assert token not in page.evaluate("() => JSON.stringify(localStorage)")
    assert token not in page.url
    # A reload in the same tab keeps the token; nothing needs typing again.
    page.reload()
    voices_loaded(session)
    expect(page.locator("#token")).to_have_value(token)
    assert token not in page.url
    assert not any(token in message for message in session.console_errors)
    session.assert_clean(expected_statuses=frozenset({401}))


def test_language_switch_to_chinese_and_back(shared_server, open_page):
    session = open_page(shared_server.url)
    page = session.page
    voices_loaded(session)
    expect(page.locator(".tagline")).to_have_text("Text to speech")
    expect(page.locator("#synthesize")).to_have_text("Synthesize")
    expect(page.locator("label[for=text]")).to_have_text("Text to speak")

    page.click("#lang-toggle")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(page.locator(".tagline")).to_have_text("文本转语音")
    expect(page.locator("#synthesize")).to_have_text("合成")
    expect(page.locator("label[for=text]")).to_have_text("要朗读的文本")
    expect(page.locator("#lang-toggle")).to_have_text("English")
    assert page.evaluate("() => localStorage.getItem('tts.lang')") == "zh"
    page.reload()  # the choice is remembered
    expect(page.locator("#synthesize")).to_have_text("合成")

    page.click("#lang-toggle")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.locator(".tagline")).to_have_text("Text to speech")
    expect(page.locator("#synthesize")).to_have_text("Synthesize")
    expect(page.locator("#lang-toggle")).to_have_text("中文")

    # With nothing stored, the browser's language decides.
    chinese = open_page(shared_server.url, locale="zh-CN")
    expect(chinese.page.locator("#synthesize")).to_have_text("合成")
    session.assert_clean()
    chinese.assert_clean()


def test_degradation_banner_disables_synthesis(shared_server, open_page):
    """Browser-side behaviour only: the server's degradation ladder cannot be forced yet, so
    /ui/status is intercepted with page.route to report preview_enabled false, then true."""
    session = open_page(shared_server.url, goto=False)
    page = session.page
    degraded = {"on": True}

    def status(route: Any) -> None:
        body = route.fetch().json()
        if degraded["on"]:
            body.update(preview_enabled=False, degradation_level=2)
        route.fulfill(json=body)

    page.route("**/ui/status", status)
    page.goto(shared_server.url + "/")
    banner = page.locator("#degraded-banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Preview is off under high load; the API keeps working.")
    expect(page.locator("#synthesize")).to_be_disabled()
    expect(page.locator("#conn")).to_have_attribute("data-state", "degraded")
    page.fill("#text", "Ctrl and Enter must not get around the banner.")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#history li")).to_have_count(0)

    degraded["on"] = False  # the next poll (every 5 s) lifts it
    expect(banner).to_be_hidden(timeout=15_000)
    expect(page.locator("#synthesize")).to_be_enabled()
    session.assert_clean()


def test_the_violation_recorder_catches_an_inline_style(shared_server, open_page):
    """The CSP checks above would catch a real violation: provoke one on purpose."""
    session = open_page(shared_server.url)
    session.page.evaluate(
        "() => { const d = document.createElement('div');"
        " d.setAttribute('style', 'color: red'); document.body.append(d); }"
    )
    session.page.wait_for_function("() => window.__cspViolations.length > 0")
    assert any("style-src" in v for v in session.csp_violations())
    with pytest.raises(AssertionError):
        session.assert_clean()


def test_screenshot_of_a_finished_synthesis(shared_server, open_page, tmp_path):
    """A picture of the page after two syntheses, kept as an artifact (and for the README)."""
    session = open_page(shared_server.url)
    page = session.page
    voices_loaded(session)
    synthesize(session, "Welcome to the text to speech server.")
    expect(page.locator("#history li")).to_have_count(1)
    response = synthesize(
        session, "Good morning! This page reads your text aloud as it streams, sentence by sentence."
    )
    assert response.status == 200
    wait_until_played(session)
    expect(page.locator("#history li")).to_have_count(2)
    page.locator("#text").blur()
    page.mouse.move(0, 0)
    path = tmp_path / "screenshot.png"
    page.screenshot(path=str(path), full_page=True)
    png = path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    width = int.from_bytes(png[16:20], "big")
    assert width == 1280
    target = os.environ.get("TTS_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(target) / "screenshot.png")
    session.assert_clean()


def test_status_payload_matches_what_the_page_expects(shared_server):
    """The page reads these /ui/status fields; fail here first if the contract moves."""
    import urllib.request

    with urllib.request.urlopen(shared_server.url + "/ui/status", timeout=5) as response:
        status = json.load(response)
    assert {"auth_required", "max_text_chars", "min_speed", "max_speed", "formats",
            "degradation_level", "preview_enabled"} <= set(status)
    assert {"wav", "pcm"} <= set(status["formats"])
