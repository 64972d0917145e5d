"""`edgeface check-quant`: every stage's float and int8 model on real labelled photos, side by side.

Detection AP on WIDER FACE val, landmark NME on dlib's 68-point faces, LFW verification and CelebA open-set
identification, per-output SNR of the stage that loses most; each loss judged by the gates in gates.toml. With
`--photos`, the two precisions' agreement on the user's own unlabelled photos instead
(edgeface.tools.evaluation.agreement).
"""

from __future__ import annotations

import datetime
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeface.analyzer import Face, FaceAnalyzer
from edgeface.detection import logit_of
from edgeface.errors import EdgefaceError, GalleryError
from edgeface.gallery import Gallery
from edgeface.images import letterbox, list_images, load_image
from edgeface.interpreter import TFLiteModel
from edgeface.latency import machine
from edgeface.manifest import ModelSpec, model_key
from edgeface.profiles import Profile, load_profile
from edgeface.tools.bench import detector_stages
from edgeface.tools.datasets import data_dir
from edgeface.tools.evaluation.gates import GATES_FILE, Gate, check, load_limits, worst_stage
from edgeface.tools.evaluation.identification import OpenSetResult, open_set, split_people, threshold_for
from edgeface.tools.evaluation.landmarks import face_nme, read_imglab
from edgeface.tools.evaluation.results import Results
from edgeface.tools.evaluation.verification import protocol_accuracy, protocol_folds, read_pairs, roc, tar_at_far
from edgeface.tools.evaluation.widerface import SETTINGS, drop_interval, evaluate, image_key, load_ground_truth
from edgeface.tools.tensor_snr import tensor_snr, where_it_enters

PRECISIONS = ("float", "int8")
FOLDERS = ("wider_val_dev", "dlib_landmarks", "lfw_fold1", "celeba_dev")
AP_SCORE_THRESHOLD = 0.02
LANDMARK_MIN_IOU = 0.4
"""dlib's boxes are tighter than the detectors': true matches overlap 0.5 to 0.65."""
FAR_TARGETS = (1e-2, 1e-3)
ENROLL_PHOTOS = 3
TARGET_STRANGER_ACCEPT = 0.01
SNR_PHOTOS = 8
SNR_BATCHES = 32


@dataclass(frozen=True)
class Subsets:
    """How much of each data set a run uses: every `wider_step`-th WIDER image, LFW pairs spread over the
    list, CelebA photos of whole identities (None: all)."""

    wider_step: int
    lfw_pairs: int | None
    celeba_photos: int | None


FULL = Subsets(1, None, None)
QUICK = Subsets(8, 100, 200)


def require_data(given: Path | None) -> Path:
    """The labelled data folder (`given`, else $EDGEFACE_DATA or ../shared/data) holding every folder needed."""
    root = given or data_dir()
    if root is None or not root.is_dir():
        raise EdgefaceError(f"{root or '../shared/data'}: labelled data folder not found "
                            "(pass --data DIR or set EDGEFACE_DATA)")
    missing = [name for name in FOLDERS if not (root / name).is_dir()]
    if missing:
        raise EdgefaceError(f"{root}: missing {', '.join(missing)} (see the data README)")
    return root


