"""The `edgeface` command line contract: JSON lines, folders, options, bad inputs, clear errors, galleries."""

from __future__ import annotations

import json
import os
import pty
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeface import cli
from edgeface.cli import main
from edgeface.gallery import Gallery
from edgeface.manifest import Manifest
from edgeface.profiles import DEFAULT_PROFILE, load_profile

SCRIPT = Path(sys.executable).with_name("edgeface")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "edgeface.cli"]


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, list[str], list[str]]:
    """main() in-process: exit code, stdout lines, stderr lines."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def run_script(*args: object, env: dict[str, str] | None = None) -> tuple[int, str, list[str]]:
    """The console script in a subprocess: exit code, stdout, stderr messages (TFLite's INFO logs left out)."""
    done = subprocess.run([*COMMAND, *map(str, args)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})
    return done.returncode, done.stdout, _messages(done.stderr)


def _messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("INFO: ")]


def _records(lines: list[str]) -> list[dict]:
    return [json.loads(line) for line in lines]


def _box_iou(a: list[float], b: list[float]) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _largest(record: dict) -> dict:
    return max(record["faces"], key=lambda f: (f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]))


def _central(record: dict) -> dict:
    """The face whose box holds the image centre (the subject of an LFW photo)."""
    cx, cy = record["width"] / 2, record["height"] / 2
    [face] = [f for f in record["faces"] if f["box"][0] < cx < f["box"][2] and f["box"][1] < cy < f["box"][3]]
    return face


@pytest.fixture()
def any_image(tmp_path: Path) -> Path:
    """A small readable image for the tests that stop before any face is looked for."""
    path = tmp_path / "grey.jpg"
    Image.new("RGB", (32, 32), (128, 128, 128)).save(path)
    return path


@pytest.fixture(scope="module")
def lfw(data: Path) -> Path:
    return data / "lfw_fold1" / "images"


@pytest.fixture(scope="module")
def face_photo(lfw: Path) -> Path:
    return lfw / "Pervez_Musharraf" / "Pervez_Musharraf_0001.jpg"


@pytest.fixture(scope="module")
def group_photo(data: Path) -> Path:
    return data / "group_photos" / "ultraface_imgs_13.jpg"  # 450 x 344, two faces


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, face_photo: Path, group_photo: Path) -> Path:
    """A folder tree: a face, a 2x upscaled copy and the group photo in a sub-folder, an EXIF-rotated copy,
    and hidden files that must be skipped."""
    root = tmp_path_factory.mktemp("photos")
    (root / "b_dir").mkdir()
    (root / ".cache").mkdir()
    shutil.copy(face_photo, root / "a_face.jpg")
    shutil.copy(group_photo, root / "b_dir" / "group.jpg")
    with Image.open(face_photo) as face:
        face.resize((2 * face.width, 2 * face.height), Image.BICUBIC).save(root / "b_dir" / "face_x2.png")
    with Image.open(group_photo) as group:
        exif = Image.Exif()
        exif[0x0112] = 6  # stored turned left; viewers turn it right, upright again
        group.transpose(Image.Transpose.ROTATE_90).save(root / "c_rotated.jpg", exif=exif, quality=95)
    shutil.copy(face_photo, root / ".hidden.jpg")
    shutil.copy(face_photo, root / ".cache" / "face.jpg")
    return root


NAMES = ["a_face.jpg", "b_dir/face_x2.png", "b_dir/group.jpg", "c_rotated.jpg"]


