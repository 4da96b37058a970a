"""Inference worker process: load every voice, report ready, then serve units until told to stop.

Runs in a spawned process (never forked from the front's event loop). It reads msgpack
messages from its socket, synthesizes one unit at a time and writes the audio into the
shared-memory slab the front created for it. With batching enabled in its spec
(`max_batch` > 1) each Piper voice also gets a BatchEngine (a second session on the
duration-patched model) that answers SynthesizeBatch.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from multiprocessing import shared_memory
from typing import TYPE_CHECKING, Protocol

import numpy as np

from . import protocol
from .logconfig import configure_logging
from .options import SynthesisOptions, ThreadPlan, VoiceError
from .timing import WordTiming

if TYPE_CHECKING:
    from .batch_engine import BatchEngine

LOG = logging.getLogger("tts.inference.worker")


class Engine(Protocol):
    sample_rate: int

    def synthesize_unit(self, text: str, options: SynthesisOptions) -> np.ndarray: ...

    def synthesize_timed(
        self, text: str, options: SynthesisOptions
    ) -> tuple[np.ndarray, list[WordTiming]]: ...

    def warm_up(self) -> None: ...


def load_engine(files: protocol.VoiceFiles, plan: ThreadPlan) -> Engine:
    """Imported here, per engine: an espeak worker never loads onnxruntime, and vice versa."""
    if files.engine == "espeak":
        from .espeak_engine import EspeakVoice

        return EspeakVoice.load(files.name)
    if files.engine == "fastspeech2":
        from .mandarin.engine import MandarinVoice

        return MandarinVoice.load(files, plan)
    from .voice import Voice

    return Voice.load(files, plan)


def load_batch_engine(files: protocol.VoiceFiles, plan: ThreadPlan) -> BatchEngine:
    """The voice's model patched to output durations, in its own single-run session."""
    from .batch_engine import BatchEngine

    return BatchEngine.load(files, threads=plan.intra_op_threads, plan=plan)


class Worker:
    def __init__(self, spec: protocol.WorkerSpec, sock: socket.socket) -> None:
        self.spec = spec
        self.sock = sock
        self.voices: dict[str, Engine] = {}
        self.batch_engines: dict[str, BatchEngine] = {}
        self.slab = shared_memory.SharedMemory(name=spec.slab_name)
        self.reader = protocol.MessageReader()

    def load_voices(self) -> None:
        plan = self.spec.threads
        for files in self.spec.voices:
            voice = load_engine(files, plan)
            voice.warm_up()
            self.voices[files.name] = voice
            if self.spec.max_batch > 1 and files.engine == "piper":
                # Loading measures the hop length with a real run: it is warm afterwards.
                self.batch_engines[files.name] = load_batch_engine(files, plan)

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
                elif isinstance(message, protocol.SynthesizeBatch):
                    self.send(self.run_batch(message))

    def options(self, speed: float, speaker_id: int | None, solo: bool = False) -> SynthesisOptions:
        return SynthesisOptions(
            speed=speed,
            speaker_id=speaker_id,
            noise_scale=self.spec.noise_scale,
            noise_w_scale=self.spec.noise_w_scale,
            solo=solo,
        )

    def run_unit(self, unit: protocol.SynthesizeUnit) -> protocol.Message:
        voice = self.voices.get(unit.voice)
        if voice is None:
            return protocol.UnitFailed(unit.work_id, protocol.FAIL_BAD_INPUT, "unknown voice")
        options = self.options(unit.speed, unit.speaker_id, unit.solo)
        started = time.perf_counter()
        words: list[WordTiming] = []
        try:
            if unit.timings:
                audio, words = voice.synthesize_timed(unit.text, options)
            else:
                audio = voice.synthesize_unit(unit.text, options)
        except VoiceError as exc:
            return protocol.UnitFailed(unit.work_id, protocol.FAIL_BAD_INPUT, str(exc))
        except Exception as exc:  # an engine fault must not kill the worker
            LOG.exception("unit %s failed", unit.work_id)
            return protocol.UnitFailed(unit.work_id, protocol.FAIL_ENGINE, type(exc).__name__)
        elapsed_ms = (time.perf_counter() - started) * 1000
        return self.write_audio(unit.work_id, audio, voice.sample_rate, elapsed_ms,
                                tuple(words))

    def write_audio(
        self, work_id: int, audio: np.ndarray, sample_rate: int, elapsed_ms: float,
        words: tuple[WordTiming, ...] = (),
    ) -> protocol.Message:
        payload = audio.astype(protocol.SAMPLE_DTYPE, copy=False).tobytes()
        if len(payload) > self.spec.slab_bytes:
            message = f"audio of {len(payload)} bytes exceeds the {self.spec.slab_bytes}-byte slab"
            return protocol.UnitFailed(work_id, protocol.FAIL_AUDIO_TOO_LONG, message)
        self.slab.buf[: len(payload)] = payload
        return protocol.UnitDone(work_id, len(audio), sample_rate, elapsed_ms, time.process_time(),
                                 words)

    def run_batch(self, batch: protocol.SynthesizeBatch) -> protocol.Message:
        engine = self.batch_engines.get(batch.voice)
        if engine is None:
            message = f"voice {batch.voice!r} has no batch engine in this worker"
            return protocol.UnitFailed(batch.work_id, protocol.FAIL_BAD_INPUT, message)
        options = self.options(batch.speed, batch.speaker_id)
        started = time.perf_counter()
        try:
            audios, words = engine.synthesize_batch_timed(batch.texts, options,
                                                          self.spec.max_batch, batch.timings)
        except VoiceError as exc:
            return protocol.UnitFailed(batch.work_id, protocol.FAIL_BAD_INPUT, str(exc))
        except Exception as exc:  # an engine fault must not kill the worker
            LOG.exception("batch %s failed", batch.work_id)
            return protocol.UnitFailed(batch.work_id, protocol.FAIL_ENGINE, type(exc).__name__)
        elapsed_ms = (time.perf_counter() - started) * 1000
        audio = np.concatenate(audios) if audios else np.zeros(0, np.int16)
        written = self.write_audio(batch.work_id, audio, engine.sample_rate, elapsed_ms)
        if not isinstance(written, protocol.UnitDone):
            return written
        samples = tuple(len(a) for a in audios)
        return protocol.BatchDone(batch.work_id, samples, engine.sample_rate, elapsed_ms,
                                  written.process_cpu_s, tuple(tuple(w) for w in words))

    def close(self) -> None:
        self.slab.close()
        self.sock.close()


def run_worker(spec: protocol.WorkerSpec, sock: socket.socket) -> None:
    """Process entry point (target of multiprocessing's spawn)."""
    # Ctrl-C reaches the whole process group; the front decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(spec.log_level, spec.log_format)
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
