"""The SQLite gallery: enrolment, matching, refusals, corruption and crash safety."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import raw_sqlite

from edgeface.errors import GalleryError
from edgeface.gallery import Gallery

MODEL = "a1" * 32
DIM = 16


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.normal(size=(n, DIM))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    return tmp_path / "gallery.db"


def test_round_trip_and_persistence(db: Path) -> None:
    rng = np.random.default_rng(0)
    alice, bob = _unit(rng, 1), _unit(rng, 2)
    with Gallery(db, MODEL, DIM) as gallery:
        assert gallery.match(alice) == [[]]
        assert gallery.add("Alice", alice * 3.0, ["a.jpg"]) == 1  # stored normalised
        assert gallery.add("Bob", bob) == 2
    with Gallery(db, MODEL, DIM) as gallery:
        assert gallery.people() == [("Alice", 1), ("Bob", 2)]
        [[(name, similarity)]] = gallery.match(alice)
        assert name == "Alice" and similarity == pytest.approx(1.0, abs=1e-5)
        assert gallery.add("Alice", _unit(rng, 1)) == 2
    with raw_sqlite(db) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT source FROM embeddings ORDER BY id LIMIT 1").fetchone()[0] == "a.jpg"


def test_person_scores_their_best_embedding(db: Path) -> None:
    rng = np.random.default_rng(1)
    with Gallery(db, MODEL, DIM) as gallery:
        carol = _unit(rng, 3)
        gallery.add("Carol", carol[:2])
        gallery.add("Dave", _unit(rng, 2))
        gallery.add("Carol", carol[2:])  # interleaved with Dave's rows in the table
        results = gallery.match(carol, top_k=5)
        for query, top in zip(carol, results):
            assert [name for name, _ in top] == ["Carol", "Dave"]
            assert top[0][1] == pytest.approx(1.0, abs=1e-5) and top[0][1] >= top[1][1]


def test_match_agrees_with_brute_force(db: Path) -> None:
    rng = np.random.default_rng(2)
    vectors, owners = _unit(rng, 60), rng.integers(0, 20, 60)
    with Gallery(db, MODEL, DIM) as gallery:
        for vector, owner in zip(vectors, owners):
            gallery.add(f"p{owner:02d}", vector[None])
        queries = _unit(rng, 4)
        results = gallery.match(queries, top_k=3)
    for query, top in zip(queries, results):
        best = {f"p{o:02d}": max(vectors[owners == o] @ query) for o in set(owners)}
        expected = sorted(best.items(), key=lambda item: -item[1])[:3]
        assert [name for name, _ in top] == [name for name, _ in expected]
        np.testing.assert_allclose([s for _, s in top], [s for _, s in expected], atol=1e-5)


def test_identify_names_unknown_below_threshold(db: Path) -> None:
    rng = np.random.default_rng(3)
    eve = _unit(rng, 1)
    with Gallery(db, MODEL, DIM) as gallery:
        assert gallery.identify(eve, 0.5) == [("unknown", -1.0)]
        gallery.add("Eve", eve)
        stranger = _unit(rng, 1)
        stranger -= (stranger @ eve.T) * eve  # orthogonal to Eve: similarity 0
        (known, unknown) = gallery.identify(np.vstack([eve, stranger]), 0.5)
    assert known[0] == "Eve" and known[1] == pytest.approx(1.0, abs=1e-5)
    assert unknown[0] == "unknown" and unknown[1] == pytest.approx(0.0, abs=1e-5)


def test_cache_follows_changes(db: Path) -> None:
    rng = np.random.default_rng(4)
    frank, grace = _unit(rng, 1), _unit(rng, 1)
    with Gallery(db, MODEL, DIM) as gallery, Gallery(db, MODEL, DIM) as other:
        gallery.add("Frank", frank)
        assert gallery.match(grace)[0][0][0] == "Frank"
        gallery.add("Grace", grace)
        assert gallery.match(grace)[0][0][0] == "Grace"
        other.remove("Grace")  # a commit from another connection
        assert gallery.match(grace)[0][0][0] == "Frank"


def test_remove(db: Path) -> None:
    rng = np.random.default_rng(5)
    with Gallery(db, MODEL, DIM) as gallery:
        gallery.add("Heidi", _unit(rng, 3))
        gallery.add("Ivan", _unit(rng, 1))
        assert gallery.remove("Heidi") == 3
        assert gallery.people() == [("Ivan", 1)]
        with pytest.raises(GalleryError, match="Heidi"):
            gallery.remove("Heidi")
    with raw_sqlite(db) as raw:
        assert raw.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == 1  # cascaded


def test_refuses_another_model(db: Path) -> None:
    Gallery(db, MODEL, DIM).close()
    with pytest.raises(GalleryError) as caught:
        Gallery(db, "b2" * 32, DIM)
    message = str(caught.value)
    assert str(db) in message and MODEL[:12] in message and ("b2" * 6) in message
    assert "another model" in message and "re-enroll" in message


def test_refuses_wrong_dims_and_bad_values(db: Path) -> None:
    Gallery(db, MODEL, DIM).close()
    with pytest.raises(GalleryError, match=f"{DIM}-d"):
        Gallery(db, MODEL, DIM + 1)
    rng = np.random.default_rng(6)
    with Gallery(db, MODEL, DIM) as gallery:
        with pytest.raises(GalleryError, match=f"N x {DIM}"):
            gallery.add("Judy", rng.normal(size=(1, DIM + 1)))
        with pytest.raises(GalleryError, match=f"N x {DIM}"):
            gallery.match(rng.normal(size=(1, DIM - 1)))
        with pytest.raises(GalleryError, match="NaN"):
            gallery.add("Judy", np.full((1, DIM), np.nan))
        with pytest.raises(GalleryError, match="all-zero"):
            gallery.add("Judy", np.zeros((1, DIM)))
        for name in ("", "   ", "bad\nname", "unknown", None):
            with pytest.raises(GalleryError):
                gallery.add(name, _unit(rng, 1))  # type: ignore[arg-type]
        with pytest.raises(GalleryError, match="sources"):
            gallery.add("Judy", _unit(rng, 2), ["only-one.jpg"])
        assert gallery.people() == []


@pytest.mark.parametrize("content", [b"this is not a database at all " * 100, b"\x00" * 4096])
def test_corrupt_file_names_the_file(db: Path, content: bytes) -> None:
    db.write_bytes(content)
    with pytest.raises(GalleryError, match=str(db)):
        Gallery(db, MODEL, DIM)


def test_foreign_sqlite_and_unknown_schema(db: Path, tmp_path: Path) -> None:
    with raw_sqlite(db) as raw:
        raw.execute("CREATE TABLE other (x)")
    with pytest.raises(GalleryError, match="not an edgeface gallery"):
        Gallery(db, MODEL, DIM)
    newer = tmp_path / "newer.db"
    Gallery(newer, MODEL, DIM).close()
    with raw_sqlite(newer) as raw:
        raw.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(GalleryError, match=f"{newer}.*schema version '99'"):
        Gallery(newer, MODEL, DIM)


CRASHING_ENROLMENT = """
import os, sys
import numpy as np
from edgeface.gallery import Gallery