def test_detect_folder_prints_one_json_object_per_image(capsys: pytest.CaptureFixture[str], manifest: Manifest,
                                                        photos: Path) -> None:
    code, out, _ = run(capsys, "detect", photos, "--json")
    assert code == 0
    records = _records(out)
    assert [r["image"] for r in records] == NAMES  # recursed, sorted, relative, hidden skipped
    sizes = {"a_face.jpg": (250, 250), "b_dir/face_x2.png": (500, 500), "b_dir/group.jpg": (450, 344),
             "c_rotated.jpg": (450, 344)}  # the rotated copy is reported upright
    for record in records:
        assert set(record) == {"image", "width", "height", "faces"}
        assert (record["width"], record["height"]) == sizes[record["image"]]
        assert record["faces"], record["image"]
        for face in record["faces"]:
            assert set(face) == {"box", "score", "landmarks"}
            x1, y1, x2, y2 = face["box"]
            assert 0 <= x1 < x2 <= record["width"] and 0 <= y1 < y2 <= record["height"]
            assert 0.5 < face["score"] <= 1
            assert np.shape(face["landmarks"]) == (5, 2)
    by_name = {r["image"]: r for r in records}
    assert len(by_name["b_dir/group.jpg"]["faces"]) == 2

    # Boxes are in original pixels: the 2x copy gives twice the box, the EXIF-rotated copy the same boxes.
    face, double = _largest(by_name["a_face.jpg"]), _largest(by_name["b_dir/face_x2.png"])
    width = face["box"][2] - face["box"][0]
    np.testing.assert_allclose(np.array(double["box"]) / 2, face["box"], atol=0.1 * width)
    np.testing.assert_allclose(np.array(double["landmarks"]) / 2, face["landmarks"], atol=0.1 * width)
    upright = sorted(f["box"] for f in by_name["b_dir/group.jpg"]["faces"])
    rotated = sorted(f["box"] for f in by_name["c_rotated.jpg"]["faces"])
    np.testing.assert_allclose(rotated, upright, atol=6)


def test_file_names_are_shown_as_given(capsys: pytest.CaptureFixture[str], manifest: Manifest, photos: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(photos)
    code, out, _ = run(capsys, "detect", "b_dir/group.jpg", photos / "a_face.jpg", "b_dir", "--json")
    assert code == 0
    assert [r["image"] for r in _records(out)] == [
        "b_dir/group.jpg", str(photos / "a_face.jpg"), "face_x2.png", "group.jpg"]


def test_text_output_names_each_image(capsys: pytest.CaptureFixture[str], manifest: Manifest, photos: Path) -> None:
    code, out, _ = run(capsys, "detect", photos / "b_dir")
    assert code == 0
    assert [line.split(":")[0] for line in out if not line.startswith(" ")] == ["face_x2.png", "group.jpg"]
    assert "group.jpg: 2 faces" in out


def test_embed_adds_unit_embeddings(capsys: pytest.CaptureFixture[str], manifest: Manifest, photos: Path) -> None:
    _, detected, _ = run(capsys, "detect", photos / "b_dir" / "group.jpg", "--json")
    code, out, _ = run(capsys, "embed", photos / "b_dir" / "group.jpg", "--json")
    assert code == 0
    [record], [reference] = _records(out), _records(detected)
    assert len(record["faces"]) == 2
    for face, plain in zip(record["faces"], reference["faces"]):
        assert set(face) == {"box", "score", "landmarks", "embedding"}
        assert face["box"] == plain["box"]
        vector = np.array(face["embedding"])
        assert vector.shape == (192,) and np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-4)
    a, b = (np.array(f["embedding"]) for f in record["faces"])
    assert float(a @ b) < 0.5  # two different people


@pytest.mark.parametrize("option", [["--detector", "mtcnn"], ["--precision", "float"], ["--input-size", "320"],
                                    ["--detector", "mtcnn", "--input-size", "320", "--precision", "float"]])
def test_detector_options_change_the_run(capsys: pytest.CaptureFixture[str], manifest: Manifest, face_photo: Path,
                                         option: list[str]) -> None:
    _, out, _ = run(capsys, "detect", face_photo, "--json")
    default = _largest(_records(out)[0])
    code, out, _ = run(capsys, "detect", face_photo, "--json", *option)
    assert code == 0
    [record] = _records(out)
    face = _largest(record)
    assert _box_iou(face["box"], default["box"]) > 0.6  # the same face...
    assert face["box"] != default["box"]  # ...found by another model
    assert np.abs(np.array(face["landmarks"]) - default["landmarks"]).max() < 15


