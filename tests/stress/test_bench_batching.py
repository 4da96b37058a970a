"""bench_batching's arithmetic: server environment per configuration, medians, the table."""

from __future__ import annotations

import tomllib

from stress.bench_batching import Config, Row, median_rows, print_table


def row(model: str, batching: str, level: int, rate: float, **extra) -> Row:
    values = dict(repeat=0, requests=40, errors=0, audio_s_per_s=rate, p50_ms=100.0,
                  p95_ms=200.0, audio_s=rate * 10, cpu_s=20.0, batches=0, batched_units=0)
    return Row(model, batching, level, **{**values, **extra})


def test_each_configuration_sets_precision_recipe_and_mode_as_toml_literals():
    fp32 = Config("fp32", "on").env
    assert fp32 == {"TTS_VOICES__PRECISION": '"fp32"', "TTS_BATCHING__MODE": '"on"'}
    int8 = Config("qdq-dec-act-pc-u8", "off").env
    assert tomllib.loads(f"v = {int8['TTS_VOICES__INT8_RECIPE']}")["v"] == "qdq-dec-act-pc-u8"
    assert int8["TTS_VOICES__PRECISION"] == '"int8"'


def test_medians_per_cell_batch_sizes_and_order(capsys):
    rows = [
        row("int8", "on", 8, 30.0, batches=2, batched_units=8),
        row("fp32", "off", 8, 10.0),
        row("fp32", "off", 8, 30.0),
        row("fp32", "off", 8, 20.0),
        row("int8", "on", 8, 50.0, batches=3, batched_units=9),
        row("fp32", "off", 1, 5.0),
    ]
    table = median_rows(rows)
    assert [(t["model"], t["batching"], t["concurrency"]) for t in table] == [
        ("fp32", "off", 1), ("fp32", "off", 8), ("int8", "on", 8)]
    assert table[1]["audio_s_per_s"] == 20.0 and table[1]["mean_batch"] is None
    assert table[2]["audio_s_per_s"] == 40.0 and table[2]["mean_batch"] == 17 / 5
    assert table[2]["audio_s_per_cpu_s"] == 20.0  # median of 300/20 and 500/20
    print_table(table)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("| int8 | on | 8 | 40.00 | 2.00 |")  # x FP32 off at 8 clients
