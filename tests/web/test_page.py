"""The web page, end to end: a real Chromium, the real server process and the real voice."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support import decode_wav, plausible_duration
from tests.web.conftest import PageSession, missing_browser_reason
from tests.web.proxy import BreakingProxy

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


def server_status(server: Any) -> dict[str, Any]:
    with urllib.request.urlopen(server.url + "/ui/status", timeout=5) as response:
        return json.load(response)


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
        "text": text,
        "voice": "joe",
        "speed": 1,
        "format": "pcm",
        "stream": True,
        "timestamps": "words",
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
    assert seconds(page.inner_text("#m-first")) > 0
    history = page.locator("#history li")
    expect(history.nth(0)).to_contain_text("hit-l1")
    expect(history.nth(1)).to_contain_text("miss")
    session.assert_clean()


def test_whole_files_in_the_server_formats_play_in_the_audio_element(shared_server, open_page):
    session = open_page(shared_server.url)
    page = session.page
    voices_loaded(session)
    formats = server_status(shared_server)["formats"]
    expect(page.locator("#format option")).to_have_count(len(formats))
    assert page.eval_on_selector_all("#format option", "els => els.map(e => e.value)") == formats
    expect(page.locator("#format")).to_be_disabled()  # streaming plays PCM
    page.uncheck("#stream")
    expect(page.locator("#format")).to_be_enabled()
    compressed = [f for f in ("mp3", "opus", "aac", "flac") if f in formats][:1]
    for index, audio_format in enumerate(["wav", *compressed]):
        page.select_option("#format", audio_format)
        response = synthesize(session, f"Whole file number {index + 1}.")
        assert response.request.post_data_json["stream"] is False
        assert response.request.post_data_json["format"] == audio_format
        wait_until_played(session)
        duration = float(response.headers["x-audio-duration"])
        assert seconds(page.inner_text("#m-duration")) == pytest.approx(duration, abs=0.01)
        played = page.evaluate("() => document.getElementById('player').currentTime")
        assert played == pytest.approx(duration, abs=0.1)
        name = page.get_attribute("#download", "download")
        assert re.fullmatch(rf"tts-joe-\d{{8}}-\d{{6}}\.{audio_format}", name)
    session.assert_clean()


def test_markup_in_the_text_stays_text(shared_server, open_page):
    session = open_page(shared_server.url)
    page = session.page
    voices_loaded(session)
    text = "<img src=x onerror=alert(1)>"
    page.fill("#text", text)
    with page.expect_response("**/api/tts") as response:
        page.keyboard.press("Control+Enter")
    assert response.value.status == 200
    expect(page.locator("#history li")).to_have_count(1)
    expect(page.locator("#history .history-text")).to_have_text(text)
    expect(page.locator("#result-text")).to_have_text(text)
    assert page.locator("#history img, #result img").count() == 0
    assert page.locator("img").count() == 1  # the logo, nothing else
    assert session.dialogs == []
    session.assert_clean()


def test_rate_limited_request_shows_the_retry_time(running_server, open_page):
    # One request in the burst, refilled every 100 s: the voice list spends it.
    server = running_server(
        {"limits": {"tiers": {"anonymous": {"requests_per_s": 0.01, "burst": 1}}}}
    )
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
    server = running_server(
        {"auth": {"tokens": [{"name": "t", "tier": "standard", "sha256": digest}]}}
    )
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
    expect(page.locator("#history li")).to_have_count(1)
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
    """Browser-side behaviour: /ui/status is intercepted with page.route to report
    preview_enabled false; the page must show the banner and refuse to synthesize."""
    session = open_page(shared_server.url, goto=False)
    page = session.page

    def degraded(route: Any) -> None:
        body = route.fetch().json()
        body.update(preview_enabled=False, degradation_level=1)
        route.fulfill(json=body)

    page.route("**/ui/status", degraded)
    page.goto(shared_server.url + "/")
    banner = page.locator("#degraded-banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Preview is off under high load; the API keeps working.")
    expect(page.locator("#synthesize")).to_be_disabled()
    expect(page.locator("#conn")).to_have_attribute("data-state", "degraded")
    page.fill("#text", "Ctrl and Enter must not get around the banner.")
    page.keyboard.press("Control+Enter")
    page.click("#lang-toggle")
    expect(banner).to_contain_text("高负载时网页试听已关闭")
    expect(page.locator("#history li")).to_have_count(0)
    session.assert_clean()


def test_degradation_banner_follows_the_real_ladder(running_server, open_page, tmp_path):
    """The server's own ladder, driven through its CPU-reading test seam: level 1 turns the
    preview off and the page's 5 s status poll shows it; once the server is back to level 0,
    returning to the tab (visibilitychange) refreshes the status at once."""
    reading = tmp_path / "cpu.txt"
    reading.write_text("0")
    fast = {"sample_interval_s": 0.1, "window_s": 0.5, "down_window_s": 0.5}
    ladder = {"enabled": True, "cpu_reading_file": str(reading),
              "only_with_interactive_load": False, **fast}
    server = running_server({"degradation": ladder})
    session = open_page(server.url)
    page = session.page
    banner = page.locator("#degraded-banner")
    voices_loaded(session)
    expect(banner).to_be_hidden()
    expect(page.locator("#synthesize")).to_be_enabled()

    reading.write_text("100")
    expect(banner).to_be_visible(timeout=15_000)
    expect(page.locator("#synthesize")).to_be_disabled()
    reading.write_text("0")
    deadline = time.monotonic() + 20
    while server_status(server)["degradation_level"] > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    page.evaluate("() => document.dispatchEvent(new Event('visibilitychange'))")
    expect(banner).to_be_hidden(timeout=2_000)
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
        session,
        "Good morning! This page reads your text aloud as it streams, sentence by sentence.",
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
    status = server_status(shared_server)
    assert {
        "auth_required",
        "max_text_chars",
        "min_speed",
        "max_speed",
        "formats",
        "degradation_level",
        "preview_enabled",
        "caption_max_chars",
        "caption_max_s",
    } <= set(status)
    assert {"wav", "pcm"} <= set(status["formats"])


def test_busy_server_says_when_to_retry(running_server, open_page):
    # Three sentences cannot fit a queue of two units: a real 503 with Retry-After.
    server = running_server({"pool": {"max_queued_units": 2}, "server": {"retry_after_s": 7}})
    session = open_page(server.url)
    page = session.page
    voices_loaded(session)
    response = synthesize(session, "One sentence. Two sentences. Three sentences.")
    assert response.status == 503
    assert response.headers["retry-after"] == "7"
    expect(page.locator("#error-text")).to_have_text("The server is busy; retry in 7 s.")
    page.click("#lang-toggle")  # messages follow the language
    expect(page.locator("#error-text")).to_have_text("服务器繁忙，请在 7 秒后重试。")
    session.assert_clean(expected_statuses=frozenset({503}))


def test_lost_connection_mid_stream_and_before_the_answer(shared_server, open_page):
    proxy = BreakingProxy(shared_server.port, cut_after=40_000)
    try:
        session = open_page(proxy.url)
        page = session.page
        voices_loaded(session)
        text = "This answer is cut off on its way. The browser should say so plainly."
        assert synthesize(session, text).status == 200
        expect(page.locator("#error-text")).to_have_text(
            "The connection broke while the audio was arriving. Try again.",
            timeout=SYNTH_TIMEOUT_MS,
        )
        assert proxy.cuts == 1
        expect(page.locator("#synthesize")).to_be_enabled()
        expect(page.locator("#history li")).to_have_count(0)
        expect(page.locator("#status")).not_to_contain_text("Done")

        proxy.stop()  # now the server is gone altogether: fetch itself rejects
        page.fill("#text", "Is anybody there?")
        page.click("#synthesize")
        expect(page.locator("#error-text")).to_have_text(
            "Lost connection to the server. Check that it is running, then try again."
        )
        expect(page.locator("#conn")).to_have_attribute("data-state", "offline", timeout=15_000)
        session.assert_clean(network_errors=True)
    finally:
        proxy.stop()


def test_voice_picker_groups_by_language_with_engine_and_quality(shared_server, open_page):
    """Browser-side behaviour: /api/voices is intercepted with the shape more voices will
    have (espeak voices, Mandarin), since the server lists only its own voices today."""
    session = open_page(shared_server.url, goto=False)
    page = session.page
    voices = {
        "default": "joe",
        "aliases": {"default": "joe"},
        "voices": [
            {
                "name": "joe",
                "language": "en_US",
                "sample_rate": 22050,
                "engine": "piper",
                "quality": "medium",
                "speakers": None,
                "aliases": ["default"],
            },
            {
                "name": "en-us-espeak",
                "language": "en_US",
                "sample_rate": 22050,
                "engine": "espeak",
                "quality": "low",
                "speakers": None,
                "aliases": [],
            },
            {
                "name": "cmn-espeak",
                "language": "zh_CN",
                "sample_rate": 22050,
                "engine": "espeak",
                "quality": "low",
                "speakers": None,
                "aliases": [],
            },
        ],
    }
    page.route("**/api/voices", lambda route: route.fulfill(json=voices))
    page.goto(shared_server.url + "/")
    groups = page.locator("#voice optgroup")
    expect(groups).to_have_count(2)
    assert "en_US" in groups.nth(0).get_attribute("label")
    assert "zh_CN" in groups.nth(1).get_attribute("label")
    expect(groups.nth(0).locator("option")).to_have_text(
        ["joe · piper · medium", "en-us-espeak · espeak · low"]  # the default first
    )
    expect(groups.nth(1).locator("option")).to_have_text(["cmn-espeak · espeak · low"])
    expect(page.locator("#voice")).to_have_value("joe")  # the server's default
    page.click("#lang-toggle")
    expect(groups.nth(1).locator("option")).to_have_text(["cmn-espeak · espeak · 低"])
    assert "中文" in groups.nth(1).get_attribute("label")
    session.assert_clean()


def test_history_keeps_the_last_ten_and_revokes_dropped_audio(shared_server, open_page):
    session = open_page(shared_server.url)
    page = session.page
    voices_loaded(session)
    page.uncheck("#stream")
    page.select_option("#format", "wav")
    text = "Ten make a list."
    synthesize(session, text)
    expect(page.locator("#history li")).to_have_count(1)
    oldest = page.get_attribute("#history li a", "href")
    assert oldest.startswith("blob:")
    # (fetch() may not read blob: URLs under the page's CSP; an <audio> element may.)
    fetch_blob = """url => new Promise(resolve => {
        const audio = new Audio();
        audio.onloadedmetadata = () => resolve(audio.duration);
        audio.onerror = () => resolve(-1);
        audio.src = url;
    })"""
    assert page.evaluate(fetch_blob, oldest) > 0
    for count in range(2, 12):
        synthesize(session, text)  # cache hits: quick
        expect(page.locator("#history li")).to_have_count(min(count, 10))
    assert page.evaluate(fetch_blob, oldest) == -1  # revoked when it fell off the list
    newest = page.get_attribute("#history li a", "href")
    page.locator("#history li").first.get_by_role("button", name=re.compile("^Remove")).click()
    expect(page.locator("#history li")).to_have_count(9)
    assert page.evaluate(fetch_blob, newest) == -1
    expect(page.locator("#result-empty")).to_be_visible()  # it was the one on display
    session.assert_clean(network_errors=True)  # loading a revoked URL logs an error


def test_keyboard_order_labels_and_live_regions(shared_server, open_page):
    session = open_page(shared_server.url)
    page = session.page
    voices_loaded(session)
    expect(page.locator("#text")).to_be_focused()  # ready to type

    def walk(key: str, steps: int) -> list[str]:
        order = []
        for _ in range(steps):
            page.keyboard.press(key)
            order.append(page.evaluate("() => document.activeElement.id"))
        return order

    # The format list is skipped while streaming (it is disabled); so is Stop when idle.
    assert walk("Tab", 4) == ["voice", "speed", "stream", "synthesize"]
    assert walk("Shift+Tab", 5) == ["stream", "speed", "voice", "text", "lang-toggle"]
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea')]
              .filter(el => el.labels.length === 0 && !el.getAttribute('aria-label'))
              .map(el => el.id)"""
    )
    assert unlabelled == []
    assert page.get_attribute("#status", "aria-live") == "polite"
    assert page.get_attribute("#error", "role") == "alert"
    session.assert_clean()


