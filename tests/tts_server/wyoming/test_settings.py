"""[wyoming] and [stream_in] settings: every bad value stops the server at start."""

import pytest

from tts_server.config import ConfigError, Settings
from tts_server.wyoming.handler import is_loopback


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"wyoming": {"access": "anyone"}}, "wyoming.access"),
        ({"wyoming": {"access": "token"}}, "needs API tokens"),
        ({"wyoming": {"tier": "gold"}}, "wyoming.tier"),
        ({"wyoming": {"port": 70000}}, "wyoming.port"),
        ({"wyoming": {"lookahead_sentences": 0}}, "lookahead_sentences"),
        ({"wyoming": {"max_event_bytes": 10}}, "max_event_bytes"),
        ({"stream_in": {"max_fragment_chars": 500, "max_session_chars": 100}},
         "max_session_chars"),
        ({"stream_in": {"send_timeout_s": 0}}, "timeouts"),
        ({"stream_in": {"max_messages": 3}}, "unknown setting"),
    ],
)
def test_bad_values_are_refused_with_their_name(sections, message):
    with pytest.raises(ConfigError, match=message):
        Settings().replace(**sections)


def test_defaults_are_off_and_loopback():
    wyoming = Settings().wyoming
    assert (wyoming.enabled, wyoming.host, wyoming.access) == (False, "127.0.0.1", "loopback")


@pytest.mark.parametrize(("address", "local"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("10.0.0.1", False), ("::ffff:10.0.0.1", False), ("unknown", False)])
def test_loopback_peers(address, local):
    assert is_loopback(address) is local
