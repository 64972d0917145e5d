"""Per-person access rules in the gallery, honoured with no fleet: validity days, weekly windows, the schema 1 -> 2
migration, and `replace_all` (the fleet's apply) being all or nothing even when the process dies midway."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from conftest import raw_sqlite

from edgeface.access import EXPIRED, NOT_YET_VALID, OUTSIDE_SCHEDULE, AccessRules, parse_schedule
from edgeface.cli import main
from edgeface.errors import GalleryError
from edgeface.gallery import SCHEMA_VERSION, Gallery, Person
from edgeface.manifest import Manifest

SHA, DIM = "ab" * 32, 8


def unit(seed: int, count: int = 1) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def test_schedule_windows_and_overnight() -> None:
    [weekdays, saturday] = parse_schedule("mon-fri 07:00-19:00, sat 09:00-13:00")
    monday = datetime(2026, 11, 30, 7, 0)  # a Monday
    assert monday.weekday() == 0
    assert weekdays.contains(monday) and not weekdays.contains(monday.replace(hour=19))
    assert saturday.contains(monday + timedelta(days=5, hours=3)) and not weekdays.contains(monday + timedelta(days=5))
    [night] = parse_schedule("fri-mon 22:00-06:00")
    assert night.days == (4, 5, 6, 0)
    assert night.contains(monday.replace(hour=5, minute=59))  # Sunday night's window, into Monday
    assert not night.contains(monday.replace(hour=6)) and night.contains(monday.replace(hour=23))
    assert night.contains(monday + timedelta(days=1, hours=-2))  # Tuesday 05:00: Monday night's window
    assert not night.contains(monday + timedelta(days=1, hours=16))  # Tuesday 23:00
    assert [w.text() for w in parse_schedule("daily 00:00-24:00, SUN 10:00-11:00")] == \
        ["daily 00:00-24:00", "sun 10:00-11:00"]
    for bad in ("mon-fri", "monday 07:00-19:00", "mon 25:00-26:00", "mon 7:00-19:00", "mon 24:00-01:00"):
        with pytest.raises(GalleryError, match="schedule"):
            parse_schedule(bad)


def test_validity_days_are_inclusive_local_dates() -> None:
    rules = AccessRules(date(2026, 12, 1), date(2027, 1, 31))
    assert rules.refusal(datetime(2026, 11, 30, 23, 59)) == NOT_YET_VALID
    assert rules.refusal(datetime(2026, 12, 1, 0, 0)) is None
    assert rules.refusal(datetime(2027, 1, 31, 23, 59)) is None
    assert rules.refusal(datetime(2027, 2, 1, 0, 0)) == EXPIRED
    aware = datetime(2027, 2, 1, 12, tzinfo=timezone.utc)  # converted to the door's local time first
    assert rules.refusal(aware) == rules.refusal(aware.astimezone().replace(tzinfo=None))
    with pytest.raises(GalleryError, match="before"):
        AccessRules(date(2027, 1, 1), date(2026, 1, 1))


def test_gallery_access(tmp_path: Path) -> None:
    with Gallery(tmp_path / "g.db", SHA, DIM) as gallery:
        gallery.add("alice", unit(1))
        gallery.add("bob", unit(2))
        gallery.set_rules("alice", AccessRules(None, date(2027, 1, 31), parse_schedule("mon-fri 07:00-19:00")))
        monday = datetime(2026, 11, 30, 8)
        assert gallery.access("alice", monday) is None
        assert gallery.access("alice", monday.replace(hour=20)) == OUTSIDE_SCHEDULE
        assert gallery.access("alice", datetime(2027, 2, 1, 8)) == EXPIRED
        assert gallery.access("bob", datetime(2099, 1, 1, 3)) is None
        assert gallery.access("carol", monday) == "not enrolled"
        with pytest.raises(GalleryError, match="nobody named"):
            gallery.set_rules("carol", AccessRules())
    with raw_sqlite(tmp_path / "g.db") as db:  # a corrupt rule fails closed, it never opens the door
        db.execute("UPDATE people SET schedule = 'mon-fri' WHERE name = 'bob'")
    with Gallery(tmp_path / "g.db", SHA, DIM) as gallery:
        assert gallery.access("bob", datetime(2026, 11, 30, 8)) == "invalid access rules"


def test_schema_1_gallery_migrates_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with raw_sqlite(path) as db:
        db.executescript("""
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, created REAL);
            CREATE TABLE embeddings (id INTEGER PRIMARY KEY, person_id INTEGER NOT NULL REFERENCES people (id)
                ON DELETE CASCADE, vector BLOB NOT NULL, source TEXT, created REAL);
        """)
        db.executemany("INSERT INTO meta VALUES (?, ?)",
                       [("schema_version", "1"), ("embedding_model_sha256", SHA), ("embedding_dim", str(DIM))])
        db.execute("INSERT INTO people VALUES (1, 'alice', 0)")
        db.execute("INSERT INTO embeddings VALUES (1, 1, ?, NULL, 0)", (unit(1).tobytes(),))
    with Gallery(path, SHA, DIM) as gallery:
        assert gallery.people() == [("alice", 1)]
        assert gallery.access("alice", datetime(2030, 1, 1)) is None
        gallery.set_rules("alice", AccessRules(valid_until=date(2027, 1, 31)))
        assert gallery.access("alice", datetime(2030, 1, 1)) == EXPIRED
    with raw_sqlite(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(GalleryError, match="unknown gallery schema version '99'"):
        Gallery(path, SHA, DIM)


def test_replace_all_counts_and_replay(tmp_path: Path) -> None:
    with Gallery(tmp_path / "g.db", SHA, DIM) as gallery:
        gallery.add("alice", unit(1, 2))
        gallery.add("bob", unit(2))
        people = gallery.export()
        assert gallery.replace_all(people, 10, "a").unchanged == 2
        changed = [Person("alice", unit(1, 2), AccessRules(valid_until=date(2027, 1, 31))), Person("carol", unit(3))]
        counts = gallery.replace_all(changed, 11, "b")
        assert (counts.added, counts.removed, counts.updated, counts.unchanged) == (1, 1, 1, 0)
        assert gallery.people() == [("alice", 2), ("carol", 1)] and gallery.applied_bundle() == (11, "b")
        for stale in (11, 3):
            with pytest.raises(GalleryError, match="not newer than the applied 11"):
                gallery.replace_all(people, stale, "c")
        with pytest.raises(GalleryError, match="unit vectors"):
            gallery.replace_all([Person("dave", 2 * unit(4))], 12, "d")
        assert gallery.people() == [("alice", 2), ("carol", 1)] and gallery.applied_bundle() == (11, "b")


def test_process_killed_mid_apply_leaves_the_old_gallery(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    with Gallery(path, SHA, DIM) as gallery:
        gallery.add("alice", unit(1))
        gallery.replace_all(gallery.export(), 1, "old")
    script = textwrap.dedent(f"""
        import os, numpy as np
        from edgeface.gallery import Gallery, Person
        gallery = Gallery({str(path)!r}, {SHA!r}, {DIM})
        inserts = 0
        def dying_trace(statement):
            global inserts
            inserts += statement.startswith("INSERT INTO people")
            if inserts == 50:
                os._exit(9)  # no rollback, no cleanup: as if the power went
        gallery._db.set_trace_callback(dying_trace)
        rows = np.eye({DIM}, dtype=np.float32)
        gallery.replace_all([Person(f"p{{i}}", rows[i % {DIM}][None]) for i in range(100)], 2, "new")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[1], timeout=60)
    assert done.returncode == 9
    with Gallery(path, SHA, DIM) as gallery:
        assert gallery.people() == [("alice", 1)] and gallery.applied_bundle() == (1, "old")


