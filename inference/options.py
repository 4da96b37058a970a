"""Engine-neutral request options and errors: imported by workers of every engine.

Kept free of onnxruntime so an espeak worker never loads it.
"""

from __future__ import annotations

from dataclasses import dataclass


class VoiceError(ValueError):
    """The request cannot be synthesized by this voice (for example a bad speaker id)."""


@dataclass(frozen=True)
class ThreadPlan:
    """Thread settings for a voice's sessions; solo_threads > 1 adds a wide second session."""

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    allow_spinning: bool = False
    solo_threads: int = 1


@dataclass(frozen=True)
class SynthesisOptions:
    """Per-request settings; None means the voice's own value. Resolved by each engine."""

    speed: float = 1.0
    speaker_id: int | None = None
    noise_scale: float | None = None
    noise_w_scale: float | None = None
    solo: bool = False
