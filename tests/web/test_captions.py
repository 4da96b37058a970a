"""Word timings on the web page: the word being spoken is highlighted in the typed text while
the audio plays (streamed or whole, seeking and pausing included), and "Download subtitles"
saves a WebVTT file. A real Chromium, the real server process and its real voices."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.web.conftest import PageSession, missing_browser_reason

if (_reason := missing_browser_reason()) is not None:
    pytest.skip(_reason, allow_module_level=True)

from playwright.sync_api import expect  # noqa: E402

from tests.web.test_page import (  # noqa: E402
    SYNTH_TIMEOUT_MS,
    synthesize,
    voices_loaded,
    wait_until_played,
)

THREE_SENTENCES = (
    "The quick brown fox jumps over the lazy dog. "
    "A second sentence follows the first one. "
    "And the third sentence ends the test."
)

# What the highlight shows: the marked word, its place among the timed words, the time the
# audio element is at, and how many words are marked as already spoken.
def cleared_highlight(page) -> dict:
    """The highlight once playback has ended: the page clears it on the animation frame
    after "ended", so wait for that frame (up to 5 s) before reading it."""
    page.wait_for_function("() => !document.querySelector('#result-text .word.current')"
                           " && !document.querySelector('#result-text .word.spoken')",
                           timeout=5000)
    return page.evaluate(HIGHLIGHT)


HIGHLIGHT = """() => {
    const words = [...document.querySelectorAll('#result-text .word')];
    const current = document.querySelector('#result-text .word.current');
    return {
        text: current ? current.textContent : null,
        index: current ? words.indexOf(current) : -1,
        spoken: document.querySelectorAll('#result-text .word.spoken').length,
        count: words.length,
        time: document.getElementById('player').currentTime,
        playback: document.getElementById('result').dataset.playback,
    };
}"""

# Seeks the <audio> element, then waits for the seek and two animation frames (the
# highlight is redrawn on the next frame).
SEEK = """async (time) => {
    const player = document.getElementById('player');
    const seeked = new Promise((resolve) => player.addEventListener('seeked', resolve,
                                                                   { once: true }));
    player.currentTime = time;
    await seeked;
    await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
    return player.currentTime;
}"""


def whole(session: PageSession, text: str, voice: str = "joe") -> dict[str, Any]:
    """A non-streamed WAV with its words (the JSON form); returns the answer's body."""
    page = session.page
    page.select_option("#voice", voice)
    page.uncheck("#stream")
    page.select_option("#format", "wav")
    response = synthesize(session, text)
    assert response.status == 200
    assert response.request.post_data_json["timestamps"] == "words"
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["words"], body.get("timings")
    return body


def paused_on_the_replay(session: PageSession) -> None:
    """The whole audio in the <audio> element, started and then paused."""
    page = session.page
    page.wait_for_function("() => document.getElementById('player').duration > 0")
    page.evaluate("() => document.getElementById('player').play().catch(() => {})")
    page.evaluate("() => document.getElementById('player').pause()")
    expect(page.locator("#result")).to_have_attribute("data-playback", re.compile("paused"))


def word_at(words: list[dict[str, Any]], time: float) -> int:
    """The index of the word whose [start_s, end_s) holds `time`, or -1."""
    found = [i for i, w in enumerate(words) if w["start_s"] <= time < w["end_s"]]
    return found[-1] if found else -1


def check_seeks(session: PageSession, text: str, words: list[dict[str, Any]],
                order: list[int]) -> None:
    """Seek into the middle of each word of `order`: that word, and only it, is marked; the
    ones before it are marked as spoken; its text is the typed text at its code points."""
    for index in order:
        word = words[index]
        time = session.page.evaluate(SEEK, (word["start_s"] + word["end_s"]) / 2)
        shown = session.page.evaluate(HIGHLIGHT)
        expected = word_at(words, time)
        assert expected == index, (time, word)
        assert shown["index"] == index, (shown, word)
        assert shown["text"] == word["text"] == text[word["start_char"]:word["end_char"]]
        assert shown["spoken"] == index
        assert shown["playback"] == "paused"