def test_enroll_and_gallery_set_on_the_command_line(manifest: Manifest, data: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    photo = sorted((data / "lfw_fold1" / "images" / "Hugo_Chavez").glob("*.jpg"))[0]
    db = str(tmp_path / "g.db")
    assert main(["enroll", "--gallery", db, "--name", "hugo", "--valid-until", "2027-01-31", "--input-size", "320",
                 str(photo)]) == 0
    capsys.readouterr()
    assert main(["gallery", "list", "--gallery", db]) == 0
    assert capsys.readouterr().out == "hugo\t1\t..2027-01-31\n"
    assert main(["gallery", "set", "hugo", "--gallery", db, "--valid-until", "none", "--valid-from", "2026-12-01",
                 "--schedule", "mon-fri 07:00-19:00"]) == 0
    assert capsys.readouterr().out == "hugo: 2026-12-01.., mon-fri 07:00-19:00\n"
    for argv, message in ((["--schedule", "weekdays"], "is not 'DAYS HH:MM-HH:MM'"),
                          (["--valid-until", "31/01/2027"], "--valid-until: '31/01/2027' is not a date"),
                          (["--valid-until", "2026-01-01"], "is before valid from")):
        assert main(["gallery", "set", "hugo", "--gallery", db, *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert main(["gallery", "set", "nobody", "--gallery", db, "--valid-until", "2027-01-31"]) == 2
    assert "nobody named 'nobody'" in capsys.readouterr().err