def test_score_threshold(capsys: pytest.CaptureFixture[str], manifest: Manifest, data: Path) -> None:
    crowd = data / "group_photos" / "ultraface_imgs_8.jpg"  # many faces, scores from ~0.5 to 1
    _, out, _ = run(capsys, "detect", crowd, "--json")
    scores = sorted(f["score"] for f in _records(out)[0]["faces"])
    assert len(scores) > 10
    distinct = sorted(set(scores))
    middle = len(distinct) // 2  # halfway between two faces' (rounded) scores: no face sits on the threshold
    for threshold in (0.3, (distinct[middle - 1] + distinct[middle]) / 2):
        code, out, _ = run(capsys, "detect", crowd, "--json", "--score-threshold", threshold)
        assert code == 0
        found = [f["score"] for f in _records(out)[0]["faces"]]
        assert all(score > threshold for score in found)
        if threshold < scores[0]:
            assert len(found) > len(scores)
        else:
            assert 0 < len(found) < len(scores)


def test_a_threshold_below_the_models_floor_is_one_line(capsys: pytest.CaptureFixture[str], manifest: Manifest,
                                                        face_photo: Path) -> None:
    code, out, err = run(capsys, "detect", face_photo, "--json", "--score-threshold", "0.005")
    assert code != 0 and out == []
    assert len(err) == 1 and "score threshold 0.005 is below 0.01, the lowest RetinaFace accepts" in err[0]


@pytest.mark.parametrize("option", [["--input-size", "0"], ["--input-size", "-32"], ["--score-threshold", "1.5"]])
def test_bad_option_values_are_refused(capsys: pytest.CaptureFixture[str], any_image: Path,
                                       option: list[str]) -> None:
    try:
        code = main(["detect", str(any_image), "--json", *option])
    except SystemExit as stop:  # argparse's own refusal
        code = stop.code
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert option[0] in err or "threshold" in err


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