def test_the_highlight_follows_streamed_playback_word_by_word(shared_server, open_page):
    session = open_page(shared_server.url)
    page = session.page
    voices_loaded(session)
    page.select_option("#voice", "joe")
    expect(page.locator("#stream")).to_be_checked()
    response = synthesize(session, THREE_SENTENCES)
    assert response.status == 200
    assert response.request.post_data_json["timestamps"] == "words"
    assert response.request.post_data_json["stream"] is True
    assert response.headers["content-type"].startswith("application/x-ndjson")

    samples = []
    deadline_frames = 0
    while page.get_attribute("#result", "data-playback") != "ended":
        samples.append(page.evaluate(HIGHLIGHT))
        page.wait_for_timeout(40)
        deadline_frames += 1
        assert deadline_frames < SYNTH_TIMEOUT_MS / 40, "never ended"
    events = [json.loads(line) for line in response.text().splitlines() if line.strip()]
    words = [w for e in events if e["type"] == "words" for w in e["words"]]
    assert events[-1]["type"] == "done" and events[-1]["timings"] == "engine"
    assert len(words) == len(THREE_SENTENCES.split())

    marked = [s for s in samples if s["index"] >= 0]
    assert len({s["index"] for s in marked}) >= len(words) // 2  # seen most words go by
    indices = [s["index"] for s in marked]
    assert indices == sorted(indices)  # in order, never back
    for sample in marked:
        assert sample["text"] == words[sample["index"]]["text"]
        assert sample["spoken"] == sample["index"]
    assert words[indices[-1]]["start_char"] > THREE_SENTENCES.index("And the third")
    # Played to the end: nothing is marked any more.
    done = cleared_highlight(page)
    assert done["index"] == -1 and done["spoken"] == 0
    assert done["count"] == len(words)
    expect(page.locator("#result-text")).to_have_text(THREE_SENTENCES)
    session.assert_clean()


