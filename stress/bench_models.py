"""FP32 vs INT8, batching off vs on: throughput, p95 latency and WER, measured in one run.

    python -m stress.bench_models                       # the decision table (+ WER)
    python -m stress.bench_models --grid                # batch vs single per bucket/size/threads
    python -m stress.bench_models --raw                 # INT8/FP32 raw throughput ratios
    python -m stress.bench_models --compare --variants all --repeats 3   # every recipe, 1 process
    python -m stress.bench_models --profile qdq-dec-act-pc-u8   # op-type time, FP32 vs variant

Decision table: for each model in {FP32, INT8} and batching {off, on}, a simulated pool of
`--workers` processes (1 intra-op thread each) pulls sentences from one shared queue. At
concurrency C the driver keeps C sentences offered at once (closed loop: one finishes, the
next is offered). Batching off: a worker takes one sentence per session.run (the plain
Voice). Batching on: a worker takes the queue's oldest sentence plus up to max_batch - 1
more of the same length bucket, runs them as one padded batch (inference.batch_engine)
and splits the audio exactly. Phonemization happens up front, the same for every config.
Latency = finish - offer, per sentence; throughput = audio seconds / wall second.

Configs are interleaved inside each repeat (A B C D, then rotated), all pools stay loaded
for the whole run, and the table shows the median over repeats, so the shared machine's
noise hits every config alike. Ratios are of medians from the same run.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path

import numpy as np

from inference.batch_engine import BUCKET_EDGES, BUCKET_NAMES, BatchEngine, bucket_for
from inference.corpus import corpus, eval_sentences
from inference.protocol import VoiceFiles
from inference.quantize import FP32, data_dir_default, default_voice, ensure_variant
from inference.tools.variants import GRID, resolve
from inference.voice import SynthesisOptions, ThreadPlan, Voice
from stress.stats import percentile_or_nan as percentile
from tts_server.config import VoiceSettings

# The served recipe: one default, in config.
DEFAULT_INT8 = VoiceSettings().int8_recipe
SAMPLE_RATE = 22050
# Production inputs: the voice's own noise (scales resolved by the Voice), not zero.
OPTIONS = SynthesisOptions()


# ---- worker processes ---------------------------------------------------------------------


def _worker(conn: Connection, files: VoiceFiles, threads: int, batching: bool) -> None:
    """Serve lists of id sequences: run them (one batch, or one by one), reply sample counts."""
    plan = ThreadPlan(intra_op_threads=threads)
    if batching:
        engine = BatchEngine.load(files, threads=threads, plan=plan)

        def run(seqs):
            return [len(a) for a in engine.infer_batch(seqs, OPTIONS)]

        engine.infer_batch(
            [engine.voice.to_ids(p) for p in engine.voice.phonemize("Warm up.")], OPTIONS
        )
    else:
        voice = Voice.load(files, plan)
        voice.warm_up()

        def run(seqs):
            return [len(voice.infer(s, OPTIONS)) for s in seqs]

    conn.send("ready")
    while True:
        message = conn.recv()
        if message is None:
            return
        cpu = time.process_time()
        counts = run(message)
        conn.send((counts, time.process_time() - cpu))


class Pool:
    """`processes` spawned engines of one model, batching on or off."""

    def __init__(
        self,
        name: str,
        files: VoiceFiles,
        processes: int,
        threads: int,
        batching: bool,
        max_batch: int,
    ) -> None:
        self.name = name
        self.batching = batching
        self.max_batch = max_batch if batching else 1
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs = []
        for _ in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, files, threads, batching), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def wait_ready(self) -> None:
        for conn in self.conns:
            if not conn.poll(600) or conn.recv() != "ready":
                raise RuntimeError(f"{self.name}: a worker did not start")

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(None)
            except OSError:
                pass
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()

    def run_closed_loop(self, seqs: Sequence[list[int]], concurrency: int) -> LevelResult:
        """Keep `concurrency` sentences offered; idle workers take work from the shared queue."""
        buckets = [bucket_for(len(s)) for s in seqs]
        queue: collections.deque[tuple[int, float]] = collections.deque()
        next_index = 0
        latencies: list[float] = []
        samples = 0
        cpu_s = 0.0
        busy: dict[Connection, list[tuple[int, float]]] = {}
        sizes: collections.Counter[int] = collections.Counter()
        started = time.monotonic()

        def offer(count: int) -> None:
            nonlocal next_index
            now = time.monotonic()
            for _ in range(count):
                if next_index < len(seqs):
                    queue.append((next_index, now))
                    next_index += 1

        def take() -> list[tuple[int, float]]:
            head = queue.popleft()
            batch = [head]
            if self.max_batch > 1:
                bucket, kept = buckets[head[0]], collections.deque()
                while queue and len(batch) < self.max_batch:
                    item = queue.popleft()
                    (batch if buckets[item[0]] == bucket else kept).append(item)
                queue.extendleft(reversed(kept))
            return batch

        offer(concurrency)
        idle = list(self.conns)
        while queue or busy:
            while idle and queue:
                conn = idle.pop()
                batch = take()
                busy[conn] = batch
                sizes[len(batch)] += 1
                conn.send([seqs[i] for i, _ in batch])
            for conn in wait(list(busy)):
                counts, cpu = conn.recv()
                cpu_s += cpu
                done = time.monotonic()
                batch = busy.pop(conn)
                samples += sum(counts)
                latencies.extend((done - offered) * 1000 for _, offered in batch)
                idle.append(conn)
                offer(len(batch))
        wall = time.monotonic() - started
        return LevelResult(
            self.name,
            concurrency,
            len(seqs),
            samples / SAMPLE_RATE / wall,
            len(seqs) / wall,
            percentile(latencies, 50),
            percentile(latencies, 95),
            dict(sorted(sizes.items())),
            samples / SAMPLE_RATE / cpu_s,
        )


@dataclass
class LevelResult:
    config: str
    concurrency: int
    sentences: int
    audio_s_per_s: float
    items_per_s: float
    p50_ms: float
    p95_ms: float
    batch_sizes: dict[int, int]
    # Audio seconds per CPU second of the workers (process time, all their threads): far
    # less sensitive than wall time to other load on a shared machine.
    audio_s_per_cpu_s: float


# ---- inputs ------------------------------------------------------------------------------


def phoneme_ids(files: VoiceFiles, texts: Sequence[str]) -> list[list[int]]:
    voice = Voice.load(files, ThreadPlan())
    return [voice.to_ids(p) for t in texts for p in voice.phonemize(t)]


def level_inputs(
    all_ids: list[list[int]], concurrency: int, scale: float, level_index: int
) -> list[list[int]]:
    count = max(int(round(max(40, 3 * concurrency) * scale)), concurrency)
    start = (level_index * 97) % len(all_ids)
    return [all_ids[(start + i) % len(all_ids)] for i in range(count)]


# ---- the decision table -------------------------------------------------------------------


def decision_run(args: argparse.Namespace, source: VoiceFiles) -> dict[str, object]:
    int8 = ensure_variant(source, resolve(args.int8), args.data_dir)
    models = {FP32: source, args.int8: int8}
    configs = [(m, b) for m in models for b in (False, True)]
    all_ids = phoneme_ids(source, corpus())
    pools = {}
    try:
        for model, batching in configs:
            name = f"{model} batch={'on' if batching else 'off'}"
            pools[(model, batching)] = Pool(
                name, models[model], args.workers, 1, batching, args.max_batch
            )
        for pool in pools.values():
            pool.wait_ready()
        results: dict[tuple[str, int], list[LevelResult]] = collections.defaultdict(list)
        for repeat in range(args.repeats):
            for level_index, concurrency in enumerate(args.levels):
                seqs = level_inputs(all_ids, concurrency, args.scale, level_index)
                order = configs[repeat % len(configs) :] + configs[: repeat % len(configs)]
                for key in order:
                    result = pools[key].run_closed_loop(seqs, concurrency)
                    results[(pools[key].name, concurrency)].append(result)
                    print(
                        f"  [{repeat + 1}/{args.repeats}] {result.config:38s} c={concurrency:<3d}"
                        f" {result.audio_s_per_s:6.2f} audio-s/s p95 {result.p95_ms:7.0f} ms"
                        f" batches {result.batch_sizes}",
                        flush=True,
                    )
    finally:
        for pool in pools.values():
            pool.close()
    table = []
    for (config, concurrency), runs in results.items():
        table.append(
            {
                "config": config,
                "concurrency": concurrency,
                "repeats": len(runs),
                "audio_s_per_s": statistics.median(r.audio_s_per_s for r in runs),
                "items_per_s": statistics.median(r.items_per_s for r in runs),
                "p50_ms": statistics.median(r.p50_ms for r in runs),
                "p95_ms": statistics.median(r.p95_ms for r in runs),
                "audio_s_per_cpu_s": statistics.median(r.audio_s_per_cpu_s for r in runs),
                "runs_audio_s_per_s": [round(r.audio_s_per_s, 2) for r in runs],
            }
        )
    return {"table": table, "models": list(models)}


def print_decision(table: list[dict], baseline: str) -> None:
    base = {row["concurrency"]: row for row in table if row["config"] == baseline}
    print(
        f"\n{'config':38s} {'conc':>4s} {'audio-s/s':>9s} {'x base':>7s} {'items/s':>8s}"
        f" {'p50 ms':>7s} {'p95 ms':>7s} {'audio/cpu':>9s} {'x base':>7s}  runs (audio-s/s)"
    )
    for row in sorted(table, key=lambda r: (r["concurrency"], r["config"])):
        ref = base[row["concurrency"]]
        print(
            f"{row['config']:38s} {row['concurrency']:4d} {row['audio_s_per_s']:9.2f}"
            f" {row['audio_s_per_s'] / ref['audio_s_per_s']:7.2f} {row['items_per_s']:8.2f}"
            f" {row['p50_ms']:7.0f} {row['p95_ms']:7.0f} {row['audio_s_per_cpu_s']:9.2f}"
            f" {row['audio_s_per_cpu_s'] / ref['audio_s_per_cpu_s']:7.2f}"
            f"  {row['runs_audio_s_per_s']}"
        )


# ---- raw ratios: 2 processes x 1 thread, 1 process x 2 threads ------------------------------


def raw_run(args: argparse.Namespace, source: VoiceFiles) -> list[dict]:
    variants = [FP32, *args.variants]
    files = {v: ensure_variant(source, resolve(v), args.data_dir) for v in variants}
    all_ids = phoneme_ids(source, corpus())
    seqs = level_inputs(all_ids, 64, args.scale, 0)
    shapes = [(args.workers, 1), (1, args.workers)]
    pools = {}
    results = collections.defaultdict(list)
    try:
        for variant in variants:
            for procs, threads in shapes:
                pools[(variant, procs, threads)] = Pool(
                    f"{variant} {procs}p x {threads}t", files[variant], procs, threads, False, 1
                )
        for pool in pools.values():
            pool.wait_ready()
        keys = list(pools)
        for repeat in range(args.repeats):
            for key in keys[repeat % len(keys) :] + keys[: repeat % len(keys)]:
                result = pools[key].run_closed_loop(seqs, 64)
                results[key].append(result)
                print(
                    f"  [{repeat + 1}/{args.repeats}] {pools[key].name:32s}"
                    f" {result.audio_s_per_s:6.2f} audio-s/s"
                    f" {result.audio_s_per_cpu_s:6.2f} audio-s/cpu-s",
                    flush=True,
                )
    finally:
        for pool in pools.values():
            pool.close()
    rows = []
    for (variant, procs, threads), runs in results.items():
        wall = [r.audio_s_per_s for r in runs]
        cpu = [r.audio_s_per_cpu_s for r in runs]
        base = results[(FP32, procs, threads)]
        base_wall = statistics.median(r.audio_s_per_s for r in base)
        base_cpu = statistics.median(r.audio_s_per_cpu_s for r in base)
        rows.append(
            {
                "variant": variant,
                "processes": procs,
                "threads": threads,
                "audio_s_per_s": statistics.median(wall),
                "ratio_to_fp32": statistics.median(wall) / base_wall,
                "audio_s_per_cpu_s": statistics.median(cpu),
                "cpu_ratio_to_fp32": statistics.median(cpu) / base_cpu,
                "runs": wall,
            }
        )
    print(
        f"\n{'variant':22s} {'shape':>7s} {'audio-s/s':>9s} {'/FP32':>6s}"
        f" {'audio/cpu-s':>11s} {'/FP32':>6s}  runs (audio-s/s)"
    )
    for row in rows:
        print(
            f"{row['variant']:22s} {row['processes']}p x {row['threads']}t"
            f" {row['audio_s_per_s']:9.2f} {row['ratio_to_fp32']:6.2f}"
            f" {row['audio_s_per_cpu_s']:11.2f} {row['cpu_ratio_to_fp32']:6.2f}"
            f"  {[round(r, 2) for r in row['runs']]}"
        )
    return rows


# ---- batch vs single grid (one process) ------------------------------------------------------


def grid_run(args: argparse.Namespace, source: VoiceFiles) -> list[dict]:
    """Per bucket, batch size and thread count: per-item cost batched vs one by one."""
    files = ensure_variant(source, resolve(args.grid_model), args.data_dir)
    all_ids = phoneme_ids(source, corpus())
    by_bucket: dict[int, list[list[int]]] = collections.defaultdict(list)
    for ids in all_ids:
        by_bucket[bucket_for(len(ids))].append(ids)
    rows = []
    for threads in args.grid_threads:
        engine = BatchEngine.load(files, threads=threads)
        for bucket in sorted(by_bucket):
            pool = by_bucket[bucket]
            if len(pool) < max(args.grid_sizes):
                continue
            for size in args.grid_sizes:
                singles, batched, singles_cpu, batched_cpu = [], [], [], []
                audio_s = 0.0
                for repeat in range(args.repeats):
                    chunk = pool[(repeat * size) % (len(pool) - size + 1) :][:size]
                    for mode in ("single", "batch") if repeat % 2 == 0 else ("batch", "single"):
                        started, cpu = time.perf_counter(), time.process_time()
                        if mode == "single":
                            outs = [a for s in chunk for a in engine.infer_batch([s], OPTIONS)]
                            singles.append(time.perf_counter() - started)
                            singles_cpu.append(time.process_time() - cpu)
                        else:
                            outs = engine.infer_batch(chunk, OPTIONS)
                            batched.append(time.perf_counter() - started)
                            batched_cpu.append(time.process_time() - cpu)
                    audio_s += sum(len(a) for a in outs) / SAMPLE_RATE
                single_s, batch_s = statistics.median(singles), statistics.median(batched)
                lengths = [len(s) for s in pool]
                row = {
                    "threads": threads,
                    "bucket": BUCKET_NAMES[bucket],
                    "ids": f"{min(lengths)}-{max(lengths)}",
                    "batch": size,
                    "single_items_per_s": size / single_s,
                    "batch_items_per_s": size / batch_s,
                    "batch_audio_s_per_s": audio_s / args.repeats / batch_s,
                    "single_audio_s_per_s": audio_s / args.repeats / single_s,
                    "speedup": single_s / batch_s,
                    "cpu_speedup": statistics.median(singles_cpu) / statistics.median(batched_cpu),
                }
                rows.append(row)
                print(
                    f"  {threads}t {row['bucket']:7s} ids {row['ids']:>8s} batch {size}:"
                    f" single {row['single_audio_s_per_s']:6.2f} audio-s/s,"
                    f" batched {row['batch_audio_s_per_s']:6.2f} audio-s/s,"
                    f" batched/single {row['speedup']:.2f} (CPU time {row['cpu_speedup']:.2f})",
                    flush=True,
                )
    return rows


# ---- in-process A/B of many variants ---------------------------------------------------------


def compare_run(args: argparse.Namespace, source: VoiceFiles) -> list[dict]:
    """Every variant's session in one process, the same sentences, interleaved repeats."""
    from inference.voice import make_session

    names = [FP32, *[v for v in args.variants if v != FP32]]
    sessions = {
        n: make_session(
            ensure_variant(source, resolve(n), args.data_dir).model_path,
            args.threads,
            ThreadPlan(intra_op_threads=args.threads),
        )
        for n in names
    }
    all_ids = phoneme_ids(source, eval_sentences(12))
    scales = Voice.load(source, ThreadPlan()).scales(OPTIONS)

    def run(session) -> tuple[float, float]:
        wall, cpu, samples = time.perf_counter(), time.process_time(), 0
        for ids in all_ids:
            feed = {
                "input": np.array([ids]),
                "input_lengths": np.array([len(ids)]),
                "scales": scales,
            }
            samples += session.run(None, feed)[0].size
        audio = samples / SAMPLE_RATE
        return audio / (time.perf_counter() - wall), audio / (time.process_time() - cpu)

    for session in sessions.values():
        run(session)  # warm-up
    results: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for repeat in range(args.repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            results[name].append(run(sessions[name]))
    base_wall = statistics.median(r[0] for r in results[FP32])
    base_cpu = statistics.median(r[1] for r in results[FP32])
    rows = []
    print(f"\n{'variant':28s} {'audio-s/s':>9s} {'/FP32':>6s} {'audio/cpu-s':>11s} {'/FP32':>6s}")
    for name in names:
        wall = statistics.median(r[0] for r in results[name])
        cpu = statistics.median(r[1] for r in results[name])
        rows.append(
            {
                "variant": name,
                "audio_s_per_s": wall,
                "ratio": wall / base_wall,
                "audio_s_per_cpu_s": cpu,
                "cpu_ratio": cpu / base_cpu,
            }
        )
        print(f"{name:28s} {wall:9.2f} {wall / base_wall:6.2f} {cpu:11.2f} {cpu / base_cpu:6.2f}")
    return rows


# ---- profile ----------------------------------------------------------------------------------


def profile_run(args: argparse.Namespace, source: VoiceFiles) -> dict[str, dict[str, float]]:
    """Op-type kernel time (ms) per model over the same sentences, one thread."""
    import onnxruntime as ort

    all_ids = phoneme_ids(source, eval_sentences(12))
    scales = Voice.load(source, ThreadPlan()).scales(
        SynthesisOptions(noise_scale=0.0, noise_w_scale=0.0)
    )
    out = {}
    for variant in [FP32, *args.variants]:
        files = ensure_variant(source, resolve(variant), args.data_dir)
        prefix = Path(args.profile_dir) / f"profile-{variant}"
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = str(prefix)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(
            files.model_path, options, providers=["CPUExecutionProvider"]
        )
        for ids in all_ids:
            session.run(
                None,
                {"input": np.array([ids]), "input_lengths": np.array([len(ids)]), "scales": scales},
            )
        events = json.loads(Path(session.end_profiling()).read_text())
        by_op: collections.Counter[str] = collections.Counter()
        for event in events:
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                by_op[event["args"]["op_name"]] += event["dur"] / 1000.0
        out[variant] = dict(by_op.most_common())
    ops = sorted(
        {op for d in out.values() for op in d},
        key=lambda o: -out[FP32].get(o, 0.0) - max(d.get(o, 0.0) for d in out.values()),
    )
    print(f"\n{'op type (ms)':20s}" + "".join(f" {v[:18]:>18s}" for v in out))
    for op in ops[:16]:
        print(f"{op:20s}" + "".join(f" {out[v].get(op, 0.0):18.0f}" for v in out))
    print(f"{'total':20s}" + "".join(f" {sum(out[v].values()):18.0f}" for v in out))
    return out


# ---- CLI -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m stress.bench_models",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--int8", default=DEFAULT_INT8, help="INT8 variant of the table")
    parser.add_argument("--levels", default="1,8,64", help="concurrency levels")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="pool processes (default: CPU count)",
    )
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="sentences per level = max(40, 3 x concurrency) x scale",
    )
    parser.add_argument(
        "--wer-count", type=int, default=60, help="evaluation sentences for WER (0: skip)"
    )
    parser.add_argument("--data-dir", default=None, help="quantized model cache")
    parser.add_argument("--json", help="write every number to this file")
    parser.add_argument(
        "--raw", action="store_true", help="only raw INT8/FP32 ratios (2p x 1t and 1p x 2t)"
    )
    parser.add_argument(
        "--grid",
        action="store_true",
        help="only batch vs single per bucket, batch size and threads",
    )
    parser.add_argument("--grid-model", default=FP32)
    parser.add_argument("--grid-sizes", default="2,4,8")
    parser.add_argument("--grid-threads", default="1,2")
    parser.add_argument(
        "--profile",
        nargs="*",
        metavar="VARIANT",
        help="only the op-type profile of FP32 and these variants",
    )
    parser.add_argument("--profile-dir", default="/tmp")
    parser.add_argument(
        "--variants",
        default=None,
        help="comma list of variants for --raw and --compare (default: --int8)",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="only an in-process A/B of FP32 and --variants ('all': every recipe), 1 session each",
    )
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for --compare")
    args = parser.parse_args(argv)
    args.levels = [int(x) for x in args.levels.split(",")]
    args.grid_sizes = [int(x) for x in args.grid_sizes.split(",")]
    args.grid_threads = [int(x) for x in args.grid_threads.split(",")]
    args.data_dir = Path(args.data_dir) if args.data_dir else data_dir_default()
    if args.profile is not None:
        args.variants = args.profile or [args.int8]
    else:
        args.variants = args.variants.split(",") if args.variants else [args.int8]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    source = default_voice()
    print(f"bucket edges (phoneme ids): {BUCKET_EDGES} -> {BUCKET_NAMES}", flush=True)
    report: dict[str, object] = {"args": {k: str(v) for k, v in vars(args).items()}}
    if args.profile is not None:
        report["profile"] = profile_run(args, source)
    elif args.grid:
        report["grid"] = grid_run(args, source)
    elif args.compare:
        if args.variants == ["all"]:
            args.variants = list(GRID)
        report["compare"] = compare_run(args, source)
    elif args.raw:
        report["raw"] = raw_run(args, source)
    else:
        decision = decision_run(args, source)
        report.update(decision)
        print_decision(decision["table"], f"{FP32} batch=off")
        if args.wer_count:
            from inference.wer import evaluate_variants, format_reports

            reports = evaluate_variants(
                source, [resolve(args.int8)], eval_sentences(args.wer_count), args.data_dir
            )
            print("\n" + format_reports(reports))
            report["wer"] = {
                k: {
                    "wer": r.wer,
                    "mel_distance_db": r.mel_distance_db,
                    "length_ratio": r.length_ratio,
                }
                for k, r in reports.items()
            }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
