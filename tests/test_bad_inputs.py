"""Every bad input gets one clear line and the run goes on: the walker, image inputs, galleries, options."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import raw_sqlite
from PIL import Image

from edgeface.analyzer import Enrolment, Face, FaceAnalyzer, choose_face
from edgeface.cli import main
from edgeface.errors import GalleryError, ImageError, ProfileError
from edgeface.gallery import SCHEMA_VERSION, Gallery
from edgeface.images import content_sha256, iter_inputs, list_images, load_image
from edgeface.profiles import load_profile

MODEL = "c3" * 32
DIM = 8


def _jpeg(path: Path, width: int = 64, height: int = 48) -> Path:
    Image.new("RGB", (width, height), (200, 120, 40)).save(path)
    return path


def _unit(n: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, DIM))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _usage_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """main() must refuse `args` as argparse does (exit 2), on stderr, without a traceback."""
    with pytest.raises(SystemExit) as stop:
        main(list(args))
    out, err = capsys.readouterr()
    assert stop.value.code == 2 and out == "" and "Traceback" not in err
    return err


# --- the one folder walker -------------------------------------------------------------------------------------

def test_walker_reports_what_it_cannot_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "photos"
    (root / "real").mkdir(parents=True)
    (root / "locked").mkdir()
    (root / "empty").mkdir()
    _jpeg(root / "real" / "a.jpg")
    _jpeg(root / ".hidden.jpg")
    (root / "linked").symlink_to(root / "real")  # a symlinked folder is followed
    (root / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (root / "real" / "loop").symlink_to(root)  # a folder inside itself
    os.mkfifo(root / "pipe.jpg")  # reading it would block forever
    scandir = os.scandir

    def refusing(path: object) -> object:
        if Path(str(path)).name == "locked":  # as for a folder without read permission (we may run as root)
            raise PermissionError(13, "Permission denied")
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    found = {item.name: item.problem for item in iter_inputs([root])}
    assert found == {
        "dangling.jpg": "broken symlink (its target is missing)",
        "linked/a.jpg": None,
        "linked/loop": "symlink loop (a folder inside itself), skipped",
        "locked": "cannot read this folder (Permission denied)",
        "pipe.jpg": "not a regular file (a fifo, socket or device)",
        "real/a.jpg": None,
        "real/loop": "symlink loop (a folder inside itself), skipped",
    }
    assert [(i.name, i.problem) for i in iter_inputs([root / "empty"])] == [
        (str(root / "empty"), "no files in this folder")]
    with pytest.raises(ImageError, match="dangling.jpg: broken symlink"):
        list_images(root)  # the same rules, for the tools that read image folders
    assert list_images(root / "empty") == []


def test_list_images_follows_the_walker_rules(tmp_path: Path) -> None:
    _jpeg(tmp_path / "b.jpg")
    _jpeg(tmp_path / ".skipped.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    _jpeg(tmp_path / "sub" / "a.png")
    assert list_images(tmp_path) == [tmp_path / "b.jpg", tmp_path / "sub" / "a.png"]


# --- images given to the API ------------------------------------------------------------------------------------

RGB = np.zeros((4, 6, 3), np.uint8)

ODD_ARRAYS = {  # array -> what its ImageError must say
    "grey": (np.zeros((4, 6), np.uint8), "grey"),
    "grey HxWx1": (np.zeros((4, 6, 1), np.uint8), "grey"),
    "RGBA": (np.zeros((4, 6, 4), np.uint8), "RGBA"),
    "float": (np.zeros((4, 6, 3), np.float32), "float32"),
    "NaN": (np.full((4, 6, 3), np.nan), "float64"),
    "bool": (np.zeros((4, 6, 3), bool), "bool"),
    "uint16": (np.zeros((4, 6, 3), np.uint16), "uint16"),
    "CHW": (np.zeros((3, 4, 6), np.uint8), "channels first"),
    "0x0": (np.zeros((0, 0, 3), np.uint8), "empty"),
    "1-d": (np.zeros(12, np.uint8), "not an image"),
}


@pytest.mark.parametrize("kind", ODD_ARRAYS)
def test_odd_arrays_are_refused_with_the_fix(kind: str) -> None:
    array, problem = ODD_ARRAYS[kind]
    with pytest.raises(ImageError, match="image array") as info:
        load_image(array)
    assert problem in str(info.value)


@pytest.mark.parametrize("value", [None, 3, ["a.jpg"], b"", b"not an image", Image.new("RGB", (0, 0))])
def test_other_odd_inputs_are_refused(value: object) -> None:
    with pytest.raises(ImageError):
        load_image(value)  # type: ignore[arg-type]


def test_every_kind_of_input_gives_the_same_pixels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = tmp_path / "p.png"
    Image.fromarray(pixels).save(path)
    for given in (path, str(path), path.read_bytes(), Image.open(path), pixels):
        np.testing.assert_array_equal(load_image(given), pixels)
    np.testing.assert_array_equal(load_image(np.ascontiguousarray(pixels[..., ::-1]), bgr=True), pixels)
    assert content_sha256(path) == content_sha256(path.read_bytes()) != content_sha256(pixels)


def test_huge_jpeg_is_decoded_reduced_and_other_huge_images_refused(tmp_path: Path) -> None:
    big = _jpeg(tmp_path / "big.jpg", 1600, 1200)
    assert load_image(big).shape == (1200, 1600, 3)
    assert load_image(big, max_pixels=1_000_000).shape == (600, 800, 3)  # JPEG draft: decoded at 1/2
    assert load_image(big, max_pixels=30_000).shape == (150, 200, 3)  # ... at 1/8
    with pytest.raises(ImageError, match=r"1600x1200 is too large \(limit 20000 pixels"):
        load_image(big, max_pixels=20_000)  # even 1/8 is over
    mpo = tmp_path / "camera.jpg"  # what many cameras write: a JPEG with a second picture after it (MPO)
    Image.new("RGB", (1600, 1200)).save(mpo, "MPO", save_all=True, append_images=[Image.new("RGB", (160, 120))])
    with Image.open(mpo) as opened:
        assert opened.format == "MPO"
    assert load_image(mpo, max_pixels=1_000_000).shape == (600, 800, 3)
    png = tmp_path / "big.png"
    Image.new("RGB", (1600, 1200)).save(png)
    with pytest.raises(ImageError, match="too large"):
        load_image(png, max_pixels=1_000_000)


def test_every_profile_caps_image_pixels_within_its_ram() -> None:
    caps = {name: load_profile(name).runtime.max_image_pixels for name in ("rpi-zero2w", "rpi4", "x86")}
    assert caps["rpi-zero2w"] * 10 < 256 * 2**20  # about 10 bytes a pixel while loading; the board has 512 MB
    assert caps["rpi-zero2w"] < caps["rpi4"] < caps["x86"]


def test_profile_image_cap_is_validated(tmp_path: Path) -> None:
    text = load_profile("x86").path.read_text().replace("max_image_pixels = 100_000_000", "max_image_pixels = 10")
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    with pytest.raises(ProfileError, match=r"runtime\.max_image_pixels: must be at least 1000000, got 10"):
        load_profile(path)


# --- overrides go through the profile's validation ----------------------------------------------------------------

@pytest.mark.parametrize("overrides, problem", [
    ({"precision": "fp16"}, r"runtime\.precision: must be one of"),
    ({"detector": "mtcnn", "input_size": 100_000}, r"mtcnn\.input_size: must be an even integer from 64 to 2048"),
    ({"input_size": 2}, r"detector\.input_size: must be one of 320, 640"),
    ({"score_threshold": 1.5}, r"detector\.score_threshold"),
    ({"detector": "haar"}, r"detector\.name"),
])
def test_analyzer_overrides_are_validated(overrides: dict, problem: str) -> None:
    with pytest.raises(ProfileError, match=problem) as info:
        FaceAnalyzer("x86", **overrides)
    assert "make models" not in str(info.value)


@pytest.mark.parametrize("option", [["--detector", "mtcnn", "--input-size", "100000"], ["--input-size", "2"]])
def test_cli_overrides_are_validated(capsys: pytest.CaptureFixture[str], tmp_path: Path, option: list[str]) -> None:
    code = main(["detect", str(_jpeg(tmp_path / "a.jpg")), *option])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    [line] = err.splitlines()
    assert line.startswith("edgeface: error: ") and "input_size" in line


def test_profiles_lists_past_a_broken_profile(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a-broken.toml").write_text("garbage = [\n")
    (tmp_path / "x86.toml").write_text(load_profile("x86").path.read_text())
    monkeypatch.setenv("EDGEFACE_PROFILES", str(tmp_path))
    code = main(["profiles"])
    out, err = capsys.readouterr()
    assert code == 1 and out.startswith("x86 ")
    [line] = err.splitlines()
    assert line.startswith("edgeface: ") and "a-broken.toml: invalid TOML" in line


def test_face_option_takes_largest_in_any_case_or_an_index(capsys: pytest.CaptureFixture[str]) -> None:
    err = _usage_error(capsys, "enroll", "a.jpg", "--gallery", "g.db", "--face", "x")
    assert "--face" in err and "'x'" in err
    faces = [Face((0, 0, 10, 10), 0.9, []), Face((0, 0, 30, 30), 0.8, [])]
    assert choose_face(faces, "LARGEST") is faces[1]
    assert choose_face(faces, 0) is faces[0]
    with pytest.raises(ImageError, match="only 2"):
        choose_face(faces, 2)


def test_enroll_refuses_an_empty_name(capsys: pytest.CaptureFixture[str]) -> None:
    err = _usage_error(capsys, "enroll", "a.jpg", "--gallery", "g.db", "--name", " ")
    assert "--name" in err and "empty" in err


def test_version() -> None:
    for command in ([sys.executable, "-m", "edgeface", "--version"],
                    [str(Path(sys.executable).with_name("edgeface")), "--version"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.strip() == f"edgeface {__import__('edgeface').__version__}"
    from importlib.metadata import version

    import edgeface

    assert edgeface.__version__ == version("edgeface")
    assert edgeface.FaceAnalyzer is FaceAnalyzer and edgeface.load_image is load_image
    assert {"FaceAnalyzer", "Face", "Gallery", "load_image", "__version__"} <= set(edgeface.__all__)


# --- the gallery: every SQLite failure is a GalleryError naming the file -----------------------------------------

@pytest.fixture()
def db(tmp_path: Path) -> Path:
    path = tmp_path / "g.db"
    with Gallery(path, MODEL, DIM) as gallery:
        gallery.add("Alice", _unit(2), ["a1.jpg", "a2.jpg"])
    return path


def test_read_only_gallery(db: Path) -> None:
    with Gallery(db, MODEL, DIM) as gallery:
        gallery._db.execute("PRAGMA query_only = ON")  # what a read-only file does to writes (we may run as root)
        for write in (lambda: gallery.add("Bob", _unit(1)), lambda: gallery.remove("Alice")):
            with pytest.raises(GalleryError, match=f"{db}: cannot .*readonly"):
                write()
        assert gallery.people() == [("Alice", 2)]


def test_full_disk(db: Path) -> None:
    with Gallery(db, MODEL, DIM) as gallery:
        (pages,) = gallery._db.execute("PRAGMA page_count").fetchone()
        gallery._db.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(GalleryError, match=f"{db}: cannot enroll 'Bob' .*full"):
            gallery.add("Bob", _unit(2000, 1))
    with Gallery(db, MODEL, DIM) as gallery:
        assert gallery.people() == [("Alice", 2)]  # nothing half-written


def test_commit_that_fails_rolls_back(db: Path) -> None:
    with Gallery(db, MODEL, DIM) as gallery:
        def refuse_commit(action: int, arg1: str | None, *_: object) -> int:
            commit = action == sqlite3.SQLITE_TRANSACTION and arg1 == "COMMIT"
            return sqlite3.SQLITE_DENY if commit else sqlite3.SQLITE_OK

        gallery._db.set_authorizer(refuse_commit)  # as a full disk fails the COMMIT that writes the WAL
        with pytest.raises(GalleryError, match=f"{db}: cannot enroll 'Bob' \\(not authorized\\)"):
            gallery.add("Bob", _unit(1))
        gallery._db.set_authorizer(None)
        assert not gallery._db.in_transaction and gallery.people() == [("Alice", 2)]
        assert gallery.add("Bob", _unit(1)) == 1  # the connection is still usable


def test_lock_held_past_the_timeout(db: Path) -> None:
    with Gallery(db, MODEL, DIM, timeout=0.05) as gallery, raw_sqlite(db, isolation_level=None) as other:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(GalleryError, match=f"{db}: cannot enroll 'Bob' \\(database is locked\\)"):
            gallery.add("Bob", _unit(1))
        other.execute("ROLLBACK")


def test_dropped_table(db: Path) -> None:
    with Gallery(db, MODEL, DIM) as gallery:
        with raw_sqlite(db) as raw:
            raw.execute("DROP TABLE embeddings")  # while the gallery is open
        with pytest.raises(GalleryError, match=f"{db}: cannot read the gallery \\(no such table: embeddings\\)"):
            gallery.identify(_unit(1), 0.5)
    with pytest.raises(GalleryError, match=f"{db}: a damaged gallery \\(its embeddings table is missing\\)"):
        Gallery(db, MODEL, DIM)  # and when it is opened again


def test_damaged_vector_is_skipped_not_fatal(db: Path) -> None:
    with raw_sqlite(db) as raw:
        raw.execute("UPDATE embeddings SET vector = x'0102' WHERE source = 'a1.jpg'")
    with Gallery(db, MODEL, DIM) as gallery:
        [(name, similarity)] = gallery.identify(_unit(2)[1:], 0.5)
        assert (name, round(similarity, 4)) == ("Alice", 1.0)  # the intact vector still matches
        assert gallery.damaged() == 1


def test_empty_file_is_no_existing_gallery(tmp_path: Path) -> None:
    empty = tmp_path / "zero.db"
    empty.touch()
    with pytest.raises(GalleryError, match="zero.db: an empty file, not a gallery"):
        Gallery(empty, MODEL, DIM, create=False)
    assert empty.stat().st_size == 0  # no schema written into it
    with pytest.raises(GalleryError, match="no such gallery"):
        Gallery(tmp_path / "missing.db", MODEL, DIM, create=False)


def test_undecodable_file_names_are_stored_escaped(tmp_path: Path) -> None:
    name, source = os.fsdecode(b"Ren\xe9"), os.fsdecode(b"/photos/Ren\xe9/1.jpg")
    with Gallery(tmp_path / "g.db", MODEL, DIM) as gallery:
        gallery.add(name, _unit(1), [source])
        assert gallery.people() == [("Ren\\xe9", 1)]
        assert gallery.identify(_unit(1), 0.5)[0][0] == "Ren\\xe9"
    with raw_sqlite(tmp_path / "g.db") as raw:
        assert raw.execute("SELECT source FROM embeddings").fetchone()[0] == "/photos/Ren\\xe9/1.jpg"


@pytest.mark.parametrize("name", ["unknown", "x" * 201, "tab\there"])
def test_invalid_names_are_refused_before_any_write(db: Path, name: str) -> None:
    with Gallery(db, MODEL, DIM) as gallery:
        with pytest.raises(GalleryError, match="reserved|over 200 characters|control characters"):
            gallery.valid_name(name)
        assert gallery.people() == [("Alice", 2)]


# --- nothing doubled: content digests, --replace, the schema migration -----------------------------------------

def test_same_photo_is_not_enrolled_twice(tmp_path: Path) -> None:
    with Gallery(tmp_path / "g.db", MODEL, DIM) as gallery:
        assert gallery.add("Bob", _unit(2), ["1.jpg", "2.jpg"], ["d1", "d2"]) == 2
        assert gallery.add("Bob", _unit(2, 1), ["1 copy.jpg", "3.jpg"], ["d1", "d3"]) == 3  # d1 is there already
        assert gallery.has("Bob", "d3") and not gallery.has("Carol", "d3")
        assert gallery.add("Carol", _unit(1), ["1.jpg"], ["d1"]) == 1  # per person


def test_replace_swaps_a_person_in_one_transaction(tmp_path: Path) -> None:
    with Gallery(tmp_path / "g.db", MODEL, DIM) as gallery:
        gallery.add("Bob", _unit(3), None, ["d1", "d2", "d3"])
        gallery.add("Carol", _unit(1, 2))
        assert gallery.add("Bob", _unit(1, 1), None, ["d4"], replace=True) == 1
        assert gallery.people() == [("Bob", 1), ("Carol", 1)]
        assert gallery.identify(_unit(1, 1), 0.9)[0][0] == "Bob"
        gallery._db.execute("PRAGMA query_only = ON")
        with pytest.raises(GalleryError):
            gallery.add("Bob", _unit(1, 3), None, ["d5"], replace=True)
        gallery._db.execute("PRAGMA query_only = OFF")
        assert gallery.has("Bob", "d4")  # a failed replace keeps the old embeddings


SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, created REAL);
CREATE TABLE embeddings (id INTEGER PRIMARY KEY, person_id INTEGER NOT NULL REFERENCES people (id)
    ON DELETE CASCADE, vector BLOB NOT NULL, source TEXT, created REAL);
CREATE INDEX embeddings_person ON embeddings (person_id);
"""


