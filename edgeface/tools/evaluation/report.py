"""The check-quant report: report.md, the PNG plots (matplotlib, workstation only) and the terminal summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeface.tools.evaluation.agreement import NEAR_THRESHOLD as NEAR
from edgeface.tools.evaluation.results import Results
from edgeface.tools.evaluation.widerface import SETTINGS

PRECISIONS = ("float", "int8")
STYLE = {"float": "-", "int8": "--"}
OUTPUT_KINDS = ("conf", "loc", "landmarks")  # RetinaFace's outputs, without their strides


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def gates_table(report: dict[str, Any]) -> str:
    """The gates as a Markdown table."""
    return _table(["gate", "value", "rule", "result"],
                  [[g["name"], _number(g["value"], 4), f"{g['rule']} {g['limit']}", "PASS" if g["passed"] else "FAIL"]
                   for g in report["gates"]])


def _drop(part: dict[str, Any], setting: str) -> str:
    """'0.0123 [-0.0040, 0.0290]': an AP drop and, where measured, its interval."""
    interval = part.get("drop_interval", {}).get(setting)
    bounds = f" [{_number(interval[0], 4)}, {_number(interval[1], 4)}]" if interval else ""
    return f"{_number(part['drop'][setting], 4)}{bounds}"


def _shift(before: float, after: float, digits: int = 3) -> str:
    return f"{_number(before, digits)} → {_number(after, digits)} ({after - before:+.{digits}f})"


def markdown(report: dict[str, Any], images: dict[str, str]) -> str:
    """report.md: the gates, then every section with its table and plot."""
    meta, rec = report["meta"], report["recognition"]
    lfw, cos, ident = rec["lfw"], rec["cosine"], rec["identification"]
    m = meta["machine"]
    parts = [
        "# edgeface check-quant: int8 against float",
        f"{meta['date']} on {m['cpu']} ({m['cores']} cores, {m['runtime']}); profile `{meta['profile']}`; "
        f"data `{meta['data']}`; {'**quick** subset' if meta['quick'] else 'full data'}; gates from "
        f"`{Path(meta['gates_file']).name}`{' with its [quick] overrides' if meta['quick'] else ''}. "
        f"Result: **{'PASS' if report['passed'] else 'FAIL'}**.",
        "## Gates", gates_table(report),
        f"## Detection: WIDER FACE val AP, float → int8 ({report['detection'][0]['images']} images, score ≥ 0.02)",
        _table(["model", *SETTINGS], [[row["model"], *(_shift(row["ap"]["float"][s], row["ap"]["int8"][s])
                                                      for s in SETTINGS)] for row in report["detection"]]),
        "AP drop float → int8, all images and per event (each int8 choice must hold on the event it was not chosen "
        "on), with its 90 % interval over the images resampled (paired bootstrap: how far the same models' drop "
        "moves on other photos like these)",
        _table(["model", "event", *SETTINGS], [[row["model"], event, *(_drop(part, s) for s in SETTINGS)]
                                                for row in report["detection"]
                                                for event, part in [("all", row), *row.get("events", {}).items()]]),
        "Int8 output error, the same letterboxed photos through both: RMS of int8 − float per output kind (face "
        "logit, box and landmark offsets) on the priors either precision scores at least the AP threshold; steadier "
        "than AP on a few hundred photos",
        _table(["model", "event", *OUTPUT_KINDS],
               [[row["model"], group, *(_number(kinds.get(kind, float("nan")), 4) for kind in OUTPUT_KINDS)]
                for row in report["detection"] for group, kinds in row.get("output_rms_error", {}).items()]),
        "Where the loss is: AP drop float → int8, all images, with one group of int8 outputs replaced by float's "
        "(a kind at every stride, or every kind at one stride); what is left without that group's int8 error",
        _table(["model", "float outputs", *SETTINGS],
               [[row["model"], group, *(_number(drops[s], 4) for s in SETTINGS)]
                for row in report["detection"] for group, drops in row.get("drop_with_float", {}).items()]),
        " ".join(f"![{s}]({images[f'pr_{s}']})" for s in SETTINGS),
        "## Landmarks: NME over the inter-ocular distance, dlib 68-point faces (5 points derived), float → int8",
        _table(["model", "faces", "found float / int8", "mean NME (faces both find)", "median NME"],
               [[row["model"], str(row["faces"]), f"{row['found']['float']} / {row['found']['int8']}",
                 _shift(row["mean_nme"]["float"], row["mean_nme"]["int8"], 4),
                 _shift(row["median_nme"]["float"], row["median_nme"]["int8"], 4)] for row in report["landmarks"]]),
        f"![NME CDF]({images['nme_cdf']})",
        f"## Recognition: LFW verification ({lfw['pairs']} pairs, {lfw['images']} images; folds: {lfw['folds']}; "
        "the face nearest each image's centre; a pair missing a face scores -1)",
        _table(["pipeline", "accuracy", "TAR @ FAR 1e-2", "TAR @ FAR 1e-3", "images without a face"],
               [[p, _number(lfw[p]["accuracy"], 4), _number(lfw[p]["tar_at_far"]["0.01"], 4),
                 _number(lfw[p]["tar_at_far"]["0.001"], 4), str(lfw[p]["images_without_face"])] for p in PRECISIONS]),
        f"![ROC]({images['lfw_roc']})",
        f"Embedding agreement, the same aligned face through both embedders ({cos['faces']} LFW and CelebA faces): "
        f"cos(int8, float) mean {_number(cos['mean'], 4)}, median {_number(cos['median'], 4)}, "
        f"1st percentile {_number(cos['p01'], 4)}, min {_number(cos['min'], 4)}.",
        f"![cosine]({images['cosine_hist']})",
        f"## Open-set identification: CelebA ({ident['photos']} photos, largest face; {ident['enrolled_people']} "
        f"people enrolled with {ident['photos_per_enrolled']} photos, {ident['genuine_probes']} genuine probes, "
        f"{ident['stranger_probes']} stranger probes; {ident['photos_without_face']} photos without a face left out)",
        _table(["pipeline", "threshold", "rank-1", "correct accept", "false accept (strangers)", "false reject"],
               [[p, f"{_number(threshold)} ({label})", *(_number(rates[k]) for k in
                                                         ("rank1", "correct_accept", "false_accept", "false_reject"))]
                for p in PRECISIONS for label, threshold, rates in (
                    ("profile", ident["match_threshold"], ident[p]["at_match_threshold"]),
                    (f"recommended for {ident['target_false_accept']:.0%} false accept",
                     ident[p]["recommended_threshold"], ident[p]["at_recommended_threshold"]))]),
        f"## Per-output SNR of `{report['snr']['stage']}` (int8 against float on the same real inputs)",
        f"Chosen because {report['snr']['why']}.",
        _table(["model", "output", "SNR dB"], [[key, role, _number(db, 1)] for key, outputs in
                                               report["snr"]["models"].items() for role, db in outputs.items()]),
        "Where the int8 error enters and grows, tensor by tensor on the same inputs (TFLite's own kernels, "
        "edgeface.tools.tensor_snr; the table above ran the profile's delegate, whose int8 kernels round "
        "differently, so the same output can read a few dB apart): the first compared tensor, the largest "
        "drops (an op's output SNR below its lowest compared input's) and the outputs, in graph order, each with "
        "the SNR of the float values on its own int8 grid (the best it could hold; near it, the tensor's range is "
        "the limit, far above it, the error was carried in). A face-logit output starts at its floor, so both "
        "count the float values below it that no threshold reads. Every tensor in report.json",
        _table(["model", "tensor", "op", "shape", "SNR dB", "grid SNR dB", "drop dB"],
               [[key, row["name"], row["op"], "x".join(map(str, row["shape"])), _number(row["snr_db"], 1),
                 _number(row["grid_db"], 1), "" if row["drop_db"] is None else _number(row["drop_db"], 1)]
                for key, rows in report["snr"]["tensors"].items() for row in rows
                if row["name"] in report["snr"]["tensors_shown"][key]]),
    ]
    return "\n\n".join(parts) + "\n"


def summary(report: dict[str, Any], out: Path) -> str:
    """The terminal summary: headline numbers and the gates."""
    lfw, ident = report["recognition"]["lfw"], report["recognition"]["identification"]
    lines = [f"{row['model']:16s} AP easy/medium/hard float "
             + "/".join(_number(row["ap"]["float"][s]) for s in SETTINGS) + "  int8 "
             + "/".join(_number(row["ap"]["int8"][s]) for s in SETTINGS) for row in report["detection"]]
    lines += [f"{row['model']:16s} int8 output RMS error {'/'.join(OUTPUT_KINDS)} "
              + "/".join(_number(row["output_rms_error"]["all"].get(kind, float("nan"))) for kind in OUTPUT_KINDS)
              for row in report["detection"] if "all" in row.get("output_rms_error", {})]
    lines += [f"{row['model']:16s} NME float {_number(row['mean_nme']['float'], 4)}  int8 "
              f"{_number(row['mean_nme']['int8'], 4)}" for row in report["landmarks"]]
    lines += [f"LFW accuracy float {_number(lfw['float']['accuracy'], 4)}  int8 {_number(lfw['int8']['accuracy'], 4)}"
              f"  ({lfw['pairs']} pairs)",
              f"mean cos(int8, float) {_number(report['recognition']['cosine']['mean'], 4)}",
              f"CelebA open set int8 @ {ident['match_threshold']}: rank-1 "
              f"{_number(ident['int8']['at_match_threshold']['rank1'])}, false accept "
              f"{_number(ident['int8']['at_match_threshold']['false_accept'])}, false reject "
              f"{_number(ident['int8']['at_match_threshold']['false_reject'])}; threshold for "
              f"{ident['target_false_accept']:.0%} false accept: {_number(ident['int8']['recommended_threshold'])}",
              f"worst stage {report['snr']['stage']}: " + ", ".join(
                  f"{key}.{role} {_number(db, 1)} dB" for key, outputs in report["snr"]["models"].items()
                  for role, db in outputs.items()),
              "", gates_table(report), "",
              f"{'PASS' if report['passed'] else 'FAIL'}: report in {out / 'report.md'}"]
    return "\n".join(lines)


def plots(results: Results, out: Path) -> dict[str, str]:
    """Write the PNGs into `out`; returns file name by plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names: dict[str, str] = {}
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    def save(figure: Any, name: str) -> None:
        figure.tight_layout()
        figure.savefig(out / f"{name}.png", dpi=110)
        plt.close(figure)
        names[name] = f"{name}.png"

    stages = sorted({key.rsplit(" ", 1)[0] for key in results.pr})
    for setting in SETTINGS:
        figure, axes = plt.subplots(figsize=(6, 4.5))
        for colour, stage in zip(colours, stages):
            for p in PRECISIONS:
                curve = results.pr[f"{stage} {p}"][setting]
                axes.plot(curve.recall, curve.precision, STYLE[p], color=colour,
                          label=f"{stage} {p} (AP {curve.ap:.3f})")
        axes.set(xlabel="recall", ylabel="precision", title=f"WIDER FACE val {setting}", xlim=(0, 1), ylim=(0, 1.02))
        axes.legend(fontsize=7, loc="lower left")
        save(figure, f"pr_{setting}")

    figure, axes = plt.subplots(figsize=(6, 4.5))
    for colour, stage in zip(colours, sorted({key.rsplit(" ", 1)[0] for key in results.nme})):
        for p in PRECISIONS:
            values = results.nme[f"{stage} {p}"]
            ordered = np.sort(values[np.isfinite(values)])
            axes.step(ordered, np.arange(1, len(ordered) + 1) / len(values), STYLE[p], where="post", color=colour,
                      label=f"{stage} {p}")
    axes.set(xlabel="NME (inter-ocular)", ylabel="share of annotated faces", title="Landmark error CDF", ylim=(0, 1))
    axes.legend(fontsize=8)
    save(figure, "nme_cdf")

    figure, axes = plt.subplots(figsize=(6, 4.5))
    floor = 1.0
    for p in PRECISIONS:
        far, tar = results.roc[p]
        axes.step(far, tar, STYLE[p], where="post", label=p)
        floor = min(floor, float(tar[far <= 1e-3].max(initial=0.0)))
    axes.set_xscale("symlog", linthresh=1e-3)
    axes.set(xlabel="false accept rate", ylabel="true accept rate", title="LFW ROC", xlim=(0, 1),
             ylim=(max(0.0, floor - 0.05), 1.005))
    axes.legend()
    save(figure, "lfw_roc")

    figure, axes = plt.subplots(figsize=(6, 4))
    axes.hist(results.cosine, bins=50)
    axes.set(xlabel="cos(int8 embedding, float embedding)", ylabel="faces",
             title=f"Embedding agreement ({results.cosine.size} faces)")
    save(figure, "cosine_hist")
    return names