BAD = {  # file -> what its one stderr line must say
    "corrupt.jpg": "not a readable image",
    "empty.jpg": "empty",
    "huge.png": "too large",
    "notes.txt": "not a readable image",
    "text.jpg": "not a readable image",
    "truncated.jpg": "truncated",
}


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory, face_photo: Path) -> Path:
    root = tmp_path_factory.mktemp("messy")
    real = face_photo.read_bytes()
    shutil.copy(face_photo, root / "good.jpg")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8)
    (root / "truncated.jpg").write_bytes(real[: len(real) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("this is not a picture\n")
    (root / "notes.txt").write_text("photos from the trip\n")
    (root / "huge.png").write_bytes(_png_header(100_000, 100_000))
    return root


@pytest.mark.parametrize("as_json", [True, False])
def test_bad_files_are_reported_and_skipped(capsys: pytest.CaptureFixture[str], manifest: Manifest, messy: Path,
                                            as_json: bool) -> None:
    code, out, err = run(capsys, "detect", messy, *(["--json"] if as_json else []))
    assert code == 1
    for name, problem in BAD.items():
        [line] = [line for line in err if name in line]
        assert problem in line
    assert len(err) == len(BAD)
    if as_json:
        records = _records(out)
        assert [r["image"] for r in records] == sorted([*BAD, "good.jpg"])
        for record in records:
            if record["image"] == "good.jpg":
                assert len(record["faces"]) == 1
            else:
                assert set(record) == {"image", "error"} and BAD[record["image"]] in record["error"]
    else:
        assert out[0] == "good.jpg: 1 face" and not any(name in "\n".join(out) for name in BAD)


def test_progress_bar_stays_off_json_stdout(manifest: Manifest, photos: Path) -> None:
    master, terminal = pty.openpty()
    try:
        process = subprocess.Popen([*COMMAND, "detect", str(photos), "--json"], stdout=subprocess.PIPE,
                                   stderr=terminal)
        os.close(terminal)
        out, _ = process.communicate(timeout=120)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the terminal's other side has closed
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
    assert process.returncode == 0
    assert [json.loads(line)["image"] for line in out.decode().splitlines()] == NAMES
    assert b"4/4" in shown and b"[####" in shown  # the bar was drawn, on the terminal only


def test_closed_stdout_ends_quietly(manifest: Manifest, photos: Path) -> None:
    process = subprocess.Popen([*COMMAND, "detect", str(photos), "--json"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # like `edgeface detect ... | head -0`
    err = process.stderr.read()
    process.wait(timeout=120)
    assert process.returncode != 0
    assert "Traceback" not in err and "Exception ignored" not in err


def test_unknown_profile(any_image: Path) -> None:
    code, out, err = run_script("detect", any_image, "--profile", "rpi9")
    assert code != 0 and out == ""
    assert len(err) == 1 and "rpi9" in err[0] and "Traceback" not in err[0]


def test_missing_models(tmp_path: Path, any_image: Path) -> None:
    code, out, err = run_script("detect", any_image, "--json", env={"EDGEFACE_MODELS": str(tmp_path)})
    assert code != 0 and out == ""
    assert len(err) == 1 and str(tmp_path) in err[0] and "EDGEFACE_MODELS" in err[0]
    assert "python -m convert" in err[0] and "make" not in err[0]


@pytest.mark.parametrize("command", [["identify", "IMAGE"], ["gallery", "list"]])
def test_gallery_from_another_model(manifest: Manifest, tmp_path: Path, any_image: Path,
                                    command: list[str]) -> None:
    db = tmp_path / "old.db"
    Gallery(db, "0" * 64, 192).close()
    args = [str(any_image) if arg == "IMAGE" else arg for arg in command]
    code, out, err = run_script(*args, "--gallery", db)
    assert code != 0 and out == ""
    assert len(err) == 1 and "old.db" in err[0] and "another model" in err[0]


@pytest.mark.parametrize("command", [["gallery", "list"], ["gallery", "remove", "Bob"], ["identify", "IMAGE"]])
def test_gallery_commands_need_an_existing_gallery(capsys: pytest.CaptureFixture[str], manifest: Manifest,
                                                   tmp_path: Path, any_image: Path, command: list[str]) -> None:
    args = [any_image if arg == "IMAGE" else arg for arg in command]
    code, out, err = run(capsys, *args, "--gallery", tmp_path / "typo.db")
    assert code == 2 and out == [] and len(err) == 1 and "typo.db" in err[0]
    assert not (tmp_path / "typo.db").exists()  # not silently created (and every face called unknown)


def test_enroll_identify_and_manage_a_gallery(capsys: pytest.CaptureFixture[str], manifest: Manifest,
                                              tmp_path: Path, lfw: Path) -> None:
    alice, bob, stranger = "Pervez_Musharraf", "Jennifer_Garner", "Vaclav_Havel"
    alice_photos = sorted((lfw / alice).glob("*.jpg"))
    bob_photos = sorted((lfw / bob).glob("*.jpg"))
    folder = tmp_path / "people" / alice
    folder.mkdir(parents=True)
    for photo in alice_photos[:3]:
        shutil.copy(photo, folder)
    db = tmp_path / "gallery.db"

    # One sub-folder per person, and 'Name_0001.jpg' files given one by one.
    code, out, err = run(capsys, "enroll", tmp_path / "people", *bob_photos[:3], "--gallery", db, "--face", "largest")
    assert code == 0, err
    assert out == [f"enrolled 6 photo(s), 0 already enrolled; gallery {db} holds 2 people; skipped 0"]
    code, out, _ = run(capsys, "gallery", "list", "--gallery", db)
    assert code == 0 and out == [f"{bob}\t3\talways", f"{alice}\t3\talways"]  # name, embeddings, access rules

    queries = [alice_photos[3], bob_photos[3], sorted((lfw / stranger).glob("*.jpg"))[0]]
    code, out, _ = run(capsys, "identify", *queries, "--gallery", db, "--json")
    assert code == 0
    records = _records(out)
    assert [r["image"] for r in records] == [str(q) for q in queries]
    answers = [_central(r) for r in records]
    assert [a["identity"] for a in answers] == [alice, bob, "unknown"]
    threshold = load_profile(DEFAULT_PROFILE).recognition.match_threshold
    assert [a["similarity"] >= threshold for a in answers] == [True, True, False]
    assert np.shape(answers[0]["embedding"]) == (192,)

    code, out, err = run(capsys, "identify", queries[0], "--gallery", db, "--precision", "float")
    assert code == 2 and out == [] and len(err) == 1 and "another model" in err[0]

    code, out, _ = run(capsys, "gallery", "remove", bob, "--gallery", db)
    assert code == 0 and out == [f"removed {bob} (3 embedding(s))"]
    code, out, _ = run(capsys, "gallery", "list", "--gallery", db)
    assert out == [f"{alice}\t3\talways"]
    code, out, _ = run(capsys, "identify", queries[1], "--gallery", db, "--json")
    assert _central(_records(out)[0])["identity"] == "unknown"
    code, out, err = run(capsys, "gallery", "remove", bob, "--gallery", db)
    assert code == 2 and len(err) == 1 and bob in err[0]


def test_enroll_refuses_an_ambiguous_photo(capsys: pytest.CaptureFixture[str], manifest: Manifest, tmp_path: Path,
                                           group_photo: Path) -> None:
    code, out, err = run(capsys, "enroll", group_photo, "--name", "Someone", "--gallery", tmp_path / "g.db")
    assert code == 1
    assert len(err) == 1 and group_photo.name in err[0] and "2 faces" in err[0]
    assert out == [f"enrolled 0 photo(s), 0 already enrolled; gallery {tmp_path / 'g.db'} holds 0 people; skipped 1"]


def test_verify(capsys: pytest.CaptureFixture[str], manifest: Manifest, lfw: Path) -> None:
    same = sorted((lfw / "Pervez_Musharraf").glob("*.jpg"))[:2]
    other = sorted((lfw / "Vaclav_Havel").glob("*.jpg"))[0]
    code, out, _ = run(capsys, "verify", *same, "--json")
    assert code == 0
    [record] = _records(out)
    assert set(record) == {"similarity", "threshold", "same"}
    assert record["same"] is True and record["similarity"] >= record["threshold"]
    code, out, _ = run(capsys, "verify", same[0], other)
    assert code == 0 and len(out) == 1 and out[0].startswith("different people: similarity ")


@pytest.mark.parametrize("command", [["check-quant"], ["check-edgetpu", "x.tflite"], ["bench", "--side-by-side"],
                                     ["bench", "--against=python3"]])
def test_workstation_tools_are_refused_in_one_line_where_absent(command: list[str], monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """As on the board, whose wheel has no edgeface.tools: one line naming the tool, never argparse's usage."""
    monkeypatch.setattr(cli, "tools_installed", lambda: False)
    assert cli.main(command) == 2
    err = capsys.readouterr().err
    tool = command[1].split("=")[0] if command[0] == "bench" else command[0]
    assert err.count("\n") == 1 and f"error: {tool} is a workstation tool" in err


def test_a_missing_extra_package_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    def needs_tflite(args: object) -> int:
        raise ModuleNotFoundError("No module named 'tflite'", name="tflite")

    monkeypatch.setattr(cli, "cmd_check_edgetpu", needs_tflite)
    assert cli.main(["check-edgetpu", "x.tflite"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'tflite'" in err and "Traceback" not in err