def test_seeking_and_pausing_keep_the_highlight_on_the_spoken_word(shared_server, open_page):
    session = open_page(shared_server.url)
    page = session.page
    voices_loaded(session)
    body = whole(session, THREE_SENTENCES)
    words = body["words"]
    assert body["timings"] == "engine"
    paused_on_the_replay(session)

    # Forwards, backwards, the first and the last word: always the word at currentTime.
    last = len(words) - 1
    check_seeks(session, THREE_SENTENCES, words, [3, 10, 1, last, 0, last // 2])

    # Paused between two words: none is marked, the ones before count as spoken.
    gaps = [i for i in range(last) if words[i + 1]["start_s"] - words[i]["end_s"] > 0.03]
    if gaps:
        before = words[gaps[0]]
        time = page.evaluate(SEEK, (before["end_s"] + words[gaps[0] + 1]["start_s"]) / 2)
        assert word_at(words, time) == -1
        shown = page.evaluate(HIGHLIGHT)
        assert shown["index"] == -1 and shown["spoken"] == gaps[0] + 1

    # Playing on from the second sentence: the highlight advances with currentTime.
    second = next(i for i, w in enumerate(words) if w["text"] == "second")
    page.evaluate(SEEK, words[second]["start_s"])
    page.evaluate("() => document.getElementById('player').play()")
    expect(page.locator("#result")).to_have_attribute("data-playback", "playing")
    seen = []
    while page.get_attribute("#result", "data-playback") == "playing":
        seen.append(page.evaluate(HIGHLIGHT))
        page.wait_for_timeout(40)
    wait_until_played(session)
    indices = [s["index"] for s in seen if s["index"] >= 0]
    assert indices and indices == sorted(indices) and indices[0] >= second - 1
    assert len(set(indices)) >= (len(words) - second) // 2
    done = cleared_highlight(page)  # the end clears the highlight
    assert done["index"] == -1 and done["spoken"] == 0

    # Dragged back after the end: paused there, and the highlight is back.
    check_seeks(session, THREE_SENTENCES, words, [2])
    session.assert_clean()


@pytest.mark.parametrize(
    ("voice", "text", "astral"),
    [
        # A rare Han character outside the BMP (two UTF-16 units, one code point).
        ("espeak-zh-female", "你好，世界。𠀀字很少见。今天天气很好。", "𠀀"),
        ("joe", "I like 🎉 parties and 😀 smiles. Emoji 👍🏽 count too.", "🎉"),
    ],
    ids=["mandarin", "emoji"],
)
def test_astral_characters_highlight_the_right_characters(shared_server, open_page, voice,
                                                         text, astral):
    session = open_page(shared_server.url)
    page = session.page
    voices_loaded(session)
    body = whole(session, text, voice)
    words = body["words"]
    assert any(w["text"] == astral for w in words)
    # The spans cover exactly the words' code points: no character lost or shifted.
    spans = page.eval_on_selector_all("#result-text .word", "els => els.map(e => e.textContent)")
    assert spans == [text[w["start_char"]:w["end_char"]] for w in sorted(
        words, key=lambda w: w["start_char"])]
    expect(page.locator("#result-text")).to_have_text(text)
    paused_on_the_replay(session)
    after = [i for i, w in enumerate(words) if w["start_char"] > text.index(astral)]
    order = [i for i, w in enumerate(words) if w["text"] == astral] + after[:4] + [0]
    check_seeks(session, text, words, order)
    session.assert_clean()


def parse_vtt(vtt: str) -> list[tuple[str, str, str]]:
    assert vtt.startswith("WEBVTT\n\n")
    cues = []
    for block in vtt[len("WEBVTT\n\n"):].strip().split("\n\n"):
        timing, cue_text = block.split("\n", 1)
        start, end = timing.split(" --> ")
        cues.append((start, end, cue_text))
    return cues


def clock(seconds: float) -> str:
    millis = round(seconds * 1000)
    return (f"{millis // 3_600_000:02d}:{millis // 60_000 % 60:02d}:"
            f"{millis // 1000 % 60:02d}.{millis % 1000:03d}")


def test_download_subtitles_saves_webvtt_from_the_typed_text(shared_server, open_page):
    session = open_page(shared_server.url)
    page = session.page
    voices_loaded(session)
    button = page.locator("#subtitles")
    long = ("This sentence runs on for quite a while, so that it passes the limit of a cue, "
            "and the captions must cut it after a comma.")
    text = f"First line of the captions.\nSecond   line, with <tags> & such!  Third. {long}"
    body = whole(session, text)
    words = body["words"]
    expect(button).to_be_enabled()
    expect(button).to_have_text("Download subtitles")
    name = page.get_attribute("#download", "download")
    assert re.fullmatch(r"tts-joe-\d{8}-\d{6}\.wav", name)
    vtt_name = name.removesuffix(".wav") + ".vtt"
    expect(button).to_have_attribute("aria-label", f"Download subtitles {vtt_name}")
    # Keyboard order: the audio's download, then the subtitles.
    page.focus("#download")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.id") == "subtitles"

    with page.expect_download() as download_info:
        page.keyboard.press("Enter")
    download = download_info.value
    assert download.suggested_filename == vtt_name
    vtt = Path(download.path()).read_text(encoding="utf-8")
    cues = parse_vtt(vtt)
    assert [c[2] for c in cues[:3]] == [
        "First line of the captions.",
        "Second line, with &lt;tags> &amp; such!",
        "Third.",
    ]
    # Too long for one cue: cut after a comma, every piece in the typed text's own words.
    rest = [c[2] for c in cues[3:]]
    assert len(rest) >= 2 and all(piece.endswith(",") for piece in rest[:-1])
    assert " ".join(rest) == long
    assert cues[0][0] == clock(words[0]["start_s"])
    assert cues[-1][1] == clock(words[-1]["end_s"])
    starts = [c[0] for c in cues]
    assert starts == sorted(starts)
    # The same words make the same file as the server's own captions (a cache hit).
    request = {"text": text, "voice": "joe", "format": "wav", "speed": 1, "captions": "vtt"}
    server_vtt = page.evaluate(
        """async (body) => (await fetch('/api/tts', {method: 'POST', body: JSON.stringify(body),
              headers: {'Content-Type': 'application/json'}})).text()""",
        request,
    )
    assert vtt == server_vtt

    page.click("#lang-toggle")
    expect(button).to_have_text("下载字幕")
    expect(button).to_have_attribute("aria-label", f"下载字幕 {vtt_name}")
    session.assert_clean()


def test_a_server_answer_without_timings_still_plays(shared_server, open_page):
    """A server that gives no word timings answers plain audio: the request leaves the page
    asking for them, and its "timestamps" is dropped on the way (the server is real)."""
    session = open_page(shared_server.url)
    page = session.page

    def without_timestamps(route: Any) -> None:
        body = route.request.post_data_json
        body.pop("timestamps", None)
        route.continue_(post_data=json.dumps(body))

    page.route("**/api/tts", without_timestamps)
    voices_loaded(session)
    expect(page.locator("#subtitles")).to_be_disabled()
    for stream in (True, False):
        page.set_checked("#stream", stream)
        text = f"Plain audio, streamed {stream}. No words come with it."
        response = synthesize(session, text)
        assert response.status == 200
        assert response.headers["content-type"].startswith(
            "audio/pcm" if stream else "audio/wav")
        wait_until_played(session)
        expect(page.locator("#result-text")).to_have_text(text)
        assert page.locator("#result-text .word").count() == 0
        expect(page.locator("#subtitles")).to_be_disabled()
    expect(page.locator("#history li")).to_have_count(2)
    session.assert_clean()


def test_timing_helpers_in_the_browser(shared_server, open_page):
    """The page's own helpers: NDJSON lines cut anywhere (inside a line, inside a UTF-8
    character) parse whole; [start_s, end_s) picks the word; code points map to UTF-16."""
    session = open_page(shared_server.url)
    result = session.page.evaluate(
        """async () => {
        const { ndjsonEvents, utf16Offsets, wordPosition } = await import("/static/audio.js");
        const lines = '{"type":"words","words":[{"text":"𠀀字"}]}\\n{"type":"done"}\\n';
        const bytes = new TextEncoder().encode(lines);
        const cuts = [0, 1, 27, 35, 36, 38, 45, bytes.length]; // 34-37: 𠀀
        let next = 1;
        const reader = { read: async () => next < cuts.length
            ? { done: false, value: bytes.slice(cuts[next - 1], cuts[next++]) }
            : { done: true, value: undefined } };
        const events = [];
        for await (const event of ndjsonEvents(reader)) events.push(event);
        const words = [{ start_s: 0.1, end_s: 0.3 }, { start_s: 0.3, end_s: 0.5 },
                       { start_s: 0.6, end_s: 0.9 }];
        const at = [0, 0.1, 0.299, 0.3, 0.55, 0.6, 0.9, 5].map((t) => wordPosition(words, t));
        return { events, at, offsets: utf16Offsets("a🎉b𠀀") };
    }"""
    )
    assert result["events"] == [
        {"type": "words", "words": [{"text": "𠀀字"}]},
        {"type": "done"},
    ]
    assert [(p["current"], p["spoken"]) for p in result["at"]] == [
        (-1, 0), (0, 0), (0, 0), (1, 1), (-1, 2), (2, 2), (-1, 3), (-1, 3),
    ]
    assert result["offsets"] == [0, 1, 3, 4, 6]
    session.assert_clean()