def test_schema_1_gallery_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with raw_sqlite(path) as raw:
        raw.executescript(SCHEMA_1)
        raw.executemany("INSERT INTO meta VALUES (?, ?)", [("schema_version", "1"),
                        ("embedding_model_sha256", MODEL), ("embedding_dim", str(DIM))])
        raw.execute("INSERT INTO people VALUES (1, 'Dora', 0)")
        raw.execute("INSERT INTO embeddings VALUES (1, 1, ?, 'd.jpg', 0)", (_unit(1)[0].astype(np.float32).tobytes(),))
    with Gallery(path, MODEL, DIM) as gallery:
        assert gallery.people() == [("Dora", 1)]
        assert gallery.add("Dora", _unit(1, 1), None, ["d2"]) == 2
    with raw_sqlite(path) as raw:
        assert raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
        assert [row[1] for row in raw.execute("PRAGMA table_info(embeddings)")][-1] == "content_sha256"


def test_a_current_version_lacking_a_column_gets_it(tmp_path: Path) -> None:
    """Two branches each adding columns as schema 2 merge as the union: a gallery is checked column by column."""
    path = tmp_path / "other-branch.db"
    with raw_sqlite(path) as raw:
        raw.executescript(SCHEMA_1)
        raw.executemany("INSERT INTO meta VALUES (?, ?)", [("schema_version", str(SCHEMA_VERSION)),
                        ("embedding_model_sha256", MODEL), ("embedding_dim", str(DIM))])
    with Gallery(path, MODEL, DIM) as gallery:
        assert gallery.add("Eve", _unit(1), None, ["e1"]) == 1 and gallery.has("Eve", "e1")


