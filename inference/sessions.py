"""ONNX Runtime sessions with the pool's thread settings, for every ONNX engine (Piper,
FastSpeech2); imports nothing but onnxruntime, so an engine need not load another's code."""

from __future__ import annotations

import onnxruntime as ort

from .options import ThreadPlan


def make_session(model: str | bytes, threads: int, plan: ThreadPlan) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = plan.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads burn the core another worker needs; off unless configured.
    spinning = "1" if plan.allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