class _RecordingModel(TFLiteModel):
    """A TFLiteModel that keeps the first `keep` batches it is fed, and its last outputs."""

    def __init__(self, *args: Any, keep: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keep = keep
        self.batches: list[np.ndarray] = []
        self.last: dict[str, np.ndarray] = {}

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if len(self.batches) < self.keep:
            self.batches.append(batch.copy())
        self.last = super().run(batch)
        return self.last


class _RecordingAnalyzer(FaceAnalyzer):
    """A FaceAnalyzer whose models keep their first `keep` real inputs and their last outputs, by model key."""

    def __init__(self, *args: Any, keep: int = SNR_BATCHES, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keep = keep
        self.recorded: dict[str, _RecordingModel] = {}

    def _model(self, spec: ModelSpec) -> TFLiteModel:
        runtime = self.profile.runtime
        self.recorded[spec.key] = model = _RecordingModel(self.manifest, spec, threads=runtime.threads,
                                                          delegate=runtime.delegate, keep=self.keep)
        return model


def _analyzers(profile: Profile) -> dict[str, FaceAnalyzer]:
    """The profile's float and int8 pipelines, by precision."""
    return {p: FaceAnalyzer(profile, precision=p) for p in PRECISIONS}


def _stage_analyzers(profile: Profile, stages: list[tuple[str, int]],
                     score_threshold: float | None = None) -> dict[tuple[str, str], _RecordingAnalyzer]:
    """Float and int8 analyzers of each (detector, input size), keyed (stage, precision): ('mtcnn-640', 'int8');
    their models keep their last outputs (no batches)."""
    return {(model_key(detector, size), p): _RecordingAnalyzer(profile, detector=detector, input_size=size,
                                                               precision=p, score_threshold=score_threshold, keep=0)
            for detector, size in stages for p in PRECISIONS}


Found = dict[tuple[str, str], dict[str, list[Face]]]
"""Faces by (stage, precision), then by photo."""


def _detect_all(photos: dict[str, Path], analyzers: dict[tuple[str, str], _RecordingAnalyzer],
                errors: OutputErrors | None = None, swaps: OutputSwaps | None = None) -> Found:
    """The faces each analyzer finds in each photo, every photo decoded once; with `errors` and `swaps`, each
    RetinaFace stage's int8 outputs against float's on the photo (both saw the same letterboxed input), by photo
    name."""
    found: Found = {key: {} for key in analyzers}
    for name, path in photos.items():
        pixels = load_image(path)
        for key, analyzer in analyzers.items():
            found[key][name] = analyzer.detect(pixels)
        for stage, precision in analyzers:
            if (errors is not None or swaps is not None) and precision == "int8" and stage.startswith("retinaface"):
                pair = [analyzers[stage, p].recorded[stage] for p in PRECISIONS]
                if all(model.last for model in pair):  # both ran on this photo
                    if errors is not None:
                        errors.add(stage, name, pair[0].last, pair[1].last)
                    if swaps is not None:
                        swaps.add(stage, name, analyzers[stage, precision], pixels, pair[0].last, pair[1].last)
                for model in pair:
                    model.last = {}
    return found


class OutputSwaps:
    """Which RetinaFace outputs carry the int8 loss: each stage's int8 detections with one group of its outputs
    (one kind: 'conf', 'loc', 'landmarks'; or one stride: 's8', 's16', 's32') taken from the float model instead.
    The AP those lose against float is what is left of the int8 loss without that group's error."""

    GROUPS = ("conf", "loc", "landmarks", "s8", "s16", "s32")

    def __init__(self) -> None:
        self.found: dict[tuple[str, str], dict[str, np.ndarray]] = {}

    def add(self, stage: str, name: str, analyzer: FaceAnalyzer, pixels: np.ndarray,
            reference: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> None:
        """One photo's raw outputs, float (`reference`) and int8 (`test`), decoded by the int8 analyzer's
        detector with each group swapped in turn; rows [x1, y1, x2, y2, score] by (stage, group), then photo."""
        detector, settings = analyzer.detector, analyzer.profile.detector
        _, mapping = letterbox(pixels, detector.width, detector.height, detector.fill)
        for group in self.GROUPS:
            mixed = {role: reference[role] if group in role.split("_") else value for role, value in test.items()}
            faces = detector.postprocess(mixed, mapping, analyzer.score_threshold, settings.nms_iou,
                                         settings.max_faces)
            self.found.setdefault((stage, group), {})[name] = np.column_stack([faces.boxes, faces.scores])


class OutputErrors:
    """RMS of int8 minus float per RetinaFace stage, photo group and output kind ('conf': face logit, 'loc': box
    offsets, 'landmarks': landmark offsets), over the priors either precision scores AP_SCORE_THRESHOLD or more
    (the rest no threshold looks at). Steadier than AP on a few hundred photos, and it says which
    output the int8 loss comes from."""

    def __init__(self, group: Callable[[str], str]) -> None:
        self.group = group
        self.sums: dict[tuple[str, str, str], list[float]] = {}

    def add(self, stage: str, name: str, reference: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> None:
        """One photo's raw outputs, float (`reference`) and int8 (`test`), by role ('conf_s8', 'loc_s16', ...)."""
        lowest = logit_of(AP_SCORE_THRESHOLD)
        kept = {role.split("_s")[1]: np.maximum(reference[role], value).ravel() >= lowest  # priors, per stride
                for role, value in test.items() if role.startswith("conf_s")}
        for role, value in test.items():
            kind, stride = role.split("_s")
            difference = (value.astype(np.float64) - reference[role]).reshape(kept[stride].size, -1)[kept[stride]]
            if not difference.size:
                continue
            for key in ((stage, "all", kind), (stage, self.group(name), kind)):
                total = self.sums.setdefault(key, [0.0, 0])
                total[0] += float(np.sum(np.square(difference)))
                total[1] += difference.size

    def rms(self, stage: str) -> dict[str, dict[str, float]]:
        """Group -> output kind -> RMS error, for one stage ('all': every photo)."""
        table: dict[str, dict[str, float]] = {}
        for (key, group, kind), (squares, count) in sorted(self.sums.items()):
            if key == stage:
                table.setdefault(group, {})[kind] = math.sqrt(squares / count)
        return table


def _boxes(faces: list[Face]) -> np.ndarray:
    return np.array([face.box for face in faces], dtype=np.float64).reshape(-1, 4)


def _points(faces: list[Face]) -> np.ndarray:
    return np.array([face.landmarks for face in faces], dtype=np.float64).reshape(-1, 5, 2)


def wider_event(key: str) -> str:
    """The event of a WIDER image key ('0--Parade/0_Parade_marchingband_1_20' -> '0--Parade')."""
    return key.split("/")[0]


def wider_predictions(found: dict[str, list[Face]]) -> dict[str, np.ndarray]:
    """Faces by WIDER image key as the evaluator's [x1, y1, x2, y2, score] rows."""
    return {name: np.column_stack([_boxes(faces), [face.score for face in faces]]) for name, faces in found.items()}


def detection(data: Path, profile: Profile, subsets: Subsets, results: Results) -> list[dict[str, Any]]:
    """WIDER FACE val AP per setting, float vs int8, for each detector stage, over all images and per event (the
    int8 choices must hold on an event they were not tuned on), each drop with its 90 % paired-bootstrap interval
    over the images (`drop_interval`); for RetinaFace, the drop left with each group of outputs taken from float
    (`OutputSwaps`)."""
    root = data / "wider_val_dev"
    truth = load_ground_truth(root / "ground_truth")
    photos = {image_key(path.relative_to(root / "images").as_posix()): path
              for path in list_images(root / "images")[::subsets.wider_step]}
    stages = detector_stages(profile)
    errors, swaps = OutputErrors(wider_event), OutputSwaps()
    found = _detect_all(photos, _stage_analyzers(profile, stages, AP_SCORE_THRESHOLD), errors, swaps)
    rows = []
    for detector, size in stages:
        stage, ap, events = model_key(detector, size), {}, {}
        predictions = {p: wider_predictions(found[stage, p]) for p in PRECISIONS}
        for p in PRECISIONS:
            results.pr[f"{stage} {p}"] = curves = evaluate(predictions[p], truth)
            ap[p] = {setting: curves[setting].ap for setting in SETTINGS}
        for event in sorted({wider_event(key) for key in predictions["float"]}):
            part = {p: {k: v for k, v in predictions[p].items() if k.startswith(f"{event}/")} for p in PRECISIONS}
            by_precision = events[event] = {p: {s: r.ap for s, r in evaluate(part[p], truth).items()}
                                            for p in PRECISIONS}
            by_precision["drop"] = {s: by_precision["float"][s] - by_precision["int8"][s] for s in SETTINGS}
            by_precision["drop_interval"] = drop_interval(part["float"], part["int8"], truth)
        swapped = {group: evaluate(swaps.found[stage, group], truth) for group in OutputSwaps.GROUPS
                   if (stage, group) in swaps.found}
        rows.append({"model": stage, "detector": detector, "input_size": size, "images": len(photos), "ap": ap,
                     "drop": {s: ap["float"][s] - ap["int8"][s] for s in SETTINGS},
                     "drop_interval": drop_interval(predictions["float"], predictions["int8"], truth),
                     "events": events, "output_rms_error": errors.rms(stage),
                     "drop_with_float": {group: {s: ap["float"][s] - result[s].ap for s in SETTINGS}
                                         for group, result in swapped.items()}})
    return rows


def _reduce(statistic: Callable[[np.ndarray], Any], values: np.ndarray) -> float:
    """`statistic` of the values, NaN when there are none."""
    return float(statistic(values)) if values.size else float("nan")


def landmarks(data: Path, profile: Profile, results: Results) -> list[dict[str, Any]]:
    """NME of both detectors at the profile's sizes, float vs int8, over the faces both precisions find."""
    root = data / "dlib_landmarks"
    truth = {name: faces for xml in sorted(root.glob("*_with_face_landmarks.xml"))
             for name, faces in read_imglab(xml).items()}
    stages = [("retinaface", profile.detector.input_size), ("mtcnn", profile.mtcnn.input_size)]
    found = _detect_all({name: root / name for name in truth}, _stage_analyzers(profile, stages))
    rows = []
    for detector, size in stages:
        stage = model_key(detector, size)
        nme = {p: np.concatenate([face_nme(faces, _boxes(found[stage, p][name]), _points(found[stage, p][name]),
                                           LANDMARK_MIN_IOU) for name, faces in truth.items()]) for p in PRECISIONS}
        both = np.isfinite(nme["float"]) & np.isfinite(nme["int8"])
        mean = {p: _reduce(np.mean, nme[p][both]) for p in PRECISIONS}
        for p in PRECISIONS:
            results.nme[f"{stage} {p}"] = nme[p]
        rows.append({"model": stage, "detector": detector, "input_size": size, "faces": len(both),
                     "found": {p: int(np.isfinite(nme[p]).sum()) for p in PRECISIONS}, "both": int(both.sum()),
                     "mean_nme": mean, "median_nme": {p: _reduce(np.median, nme[p][both]) for p in PRECISIONS},
                     "increase": mean["int8"] - mean["float"]})
    return rows


Picker = Callable[[list[Face], tuple[int, ...]], Face]


def nearest_centre(faces: list[Face], shape: tuple[int, ...]) -> Face:
    """The face whose box centre is nearest the image centre (the subject of an LFW photo)."""
    return min(faces, key=lambda f: math.hypot((f.box[0] + f.box[2] - shape[1]) / 2,
                                               (f.box[1] + f.box[3] - shape[0]) / 2))


def largest(faces: list[Face], shape: tuple[int, ...]) -> Face:
    """The largest face."""
    return max(faces, key=lambda face: face.area)


def embed_photos(paths: list[Path], analyzers: dict[str, FaceAnalyzer],
                 pick: Picker) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per precision, each photo's picked face through that precision's detector and embedder (a NaN row
    when it finds no face); and cos(int8, float) of every float-picked face embedded by both embedders."""
    dim = analyzers["float"].embedder.dim
    vectors = {p: np.full((len(paths), dim), np.nan, np.float32) for p in PRECISIONS}
    cosine = []
    for row, path in enumerate(paths):
        pixels = load_image(path)
        for p, analyzer in analyzers.items():
            faces = analyzer.detect(pixels)
            if faces:
                points = np.array([pick(faces, pixels.shape).landmarks])
                vectors[p][row] = analyzer.embedder.embed(pixels, points)[0]
                if p == "float":
                    cosine.append(float(analyzers["int8"].embedder.embed(pixels, points)[0] @ vectors[p][row]))
    return vectors, np.array(cosine)


def lfw(data: Path, analyzers: dict[str, FaceAnalyzer], subsets: Subsets, results: Results) -> dict[str, Any]:
    """LFW protocol accuracy and TAR at FAR, float vs int8 pipelines; a pair missing a face scores -1."""
    root = data / "lfw_fold1"
    pairs = read_pairs(root / "pairs.txt")
    chosen = (np.arange(len(pairs)) if subsets.lfw_pairs is None
              else np.unique(np.linspace(0, len(pairs) - 1, subsets.lfw_pairs).round().astype(np.int64)))
    folds, how = protocol_folds(root / "pairs.txt", chosen)
    pairs = [pairs[i] for i in chosen]
    names = sorted({name for pair in pairs for name in (pair.first, pair.second)})
    vectors, cosine = embed_photos([root / "images" / name for name in names], analyzers, nearest_centre)
    results.cosine = np.concatenate([results.cosine, cosine])
    row = {name: i for i, name in enumerate(names)}
    first, second = [row[p.first] for p in pairs], [row[p.second] for p in pairs]
    same = np.array([p.same for p in pairs])
    section: dict[str, Any] = {"pairs": len(pairs), "images": len(names), "folds": how}
    for p in PRECISIONS:
        scores = np.nan_to_num(np.sum(vectors[p][first] * vectors[p][second], axis=1), nan=-1.0)
        far, tar, _ = roc(scores, same)
        results.roc[p] = (far, tar)
        section[p] = {"accuracy": protocol_accuracy(scores, same, folds),
                      "tar_at_far": {str(target): tar_at_far(scores, same, target) for target in FAR_TARGETS},
                      "images_without_face": int(np.isnan(vectors[p][:, 0]).sum())}
    section["accuracy_drop"] = section["float"]["accuracy"] - section["int8"]["accuracy"]
    return section


def _rates(result: OpenSetResult) -> dict[str, float]:
    return {"rank1": result.rank1, "correct_accept": result.correct_accept, "wrong_accept": result.wrong_accept,
            "false_accept": result.stranger_accept, "false_reject": result.false_reject}


def identification(data: Path, analyzers: dict[str, FaceAnalyzer], subsets: Subsets,
                   results: Results) -> dict[str, Any]:
    """CelebA open set (largest face per photo, photos where both precisions find one): rates at the profile's
    match threshold and at the threshold that accepts at most 1% of strangers."""
    root = data / "celeba_dev"
    rows = [(name, label) for name, label in (line.split() for line in
                                              (root / "identity.txt").read_text().splitlines() if line.strip())]
    if subsets.celeba_photos is not None:  # whole identities, by id, until there are enough photos
        counts, kept, total = Counter(label for _, label in rows), set(), 0
        for person in sorted(counts, key=int):
            if total >= subsets.celeba_photos:
                break
            kept.add(person)
            total += counts[person]
        rows = [(name, label) for name, label in rows if label in kept]
    vectors, cosine = embed_photos([root / "images" / name for name, _ in rows], analyzers, largest)
    results.cosine = np.concatenate([results.cosine, cosine])
    found = np.isfinite(vectors["float"][:, 0]) & np.isfinite(vectors["int8"][:, 0])
    labels = [rows[i][1] for i in np.flatnonzero(found)]
    enrolled, genuine, strangers = split_people(labels, ENROLL_PHOTOS)
    match_threshold = analyzers["float"].profile.recognition.match_threshold
    section: dict[str, Any] = {
        "photos": len(rows), "photos_without_face": int((~found).sum()), "people": len(set(labels)),
        "enrolled_people": len(enrolled), "photos_per_enrolled": ENROLL_PHOTOS, "genuine_probes": len(genuine),
        "stranger_probes": len(strangers), "match_threshold": match_threshold,
        "target_false_accept": TARGET_STRANGER_ACCEPT,
    }
    for p in PRECISIONS:
        embeddings = vectors[p][found]
        recommended = threshold_for(embeddings, labels, ENROLL_PHOTOS, TARGET_STRANGER_ACCEPT)
        at_match, at_recommended = open_set(embeddings, labels, ENROLL_PHOTOS,
                                            np.array([match_threshold, recommended]))
        section[p] = {"recommended_threshold": recommended, "at_match_threshold": _rates(at_match),
                      "at_recommended_threshold": _rates(at_recommended)}
    return section


def cosine_summary(cosine: np.ndarray) -> dict[str, float]:
    """Statistics of cos(int8, float) per face."""
    return {"faces": int(cosine.size), "mean": _reduce(np.mean, cosine), "median": _reduce(np.median, cosine),
            "p01": _reduce(lambda v: np.percentile(v, 1), cosine), "min": _reduce(np.min, cosine)}


def snr_db(reference: list[np.ndarray], test: list[np.ndarray]) -> float:
    """10 log10(signal power / error power) of `test` against `reference` over all elements (inf: identical)."""
    signal = sum(float(np.sum(np.square(r, dtype=np.float64))) for r in reference)
    noise = sum(float(np.sum(np.square(t.astype(np.float64) - r))) for r, t in zip(reference, test))
    return float("inf") if noise == 0 else 10 * float(np.log10(signal / noise))


def stage_models(stage: str) -> tuple[str, ...]:
    """The manifest keys of a stage: 'mtcnn-640' is P/R/O-Net, any other stage is its own model."""
    return ("pnet", "rnet", "onet") if stage.startswith("mtcnn") else (stage,)


def output_snr(profile: Profile, worst: Gate, photos: list[Path]) -> dict[str, Any]:
    """Per-output and per-tensor SNR of the worst stage's int8 models against float, on the inputs the float
    pipeline fed them while analysing `photos` (detection stages detect; the embedder's stage embeds)."""
    assert worst.stage is not None
    if worst.stage == "mobilefacenet":
        analyzer = _RecordingAnalyzer(profile, precision="float")
        for path in photos:
            analyzer.embed(path)
    else:
        detector, size = worst.stage.rsplit("-", 1)
        analyzer = _RecordingAnalyzer(profile, detector=detector, input_size=int(size), precision="float")
        for path in photos:
            analyzer.detect(path)
    runtime, manifest = profile.runtime, analyzer.manifest
    models: dict[str, dict[str, float]] = {}
    tensors: dict[str, list[dict[str, Any]]] = {}
    shown: dict[str, list[str]] = {}
    for key in stage_models(worst.stage):
        batches = analyzer.recorded[key].batches
        if not batches:  # e.g. no PNet proposal reached RNet
            continue
        outputs = {p: [TFLiteModel(manifest, manifest.get(key, p), threads=runtime.threads,
                                   delegate=runtime.delegate).run(b) for b in batches] for p in PRECISIONS}
        models[key] = {role: snr_db([o[role] for o in outputs["float"]], [o[role] for o in outputs["int8"]])
                       for role in outputs["float"][0]}
        rows = tensor_snr(manifest, key, batches, runtime.threads)
        tensors[key] = [row.to_json() for row in rows]
        shown[key] = [row.name for row in where_it_enters(rows)]
    return {"stage": worst.stage, "why": f"{worst.name} uses {worst.usage:.0%} of its allowance",
            "batches": {key: len(analyzer.recorded[key].batches) for key in models}, "models": models,
            "tensors": tensors, "tensors_shown": shown}


def check_quant(data: Path, profile: Profile, quick: bool, say: Callable[[str], None]) -> tuple[Results, list[Gate]]:
    """Measure everything, judge it by gates.toml and find the worst stage's SNR."""
    subsets = QUICK if quick else FULL
    results = Results()
    started = time.perf_counter()

    def step(text: str) -> None:
        say(f"check-quant [{time.perf_counter() - started:5.0f} s] {text}")

    step("detection on WIDER FACE val")
    rows = detection(data, profile, subsets, results)
    step("landmarks on dlib_landmarks")
    marks = landmarks(data, profile, results)
    analyzers = _analyzers(profile)
    step("recognition on LFW")
    verification = lfw(data, analyzers, subsets, results)
    step("open-set identification on CelebA")
    openset = identification(data, analyzers, subsets, results)
    manifest = analyzers["float"].manifest
    results.report = {
        "meta": {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": machine(),
                 "profile": profile.name, "data": str(data), "quick": quick, "gates_file": str(GATES_FILE),
                 "models": {key: spec.sha256[:12] for key, spec in sorted(manifest.models.items())}},
        "detection": rows, "landmarks": marks,
        "recognition": {"lfw": verification, "cosine": cosine_summary(results.cosine), "identification": openset},
    }
    gates = check(results.report, load_limits(quick=quick))
    worst = worst_stage(gates)
    step(f"per-output SNR of {worst.stage}")
    if worst.stage == "mobilefacenet":
        photos = [data / "lfw_fold1" / "images" / p.first for p in read_pairs(data / "lfw_fold1" / "pairs.txt")]
    else:
        photos = list_images(data / "wider_val_dev" / "images")[::subsets.wider_step]
    results.report["snr"] = output_snr(profile, worst, photos[:SNR_PHOTOS])
    results.report["gates"] = [gate.to_json() for gate in gates]
    results.report["passed"] = all(gate.passed for gate in gates)
    step("done")
    return results, gates


def _json_safe(value: Any) -> Any:
    """NaN and infinities as null (strict JSON)."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


def run(data: Path | None, profile_name: str, quick: bool, out: Path, as_json: bool) -> int:
    """The `check-quant` command: write report.md, report.json and the plots to `out`; 1 if a gate fails."""
    from edgeface.tools.evaluation.report import markdown, plots, summary

    root = require_data(data)
    profile = load_profile(profile_name)
    results, gates = check_quant(root, profile, quick, lambda text: print(text, file=sys.stderr, flush=True))
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_json_safe(results.report), indent=1)
    (out / "report.json").write_text(text + "\n")
    images = plots(results, out)
    (out / "report.md").write_text(markdown(results.report, images))
    print(text if as_json else summary(results.report, out))
    return 0 if all(gate.passed for gate in gates) else 1


def open_gallery_for(path: Path, analyzers: dict[str, FaceAnalyzer]) -> Gallery:
    """The gallery at `path` through whichever precision's embedding model enrolled it (both precisions' faces are
    then matched against the vectors as enrolled)."""
    if not path.is_file():
        raise GalleryError(f"{path}: no such gallery")
    errors = []
    for analyzer in analyzers.values():
        try:
            return analyzer.open_gallery(path)
        except GalleryError as error:
            errors.append(str(error))
    raise GalleryError(errors[-1])


def run_photos(photos: Path, gallery: Path | None, profile_name: str, out: Path, as_json: bool) -> int:
    """`check-quant --photos DIR [--gallery DB]`: float against int8 on unlabelled photos; report.md, report.json
    and plots in `out` (no gates)."""
    from edgeface.tools.evaluation.agreement import photo_agreement
    from edgeface.tools.evaluation.report import agreement_markdown, agreement_plots

    profile = load_profile(profile_name)
    paths = list_images(photos) if photos.is_dir() else [photos]
    if not paths:
        raise EdgefaceError(f"{photos}: no photos in this folder")
    analyzers = _analyzers(profile)
    people = open_gallery_for(gallery, analyzers) if gallery is not None else None
    threshold = profile.recognition.match_threshold
    try:
        report, found = photo_agreement(paths, analyzers, people, threshold)
    finally:
        if people is not None:
            people.close()
    report = {"meta": {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                       "profile": profile.name, "photos": str(photos), "gallery": str(gallery) if gallery else None},
              **report}
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_json_safe(report), indent=1)
    (out / "report.json").write_text(text + "\n")
    images = agreement_plots(found.cosine, found.similarities, threshold if people is not None else None, out)
    (out / "report.md").write_text(agreement_markdown(report, images))
    print(text if as_json else agreement_markdown(report, {}))
    return 0
