"""Inference worker process: load every voice, report ready, then serve units until told to stop.

Runs in a spawned process (never forked from the front's event loop). It reads msgpack
messages from its socket, synthesizes one unit at a time and writes the audio into the
shared-memory slab the front created for it.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from multiprocessing import shared_memory
from typing import Protocol

import numpy as np

from . import protocol
from .logconfig import configure_logging
from .options import SynthesisOptions, ThreadPlan, VoiceError

LOG = logging.getLogger("tts.inference.worker")


class Engine(Protocol):
    sample_rate: int

    def synthesize_unit(self, text: str, options: SynthesisOptions) -> np.ndarray: ...

    def warm_up(self) -> None: ...


def load_engine(files: protocol.VoiceFiles, plan: ThreadPlan) -> Engine:
    """Imported here, per engine: an espeak worker never loads onnxruntime, and vice versa."""
    if files.engine == "espeak":
        from .espeak_engine import EspeakVoice

        return EspeakVoice.load(files.name)
    from .voice import Voice

    return Voice.load(files, plan)


class Worker:
    def __init__(self, spec: protocol.WorkerSpec, sock: socket.socket) -> None:
        self.spec = spec
        self.sock = sock
        self.voices: dict[str, Engine] = {}
        self.slab = shared_memory.SharedMemory(name=spec.slab_name)
        self.reader = protocol.MessageReader()

    def load_voices(self) -> None:
        plan = ThreadPlan(
            intra_op_threads=self.spec.intra_op_threads,
            inter_op_threads=self.spec.inter_op_threads,
            allow_spinning=self.spec.allow_spinning,
            solo_threads=self.spec.solo_threads,
        )
        for files in self.spec.voices:
            voice = load_engine(files, plan)
            voice.warm_up()
            self.voices[files.name] = voice

    def send(self, message: protocol.Message) -> None:
        self.sock.sendall(message.encode())

    def serve(self) -> None:
        while True:
            data = self.sock.recv(protocol.READ_CHUNK_BYTES)
            if not data:
                return  # the front is gone
            for message in self.reader.feed(data):
                if isinstance(message, protocol.Stop):
                    return
                if isinstance(message, protocol.SynthesizeUnit):
                    self.send(self.run_unit(message))

    def run_unit(self, unit: protocol.SynthesizeUnit) -> protocol.Message:
        voice = self.voices.get(unit.voice)
        if voice is None:
            return protocol.UnitFailed(unit.unit_id, protocol.FAIL_BAD_INPUT, "unknown voice")
        options = SynthesisOptions(
            speed=unit.speed,
            speaker_id=unit.speaker_id,
            noise_scale=self.spec.noise_scale,
            noise_w_scale=self.spec.noise_w_scale,
            solo=unit.solo,
        )
        started = time.perf_counter()
        try:
            audio = voice.synthesize_unit(unit.text, options)
        except VoiceError as exc:
            return protocol.UnitFailed(unit.unit_id, protocol.FAIL_BAD_INPUT, str(exc))
        except Exception as exc:  # an engine fault must not kill the worker
            LOG.exception("unit %s failed", unit.unit_id)
            return protocol.UnitFailed(unit.unit_id, protocol.FAIL_ENGINE, type(exc).__name__)
        elapsed_ms = (time.perf_counter() - started) * 1000
        return self.write_audio(unit.unit_id, audio, voice.sample_rate, elapsed_ms)

    def write_audio(
        self, unit_id: int, audio: np.ndarray, sample_rate: int, elapsed_ms: float
    ) -> protocol.Message:
        payload = audio.astype(protocol.SAMPLE_DTYPE, copy=False).tobytes()
        if len(payload) > self.spec.slab_bytes:
            message = f"audio of {len(payload)} bytes exceeds the {self.spec.slab_bytes}-byte slab"
            return protocol.UnitFailed(unit_id, protocol.FAIL_AUDIO_TOO_LONG, message)
        self.slab.buf[: len(payload)] = payload
        return protocol.UnitDone(unit_id, len(audio), sample_rate, elapsed_ms, time.process_time())

    def close(self) -> None:
        self.slab.close()
        self.sock.close()


def run_worker(
    spec: protocol.WorkerSpec, sock: socket.socket, log_level: str = "INFO",
    log_format: str = "auto",
) -> None:
    """Process entry point (target of multiprocessing's spawn)."""
    # Ctrl-C reaches the whole process group; the front decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(log_level, log_format)
    worker = Worker(spec, sock)
    try:
        worker.load_voices()
    except Exception as exc:
        LOG.error("worker %d cannot start: %s", spec.index, exc)
        worker.send(protocol.Fatal(f"{type(exc).__name__}: {exc}"))
        worker.close()
        return
    worker.send(protocol.Ready(os.getpid(), tuple(worker.voices), time.process_time()))
    try:
        worker.serve()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        worker.close()