def test_pcm_chunks_split_mid_sample_decode_to_the_same_samples(shared_server, open_page):
    """The page's own audio module in the browser: network chunks may end inside a 16-bit
    sample; the odd byte must carry over, or every later sample turns into noise."""
    session = open_page(shared_server.url)
    result = session.page.evaluate(
        """async () => {
        const { PcmStreamPlayer, pcmToFloats, wavBlob } = await import("/static/audio.js");
        const samples = new Int16Array(3001).map((_, i) => ((i * 7919) % 65536) - 32768);
        const bytes = new Uint8Array(samples.buffer);
        const context = new OfflineAudioContext(1, 22050, 22050);
        const player = new PcmStreamPlayer(context, 22050);
        const cuts = [0, 1, 4, 777, 778, 2001, 4001, bytes.length];
        const heard = [];
        for (let i = 1; i < cuts.length; i += 1) {
            const floats = player.push(bytes.slice(cuts[i - 1], cuts[i]));
            if (floats) heard.push(...floats);
        }
        const expected = pcmToFloats(bytes);
        const odd = wavBlob([bytes.slice(0, 5)], 22050);
        return {
            count: heard.length,
            expected: expected.length,
            same: heard.every((value, i) => value === expected[i]),
            scheduled: player.samples,
            oddWavBytes: odd.size,
        };
    }"""
    )
    assert result == {
        "count": 3001,
        "expected": 3001,
        "same": True,
        "scheduled": 3001,
        "oddWavBytes": 44 + 4,
    }
    session.assert_clean()