gallery = Gallery(sys.argv[1], {model!r}, {dim})
rng = np.random.default_rng(7)
gallery.add("A", rng.normal(size=(3, {dim})))
gallery._db.execute("PRAGMA cache_size = 5")  # B's rows spill into the WAL file before any commit


def die_mid_transaction(statement):
    if statement.startswith("SELECT COUNT(*) FROM embeddings"):  # B's rows are all inserted, not committed
        os._exit(9)


gallery._db.set_trace_callback(die_mid_transaction)
gallery.add("B", rng.normal(size=(5000, {dim})))
os._exit(0)
"""


def test_crash_mid_enrolment_keeps_committed_people(db: Path) -> None:
    script = textwrap.dedent(CRASHING_ENROLMENT.format(model=MODEL, dim=DIM))
    src = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "-c", script, str(db)], env={"PYTHONPATH": src}, capture_output=True)
    assert done.returncode == 9, done.stderr.decode()
    assert Path(f"{db}-wal").stat().st_size > 5000 * DIM * 4  # B really reached the disk, uncommitted
    with Gallery(db, MODEL, DIM) as gallery:
        assert gallery.people() == [("A", 3)]
        a = np.random.default_rng(7).normal(size=(3, DIM))
        assert [top[0][0] for top in gallery.match(a)] == ["A", "A", "A"]
    with raw_sqlite(db) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert raw.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == 3
