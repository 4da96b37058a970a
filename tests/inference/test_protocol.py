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


def test_batch_messages_round_trip_with_tuples():
    reader = protocol.MessageReader()
    batch = protocol.SynthesizeBatch(3, "joe", ("One.", "Two."), speed=1.2, speaker_id=None)
    done = protocol.BatchDone(3, (100, 2048), 22050, 12.5, 1.0)
    failed = protocol.UnitFailed(3, protocol.FAIL_ENGINE, "boom")
    assert reader.feed(batch.encode() + done.encode() + failed.encode()) == [batch, done, failed]


def test_version_mismatch_and_unknown_kinds_are_rejected():
    body = msgpack.packb({"kind": "ready", "version": 999, "pid": 1, "voices": []})
    with pytest.raises(protocol.ProtocolError, match="version"):
        protocol.MessageReader().feed(body)
    body = msgpack.packb({"kind": "explode", "version": protocol.PROTOCOL_VERSION})
    with pytest.raises(protocol.ProtocolError, match="unknown"):
        protocol.MessageReader().feed(body)


def test_slab_names_carry_the_front_pid():
    assert protocol.slab_name(123, "piper", 4) == "tts-123-piper-w4"
