"""`edgeface enroll` killed with SIGKILL at random points, many times: nothing committed is lost, nothing doubled.

The README's promise: each photo commits on its own (with --replace, each person), so after any kill every
enrolled photo is intact (its SHA-256, source and vector), no photo is enrolled twice, and with --replace every
person holds either all their old photos or all their new ones.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from conftest import raw_sqlite

from edgeface.manifest import Manifest

SCRIPT = Path(sys.executable).with_name("edgeface")
PEOPLE = ("Jennifer_Garner", "Pervez_Musharraf", "Vaclav_Havel")
KILLS = 8


def _folder(root: Path, lfw: Path, photos: slice) -> dict[str, set[str]]:
    """root/<person>/ with these photos of each person; the SHA-256 of each person's photos."""
    digests: dict[str, set[str]] = {}
    for person in PEOPLE:
        (root / person).mkdir(parents=True)
        for photo in sorted((lfw / person).glob("*.jpg"))[photos]:
            shutil.copy(photo, root / person)
            digests.setdefault(person, set()).add(hashlib.sha256(photo.read_bytes()).hexdigest())
    return digests


def _enrolled(db: Path) -> dict[str, list[str]]:
    """Each person's enrolled digests, after checking that every row is whole and matches its source file."""
    if not db.exists() or db.stat().st_size == 0:
        return {}
    with raw_sqlite(db) as raw:  # closed here: a lingering last connection deletes the WAL later
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        if not raw.execute("SELECT 1 FROM sqlite_master WHERE name = 'embeddings'").fetchone():
            return {}
        rows = raw.execute("SELECT p.name, e.content_sha256, e.source, e.vector FROM embeddings e "
                           "JOIN people p ON p.id = e.person_id").fetchall()
    people: dict[str, list[str]] = {}
    for name, digest, source, vector in rows:
        assert hashlib.sha256(Path(source).read_bytes()).hexdigest() == digest
        assert len(vector) == 192 * 4 and abs(np.linalg.norm(np.frombuffer(vector, np.float32)) - 1) < 1e-4
        people.setdefault(name, []).append(digest)
    return people


def _rows(db: Path) -> int:
    """Embeddings committed to `db` so far (0 before its schema exists), read without disturbing the writer."""
    try:
        with raw_sqlite(f"file:{db}?mode=ro", uri=True, timeout=1) as raw:
            return raw.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
    except sqlite3.Error:
        return 0


def _commit_window(command: list[str], db: Path) -> tuple[float, float]:
    """Seconds from launch to the first and to the last commit of one run of `command` into `db`, by polling."""
    started, count, first, last = time.monotonic(), 0, None, None
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as process:
        while process.poll() is None:
            if (now := _rows(db)) > count:
                count, last = now, time.monotonic() - started
                first = first or last
            time.sleep(0.005)
    assert process.returncode == 0 and first is not None and last is not None, command
    return first, last


def _kills(command: list[str], window: tuple[float, float], rng: np.random.Generator,
           before: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Run `command` KILLS times, each SIGKILLed at a random moment of the commit `window` (a little before its
    start too), yielding after each kill; a run that was already over when its kill came does not count.
    `before()` runs before each run."""
    kills = 0
    for _ in range(4 * KILLS):
        before()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.8 * window[0], window[1]))
        running = process.poll() is None
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        if running:
            kills += 1
            yield
            if kills == KILLS:
                return
    raise AssertionError(f"{command}: fewer than {KILLS} runs were still going when killed")


def test_sigkill_loses_nothing_and_doubles_nothing(tmp_path: Path, manifest: Manifest, data: Path) -> None:
    lfw = data / "lfw_fold1" / "images"
    old, new = _folder(tmp_path / "old", lfw, slice(0, 3)), _folder(tmp_path / "new", lfw, slice(3, 6))
    db = tmp_path / "g.db"
    enroll = [str(SCRIPT), "enroll", "--face", "largest", "--gallery", str(db)]
    window = _commit_window([*enroll[:4], "--gallery", str(tmp_path / "timing.db"), str(tmp_path / "old")],
                            tmp_path / "timing.db")
    rng = np.random.default_rng(15)

    def anew_when_complete() -> None:
        """A complete gallery leaves a rerun nothing to do but skip: start the next run from an empty one."""
        if sum(map(len, _enrolled(db).values())) == sum(map(len, old.values())):
            for path in tmp_path.glob("g.db*"):
                path.unlink()

    states = set()
    for _ in _kills([*enroll, str(tmp_path / "old")], window, rng, anew_when_complete):
        people = _enrolled(db)
        for person, digests in people.items():
            assert len(digests) == len(set(digests)) and set(digests) <= old[person]
        states.add(sum(map(len, people.values())))
    assert len(states) > 1, states  # the kills landed at different points of the run
    subprocess.run([*enroll, str(tmp_path / "old")], check=True, capture_output=True, timeout=300)
    assert {person: set(digests) for person, digests in _enrolled(db).items()} == old
    assert sum(map(len, _enrolled(db).values())) == sum(map(len, old.values()))

    for _ in _kills([*enroll, "--replace", str(tmp_path / "new")], window, rng):
        for person, digests in _enrolled(db).items():
            assert sorted(digests) in (sorted(old[person]), sorted(new[person])), person  # one person, one commit
    subprocess.run([*enroll, "--replace", str(tmp_path / "new")], check=True, capture_output=True, timeout=300)
    assert {person: set(digests) for person, digests in _enrolled(db).items()} == new
