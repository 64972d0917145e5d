"""`edgeface bench`: per-stage latency of the profile's pipeline on this machine, the board included.

It needs only the profile's models (int8 alone is fine) and a few photos: the sample frames the bundle installs in
`$EDGEFACE_HOME/sample_images`, or a folder given. It prints the stage table, the profile's one-frame latency (the
detector invoke plus one MobileFaceNet embedding) and an `[expected]` section to paste into the profile. The
workstation's int8-against-float report (`--side-by-side`, edgeface.tools.bench) builds on the same stopwatch.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from edgeface import __version__
from edgeface.align import align_faces
from edgeface.analyzer import FaceAnalyzer
from edgeface.errors import EdgefaceError
from edgeface.gallery import Gallery
from edgeface.images import letterbox, list_images, load_image
from edgeface.interpreter import runtime_name
from edgeface.manifest import edgeface_home, model_key
from edgeface.profiles import Profile
from edgeface.retinaface import RetinaFace

STAGES = ("decode image", "letterbox", "detector invoke", "decode+NMS", "align", "embed", "liveness", "match")
EMBED_FACES = 5
"""Faces per photo aligned, embedded and matched in the stage timing (a crowd would otherwise dominate)."""
STAGE_GALLERY = 1_000
"""Random identities the match stage searches (an office's gallery)."""
CASCADE_NOTE = "MTCNN: the whole cascade (letterbox, pyramid, P/R/O-Net, NMS)"
T = TypeVar("T")


def machine() -> dict[str, object]:
    """What the numbers were measured on: CPU model, cores, Python and the TFLite runtime."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text(errors="replace").splitlines()
                 if line.startswith(("model name", "Model"))]
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "cores": os.cpu_count(), "arch": platform.machine(), "python": platform.python_version(),
            "runtime": runtime_name()}


@dataclass(frozen=True)
class Timing:
    """Latency percentiles in milliseconds."""

    p50: float
    p90: float

    def to_json(self) -> dict[str, float]:
        return {"p50_ms": round(self.p50, 3), "p90_ms": round(self.p90, 3)}


def percentiles(samples_ms: list[float]) -> Timing:
    """p50/p90 of a list of durations."""
    return Timing(float(np.percentile(samples_ms, 50)), float(np.percentile(samples_ms, 90)))


class Stopwatch:
    """Times calls into per-stage milliseconds (while `recording`)."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {stage: [] for stage in STAGES}
        self.recording = False

    def __call__(self, stage: str, call: Callable[..., T], *args: Any, per: int = 1) -> T:
        """`call(*args)`, recorded as `per` samples of an equal share of its time (e.g. per face)."""
        started = time.perf_counter()
        result = call(*args)
        if self.recording and per > 0:
            self.samples[stage] += [(time.perf_counter() - started) * 1000 / per] * per
        return result


def random_people(count: int, dim: int, seed: int) -> np.ndarray:
    """`count` random unit vectors: stand-in identities for timing a gallery search."""
    vectors = np.random.default_rng(seed).standard_normal((count, dim))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def fill_gallery(gallery: Gallery, size: int) -> None:
    """Enroll random people until the gallery holds `size`."""
    have = len(gallery.people())
    for index, vector in enumerate(random_people(size - have, gallery.dim, seed=have), start=have):
        gallery.add(f"person{index:06d}", vector[None])


def time_stages(analyzer: FaceAnalyzer, timed: Stopwatch, path: Path, gallery: Gallery) -> None:
    """One photo through the pipeline, each stage timed (liveness only when the profile requires it)."""
    cfg, det = analyzer.profile.detector, analyzer.detector
    image = timed("decode image", load_image, path)
    if isinstance(det, RetinaFace):
        boxed, mapping = timed("letterbox", letterbox, image, det.width, det.height, det.fill)
        outputs = timed("detector invoke", det.model.run, boxed[None])
        found = timed("decode+NMS", det.postprocess, outputs, mapping, analyzer.score_threshold, cfg.nms_iou,
                      cfg.max_faces)
    else:
        timed("letterbox", letterbox, image, analyzer.input_size, analyzer.input_size, det.fill)
        found = timed("detector invoke", det.detect, image, analyzer.score_threshold, cfg.nms_iou, cfg.max_faces)
    embedder = analyzer.embedder
    landmarks = found.landmarks[:EMBED_FACES]
    faces = timed("align", align_faces, image, landmarks, embedder.size, per=len(landmarks))
    for index, face in enumerate(faces):
        vector = timed("embed", embedder.embed_aligned, face[None])
        if analyzer.profile.liveness.required:
            timed("liveness", analyzer.liveness_scorer.score, image, found.boxes[index])
        timed("match", gallery.identify, vector, analyzer.profile.recognition.match_threshold)


def sample_photos(folder: Path | None) -> list[Path]:
    """The photos to time: those in `folder`, else the sample frames in `$EDGEFACE_HOME/sample_images`."""
    source = folder or edgeface_home() / "sample_images"
    photos = list_images(source) if source.is_dir() else []
    if not photos:
        where = "the folder given" if folder else "the bundle installs them there; pass --photos DIR otherwise"
        raise EdgefaceError(f"{source}: no photos to time ({where})")
    return photos


def stage_rows(watch: Stopwatch) -> dict[str, Timing]:
    """Each stage that ran, by name: its p50 / p90."""
    return {stage: percentiles(samples) for stage, samples in watch.samples.items() if samples}


def bench(profile: Profile, photos: list[Path], repeats: int, precision: str | None = None) -> dict[str, Any]:
    """Every measurement of `edgeface bench`, as its JSON report: stages, one frame, whole frames."""
    analyzer = FaceAnalyzer(profile, precision=precision)
    watch = Stopwatch()
    frames: list[float] = []
    with tempfile.TemporaryDirectory() as scratch, analyzer:
        with Gallery(Path(scratch) / "bench.db", "bench", analyzer.embedder.dim) as gallery:
            fill_gallery(gallery, STAGE_GALLERY)
            for round_ in range(repeats + 1):  # round 0 warms up (model loading, XNNPACK packing)
                watch.recording = round_ > 0
                for path in photos:
                    started = time.perf_counter()
                    time_stages(analyzer, watch, path, gallery)
                    if watch.recording:
                        frames.append((time.perf_counter() - started) * 1000)
    stages = stage_rows(watch)
    if "embed" not in stages:
        raise EdgefaceError(f"{photos[0].parent}: no face found in any photo; the embed stage needs faces")
    one_frame = stages["detector invoke"].p50 + stages["embed"].p50
    return {
        "meta": {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": machine(),
                 "edgeface": __version__, "profile": profile.name, "precision": analyzer.precision,
                 "detector": model_key(analyzer.detector_name, analyzer.input_size),
                 "threads": profile.runtime.threads, "delegate": profile.runtime.delegate,
                 "photos": len(photos), "folder": str(photos[0].parent), "repeats": repeats,
                 "embed_faces_per_photo": EMBED_FACES, "stage_gallery": STAGE_GALLERY},
        "stages": [{"stage": stage, **timing.to_json(), "samples": len(watch.samples[stage]),
                    "note": CASCADE_NOTE if analyzer.detector_name == "mtcnn" and stage == "detector invoke" else ""}
                   for stage, timing in stages.items()],
        "one_frame_ms": round(one_frame, 1),
        "frame": percentiles(frames).to_json(),
    }


def expected_section(report: dict[str, Any]) -> str:
    """The profile's `[expected]` section from this run (TOML)."""
    meta, m = report["meta"], report["meta"]["machine"]
    source = (f"measured: edgeface {meta['edgeface']} bench on {m['cpu']} ({m['cores']} cores, {m['arch']}), "
              f"{meta['threads']} threads {meta['delegate']}, {meta['precision']}, p50 over {meta['photos']} photos "
              f"x {meta['repeats']}, {meta['date'][:10]}")
    return "\n".join(["[expected]", f"# One frame: detector invoke at [detector] input_size + one MobileFaceNet "
                      f"embedding, {meta['precision']}.", f"latency_ms = {report['one_frame_ms']:.1f}",
                      f"source = {json.dumps(source)}"])


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table (p50 / p90 in ms), the one-frame figure and the `[expected]` section."""
    meta, m = report["meta"], report["meta"]["machine"]
    lines = [f"# edgeface bench, {meta['date']}",
             f"{m['cpu']} ({m['cores']} cores, {m['arch']}), Python {m['python']}, {m['runtime']}; profile "
             f"`{meta['profile']}`: {meta['detector']} {meta['precision']}, {meta['threads']} threads, "
             f"{meta['delegate']}; {meta['photos']} photos in `{meta['folder']}` x {meta['repeats']}.", "",
             "| stage | p50 ms | p90 ms | samples |", "|---|---|---|---|"]
    lines += [f"| {r['stage']}{' *' if r['note'] else ''} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['samples']} |"
              for r in report["stages"]]
    lines += [f"\n\\* {note}" for note in sorted({r["note"] for r in report["stages"] if r["note"]})]
    lines += ["", f"Align, embed, liveness and match run for up to {meta['embed_faces_per_photo']} faces per photo; "
              f"match searches {meta['stage_gallery']:,} identities.",
              f"Whole frame (decode to match): {report['frame']['p50_ms']:.1f} ms p50, "
              f"{report['frame']['p90_ms']:.1f} ms p90.",
              f"One frame as the profile's [expected] counts it (detector invoke + one embedding): "
              f"{report['one_frame_ms']:.1f} ms.", "", "For the profile:", "", "```toml", expected_section(report),
              "```"]
    return "\n".join(lines) + "\n"


def run(profile: Profile, photos: Path | None, repeats: int, precision: str | None, as_json: bool,
        out: Path | None) -> int:
    """The `bench` command: print the report (and write bench.json and bench.md to `out`, if given)."""
    report = bench(profile, sample_photos(photos), repeats, precision)
    text = json.dumps(report, indent=1)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(text + "\n")
        (out / "bench.md").write_text(markdown(report))
    print(text if as_json else markdown(report).rstrip("\n"))
    return 0