def agreement_markdown(report: dict[str, Any], images: dict[str, str]) -> str:
    """report.md of `check-quant --photos`: float and int8 on the user's own photos."""
    faces, only = report["faces"], report["found_by_one_only"]
    rows = [["photos (unreadable)", f"{report['photos']} ({len(report['unreadable'])})"],
            ["faces float / int8", f"{faces['float']} / {faces['int8']}"],
            ["found by both", str(report["matched_faces"])],
            ["found by float only / int8 only", f"{only['float']} / {only['int8']}"]]
    for key, label, worst in (("box_iou", "box IoU", ("min", "p05")),
                              ("landmark_shift", "landmark shift / face side", ("max", "p95")),
                              ("cosine_int8_float", "cos(int8, float)", ("min", "p05"))):
        stats = report[key]
        rows.append([f"{label}: mean, {worst[0]}, {worst[1].replace('p', '')}th percentile",
                     ", ".join(_number(stats[k], 4) for k in ("mean", *worst))])
    text = ["# check-quant on your photos: float against int8", "", _table(["", "value"], rows)]
    gallery = report.get("gallery")
    if gallery:
        shift, near = gallery["similarity_shift"], gallery["near_threshold"]
        text += ["", f"## Against the gallery (threshold {gallery['threshold']})", "", _table(["", "value"], [
            ["faces named differently", f"{gallery['identity_differs']:.2%}"],
            ["named by float / int8", f"{gallery['named_by_float']} / {gallery['named_by_int8']}"],
            ["similarity int8 - float: mean, min", f"{_number(shift['mean'], 4)}, {_number(shift['min'], 4)}"],
            [f"within {NEAR} of the threshold: faces, mean shift",
             f"{near['faces']}, {_number(near['shift']['mean'], 4)}"],
            ["int8 threshold with float's accept rate", _number(gallery["int8_threshold_same_accept_rate"], 4)]])]
    text += [f"\n![{name}]({file})" for name, file in images.items()]
    return "\n".join(text) + "\n"


def agreement_plots(cosine: list[float], similarities: list[tuple[float, float]], threshold: float | None,
                    out: Path) -> dict[str, str]:
    """cos(int8, float) per face, and with a gallery each face's similarity under both precisions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {}
    if cosine:
        figure, axes = plt.subplots(figsize=(6, 4))
        axes.hist(cosine, bins=50)
        axes.set(xlabel="cos(int8 embedding, float embedding)", ylabel="faces", title=f"{len(cosine)} faces")
        figure.tight_layout()
        figure.savefig(out / "cosine_hist.png", dpi=110)
        plt.close(figure)
        names["cosine_hist"] = "cosine_hist.png"
    if similarities and threshold is not None:
        figure, axes = plt.subplots(figsize=(5, 5))
        axes.scatter(*zip(*similarities), s=6)
        axes.axvline(threshold, color="grey", lw=0.8)
        axes.axhline(threshold, color="grey", lw=0.8)
        axes.set(xlabel="similarity, float", ylabel="similarity, int8", title="best gallery match per face")
        figure.tight_layout()
        figure.savefig(out / "similarity_scatter.png", dpi=110)
        plt.close(figure)
        names["similarity_scatter"] = "similarity_scatter.png"
    return names