def test_new_gallery_is_created_at_the_current_schema(tmp_path: Path) -> None:
    Gallery(tmp_path / "new.db", MODEL, DIM).close()
    with raw_sqlite(tmp_path / "new.db") as raw:
        assert raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "2"
    assert SCHEMA_VERSION == 2



# --- with the models: the CLI and the API on real photos ---------------------------------------------------------

SCRIPT = Path(sys.executable).with_name("edgeface")


def _script(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, timeout=300,
                          env={**os.environ, **(env or {})})


def _errors(stderr: bytes) -> list[str]:
    """stderr lines, TFLite's INFO logs left out; none may be a traceback."""
    text = stderr.decode("utf-8", "replace")
    assert "Traceback" not in text, text
    return [line for line in text.splitlines() if line.strip() and not line.startswith("INFO: ")]


@pytest.fixture(scope="module")
def lfw(data: Path) -> Path:
    return data / "lfw_fold1" / "images"


@pytest.fixture(scope="module")
def analyzer(manifest: object) -> FaceAnalyzer:
    with FaceAnalyzer("x86") as face_analyzer:
        yield face_analyzer


def _photos(lfw: Path, person: str, count: int) -> list[Path]:
    return sorted((lfw / person).glob("*.jpg"))[:count]


def test_plain_text_output_survives_undecodable_file_names(tmp_path: Path, manifest: object, lfw: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    face = _photos(lfw, "Pervez_Musharraf", 1)[0].read_bytes()
    (folder / os.fsdecode(b"caf\xe9.jpg")).write_bytes(face)
    (folder / "new\nline.jpg").write_bytes(face)
    (folder / "z\x1e.jpg").write_bytes(b"broken")
    done = _script("detect", folder, env={"PYTHONIOENCODING": "utf-8"})  # strict, as under LC_ALL=en_GB.UTF-8
    assert done.returncode == 1
    names = [line for line in done.stdout.decode().splitlines() if not line.startswith(" ")]
    assert names == ["caf\\xe9.jpg: 1 face", "new\\nline.jpg: 1 face"]  # the run went on past each
    [line] = _errors(done.stderr)
    assert line.startswith("edgeface: ") and "z\\x1e.jpg: not a readable image" in line


def test_empty_folder_is_an_error(tmp_path: Path, manifest: object) -> None:
    (tmp_path / "empty").mkdir()
    for command in (["detect"], ["enroll", "--gallery", tmp_path / "g.db"]):
        done = _script(*command, tmp_path / "empty")
        assert done.returncode == 1
        [line] = _errors(done.stderr)
        assert line.startswith("edgeface: ") and "empty: no files in this folder" in line


def test_empty_gallery_file_is_refused(tmp_path: Path, manifest: object, lfw: Path) -> None:
    (tmp_path / "zero.db").touch()
    done = _script("identify", _photos(lfw, "Pervez_Musharraf", 1)[0], "--gallery", tmp_path / "zero.db")
    assert done.returncode == 2 and done.stdout == b""
    assert _errors(done.stderr) == [f"edgeface: error: {tmp_path / 'zero.db'}: an empty file, not a gallery "
                                    "(create one with 'edgeface enroll')"]
    assert (tmp_path / "zero.db").stat().st_size == 0


def test_enroll_skips_people_it_cannot_name_and_goes_on(tmp_path: Path, manifest: object, lfw: Path) -> None:
    people = tmp_path / "people"
    names = {"unknown": "reserved", "x" * 201: "over 200 characters", os.fsdecode(b"Ren\xe9"): None,
             "Pervez_Musharraf": None}
    for name in names:
        (people / name).mkdir(parents=True)
        (people / name / "1.jpg").write_bytes(_photos(lfw, "Pervez_Musharraf", 1)[0].read_bytes())
    done = _script("enroll", people, "--gallery", tmp_path / "g.db")
    assert done.returncode == 1
    lines = _errors(done.stderr)
    assert lines == ["edgeface: skipped 1 photo(s): 'unknown' is reserved for faces nobody matches",
                     f"edgeface: skipped 1 photo(s): invalid name {'x' * 40!r}...: over 200 characters (201)"]
    assert done.stdout.decode().splitlines() == [
        f"enrolled 2 photo(s), 0 already enrolled; gallery {tmp_path / 'g.db'} holds 2 people; skipped 2"]
    listed = _script("gallery", "list", "--gallery", tmp_path / "g.db", env={"PYTHONIOENCODING": "utf-8"})
    assert listed.stdout.decode().splitlines() == ["Pervez_Musharraf\t1\talways", "Ren\\xe9\t1\talways"]


def test_enroll_twice_adds_nothing_and_replace_reenrolls(tmp_path: Path, manifest: object, lfw: Path) -> None:
    first, second = _photos(lfw, "Pervez_Musharraf", 3), _photos(lfw, "Pervez_Musharraf", 5)[3:]
    db = tmp_path / "g.db"
    done = _script("enroll", *first, "--gallery", db, "--face", "largest")
    assert done.returncode == 0
    copy = tmp_path / "Pervez_Musharraf_9999.jpg"  # the same content under another name
    copy.write_bytes(first[0].read_bytes())
    done = _script("enroll", *first, copy, "--gallery", db, "--face", "largest")
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().strip() == f"enrolled 0 photo(s), 4 already enrolled; gallery {db} holds 1 people; " \
                                           "skipped 0"
    done = _script("enroll", *second, "--gallery", db, "--replace", "--face", "largest")
    assert done.returncode == 0
    with raw_sqlite(db) as raw:
        sources = sorted(row[0] for row in raw.execute("SELECT source FROM embeddings"))
    assert sources == sorted(map(str, second))


def test_demo_goes_on_past_a_corrupt_portrait_and_keeps_every_output(tmp_path: Path, manifest: object,
                                                                     lfw: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "a").mkdir(parents=True)
    (photos / "b").mkdir()
    alice, bob = _photos(lfw, "Pervez_Musharraf", 2), _photos(lfw, "Jennifer_Garner", 1)
    (photos / "Alice_1.jpg").write_bytes(alice[0].read_bytes())
    (photos / "Broken_1.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (photos / "Bob_1.jpg").write_bytes(bob[0].read_bytes())
    (photos / "a" / "query.jpg").write_bytes(alice[1].read_bytes())
    (photos / "b" / "query.jpg").write_bytes(bob[0].read_bytes())
    done = _script("demo", photos, "--out", tmp_path / "out")
    assert done.returncode == 1
    [line] = _errors(done.stderr)
    assert line.startswith("edgeface: ") and "Broken_1.jpg: not a readable image" in line
    out = done.stdout.decode().splitlines()
    assert out[0] == "enrolled 2 people from their portraits: Alice, Bob"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "Alice_1.jpg", "Bob_1.jpg", "query-2.jpg", "query.jpg"]
    assert any(line.startswith("a/query.jpg: ") and "recognised: Alice" in line for line in out)
    assert any(line.startswith("b/query.jpg: ") and "recognised: Bob" in line for line in out)


def test_unwritable_output_is_one_line(tmp_path: Path, manifest: object, lfw: Path) -> None:
    photo = _photos(lfw, "Pervez_Musharraf", 1)[0]
    done = _script("demo", photo, "--out", photo)  # a file where the output folder should be
    assert done.returncode == 2 and done.stdout == b""
    assert _errors(done.stderr) == [f"edgeface: error: {photo}: File exists"]


def test_damaged_vector_is_a_warning_for_identify(tmp_path: Path, manifest: object, lfw: Path) -> None:
    db, photos = tmp_path / "g.db", _photos(lfw, "Pervez_Musharraf", 3)
    assert _script("enroll", *photos[:2], "--gallery", db, "--face", "largest").returncode == 0
    with raw_sqlite(db) as raw:
        raw.execute("UPDATE embeddings SET vector = x'00' WHERE id = 1")
    done = _script("identify", photos[2], "--gallery", db, "--json")
    assert done.returncode == 0
    assert _errors(done.stderr) == [f"edgeface: warning: {db}: 1 damaged embedding(s) ignored "
                                    "(re-enroll the people concerned)"]
    assert "Pervez_Musharraf" in done.stdout.decode()


@pytest.mark.parametrize("kind", ODD_ARRAYS)
def test_api_refuses_odd_arrays_before_the_models(analyzer: FaceAnalyzer, kind: str) -> None:
    for method in (analyzer.detect, analyzer.embed):
        with pytest.raises(ImageError, match=ODD_ARRAYS[kind][1]):
            method(ODD_ARRAYS[kind][0])


def test_api_takes_paths_bytes_pil_and_bgr_arrays(analyzer: FaceAnalyzer, lfw: Path) -> None:
    [path] = _photos(lfw, "Pervez_Musharraf", 1)
    pixels = load_image(path)
    reference = analyzer.embed(pixels)
    assert len(reference) == 1
    with FaceAnalyzer("x86", bgr=True) as bgr:
        inputs = [(analyzer, path), (analyzer, str(path)), (analyzer, path.read_bytes()),
                  (analyzer, Image.open(path)), (bgr, np.ascontiguousarray(pixels[..., ::-1]))]
        for user, image in inputs:
            [face] = user.embed(image)
            assert face.box == reference[0].box
            assert float(face.embedding @ reference[0].embedding) == pytest.approx(1.0, abs=1e-5)


def test_api_verify_and_enroll(analyzer: FaceAnalyzer, lfw: Path, tmp_path: Path) -> None:
    alice, bob = _photos(lfw, "Pervez_Musharraf", 3), _photos(lfw, "Jennifer_Garner", 1)
    same, other = analyzer.verify(alice[0], alice[1]), analyzer.verify(alice[0], bob[0])
    assert same.same and not other.same and same.similarity > other.similarity
    with pytest.raises(ImageError, match="image B: no face found"):
        analyzer.verify(alice[0], np.full((120, 120, 3), 128, np.uint8))
    heard: list[tuple[object, ImageError | None]] = []
    with analyzer.open_gallery(tmp_path / "g.db") as gallery:
        done = analyzer.enroll(gallery, "Alice", [*alice[:2], b"junk"], on_image=lambda i, e: heard.append((i, e)))
        assert (done.added, done.unchanged) == (2, 0)
        assert [error is None for _, error in heard] == [True, True, False]
        assert "image bytes: not a readable image" in str(heard[2][1])
        again = analyzer.enroll(gallery, "Alice", [alice[0], alice[1].read_bytes(), alice[2]])
        assert (again.added, again.unchanged) == (1, 2)  # the same bytes, as a path or as bytes
        assert gallery.people() == [("Alice", 3)]
        assert analyzer.identify(alice[2], gallery)[0].identity == "Alice"
        assert analyzer.enroll(gallery, "Alice", str(alice[2])) == Enrolment(0, 1)  # one image, not its letters


def test_analyzer_closes_its_worker_threads(manifest: object, lfw: Path, data: Path) -> None:
    import threading

    before = {t for t in threading.enumerate() if t.name.startswith("embed")}
    with FaceAnalyzer("x86") as user:
        assert len(user.embed(data / "group_photos" / "ultraface_imgs_13.jpg")) == 2  # two faces: the workers
        assert {t for t in threading.enumerate() if t.name.startswith("embed")} - before
    assert {t for t in threading.enumerate() if t.name.startswith("embed")} == before
