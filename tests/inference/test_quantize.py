"""INT8 variants: built and cached, loadable by Voice, intelligible (WER gate vs FP32)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from inference import corpus, quantize, wer
from inference.protocol import VoiceFiles
from inference.tools import variants
from inference.voice import SynthesisOptions, ThreadPlan, Voice
from tests.inference.conftest import JOE
from tts_server.config import VoiceSettings

DETERMINISTIC = SynthesisOptions(noise_scale=0.0, noise_w_scale=0.0)
# The recommended INT8 recipe is the one under test: it is what a server would load.
VARIANT = VoiceSettings().int8_recipe  # the served recipe
# A handful of held-out sentences, chosen by length only (<= 12 words keeps the test quick):
# the 60-sentence gate itself is measured by `python -m inference.tools.wer` / stress.bench_models.
GATE_SENTENCES = 8
GATE_MAX_WORDS = 12


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def int8_files(data_dir: Path) -> VoiceFiles:
    return quantize.ensure_variant(JOE, VARIANT, data_dir)


@pytest.fixture(scope="module")
def int8_voice(int8_files: VoiceFiles) -> Voice:
    return Voice.load(int8_files, ThreadPlan())


@pytest.fixture(scope="module")
def fp32_voice() -> Voice:
    return Voice.load(JOE, ThreadPlan())


def test_variant_is_int8_and_cached_beside_its_config(int8_files, data_dir):
    model = Path(int8_files.model_path)
    assert model.is_relative_to(data_dir)
    assert quantize.sha256_file(JOE.model_path) in model.parent.name
    assert model.name.endswith(f".{VARIANT}.onnx")
    assert Path(int8_files.config_path).read_bytes() == Path(JOE.config_path).read_bytes()
    ops = {node.op_type for node in onnx.load(str(model), load_external_data=False).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert int8_files.name == JOE.name


def test_quantized_voice_speaks_with_a_plausible_length(int8_voice, fp32_voice):
    text = "The train to Boston will now depart from platform four."
    audio = int8_voice.synthesize_unit(text, DETERMINISTIC)
    reference = fp32_voice.synthesize_unit(text, DETERMINISTIC)
    assert audio.dtype == np.int16
    assert np.abs(audio).max() > 10000  # peak-normalized speech, not silence
    assert 0.9 < len(audio) / len(reference) < 1.1
    assert 1.5 < len(audio) / int8_voice.sample_rate < 8.0
    # Not the FP32 model under another name: the samples differ.
    if len(audio) == len(reference):
        assert np.abs(audio.astype(np.int32) - reference.astype(np.int32)).max() > 0


def test_int8_passes_the_wer_gate_against_fp32(int8_voice, fp32_voice):
    sentences = [t for t in corpus.eval_sentences() if len(t.split()) <= GATE_MAX_WORDS]
    sentences = sentences[:GATE_SENTENCES]
    assert len(sentences) == GATE_SENTENCES
    transcriber = wer.Transcriber(threads=2)
    rate = fp32_voice.sample_rate
    reference = [fp32_voice.synthesize_unit(t, DETERMINISTIC) for t in sentences]
    audios = [int8_voice.synthesize_unit(t, DETERMINISTIC) for t in sentences]
    fp32 = wer.evaluate(quantize.FP32, reference, sentences, rate, transcriber, reference)
    int8 = wer.evaluate(VARIANT, audios, sentences, rate, transcriber, reference)
    assert fp32.wer < 20.0, fp32.transcripts  # the checker itself hears the voice
    assert wer.passes_gate(int8.wer, fp32.wer), (int8.wer, fp32.wer, int8.transcripts)
    assert int8.mel_distance_db is not None and 0.0 < int8.mel_distance_db < 20.0


def test_a_cached_variant_is_not_rebuilt(int8_files, data_dir):
    before = Path(int8_files.model_path).stat().st_mtime_ns
    started = time.monotonic()
    again = quantize.ensure_variant(JOE, VARIANT, data_dir)
    assert again == int8_files
    assert Path(again.model_path).stat().st_mtime_ns == before
    assert time.monotonic() - started < 5.0


def test_a_changed_recipe_rebuilds(data_dir):
    files = quantize.ensure_variant(JOE, variants.get("dyn-matmul"), data_dir)
    recipe = quantize.variant_paths(JOE, "dyn-matmul", data_dir)[2]
    before = Path(files.model_path).stat().st_mtime_ns
    recipe.write_text('{"stale": true}')
    time.sleep(0.01)
    quantize.ensure_variant(JOE, variants.get("dyn-matmul"), data_dir)
    assert Path(files.model_path).stat().st_mtime_ns != before
    assert "stale" not in recipe.read_text()


def test_the_cache_key_changes_when_the_source_model_changes(tmp_path, data_dir):
    copy = tmp_path / "voice.onnx"
    shutil.copyfile(JOE.model_path, copy)
    files = VoiceFiles("joe", str(copy), JOE.config_path)
    first = quantize.variant_paths(files, VARIANT, data_dir)[0]
    model = onnx.load(str(copy))
    model.doc_string = "retrained"
    onnx.save(model, str(copy))
    second = quantize.variant_paths(files, VARIANT, data_dir)[0]
    assert first.parent != second.parent
    assert first.name == second.name
    assert quantize.sha256_file(copy) in second.parent.name


def test_fp32_is_the_source_and_unknown_variants_are_refused(data_dir):
    assert quantize.ensure_variant(JOE, quantize.FP32, data_dir) == JOE
    with pytest.raises(quantize.QuantizeError, match="unknown variant"):
        quantize.ensure_variant(JOE, "int3-magic", data_dir)


def test_cli_lists_variants(capsys):
    assert variants.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert VARIANT in out and "dyn-all" in out


def test_calibration_inputs_are_real_phoneme_ids():
    feeds = quantize.calibration_inputs(JOE, 3)
    assert len(feeds) >= 3
    for feed in feeds:
        assert feed["input"].shape[1] == feed["input_lengths"][0] > 5
        assert feed["scales"].tolist() != [0.0, 1.0, 0.0]  # the voice's own noise


def test_corpus_is_deterministic_and_eval_is_held_out():
    assert corpus.corpus() == corpus.corpus()
    assert len(set(corpus.corpus())) == corpus.CORPUS_SIZE
    held_out = corpus.eval_sentences()
    calibration = corpus.calibration_sentences(200)
    assert len(held_out) >= 50
    assert not set(held_out) & set(calibration)
    assert not any(corpus.has_digits(t) for t in held_out)
    assert any(corpus.has_digits(t) for t in calibration)  # numbers are calibrated too


def test_wer_arithmetic_and_normalization():
    assert wer.normalize("The Harbour-side, OK?") == ["the", "harbor", "side", "ok"]
    assert wer.edit_distance("a b c".split(), "a x c d".split()) == 2
    assert wer.word_error_rate(["one two three four"], ["one two three four"]) == 0.0
    assert wer.word_error_rate(["one two three four"], ["one too three"]) == 50.0
    assert wer.passes_gate(3.0, 2.0) and not wer.passes_gate(3.01, 2.0)


def test_mel_distance_is_zero_for_identical_audio_and_grows_with_noise():
    rng = np.random.default_rng(1)
    t = np.arange(22050) / 22050
    tone = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    assert wer.mel_distance_db(tone, tone, 22050) == 0.0
    noisy = tone + 0.05 * rng.standard_normal(tone.size).astype(np.float32)
    assert wer.mel_distance_db(noisy, tone, 22050) > 1.0
    # Compared over the common length: a longer copy of the same signal matches.
    assert wer.mel_distance_db(np.concatenate([tone, tone]), tone, 22050) < 1e-6
