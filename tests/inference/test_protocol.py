import msgpack
import pytest

from inference import protocol


def test_messages_round_trip_through_the_stream_reader():
    reader = protocol.MessageReader()
    unit = protocol.SynthesizeUnit(7, "joe", "Hello.", speed=1.5, speaker_id=None, solo=True)
    ready = protocol.Ready(pid=42, voices=("joe",))
    data = unit.encode() + ready.encode()
    # Split mid-message: the reader must wait for the rest.
    assert reader.feed(data[:5]) == []
    assert reader.feed(data[5:]) == [unit, ready]


def test_version_mismatch_and_unknown_kinds_are_rejected():
    body = msgpack.packb({"kind": "ready", "version": 999, "pid": 1, "voices": []})
    with pytest.raises(protocol.ProtocolError, match="version"):
        protocol.MessageReader().feed(body)
    body = msgpack.packb({"kind": "explode", "version": protocol.PROTOCOL_VERSION})
    with pytest.raises(protocol.ProtocolError, match="unknown"):
        protocol.MessageReader().feed(body)


def test_slab_names_carry_the_front_pid():
    assert protocol.slab_name(123, "piper", 4) == "tts-123-piper-w4"
