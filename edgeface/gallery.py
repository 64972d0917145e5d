"""The SQLite gallery of enrolled people and their embeddings, bound to one embedding model."""

from __future__ import annotations

import sqlite3
import time
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType

import numpy as np

from edgeface.access import ALWAYS, AccessRules
from edgeface.errors import GalleryError

SCHEMA_VERSION = 2

UNKNOWN = "unknown"
"""The name `identify` gives a face below the threshold (so no person may be enrolled under it)."""

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, created REAL);
CREATE TABLE embeddings (
    id INTEGER PRIMARY KEY,
    person_id INTEGER NOT NULL REFERENCES people (id) ON DELETE CASCADE,
    vector BLOB NOT NULL,
    source TEXT,
    created REAL
);
CREATE INDEX embeddings_person ON embeddings (person_id);
"""
"""Schema version 1; every later version only adds the columns below."""

_ADDED_COLUMNS = (
    ("people", "valid_from", "TEXT"),   # 2: first day the person may enter (ISO date), NULL = no start
    ("people", "valid_until", "TEXT"),  # 2: last day (inclusive), NULL = no end
    ("people", "schedule", "TEXT"),     # 2: JSON list of weekly windows ("mon-fri 07:00-19:00"), NULL = any time
    ("embeddings", "content_sha256", "TEXT"),  # 2: the enrolled photo's SHA-256, so it is never enrolled twice
)
"""(table, column, type) added by `ALTER TABLE` when missing: opening an older gallery migrates it."""

BUNDLE_VERSION_KEY = "bundle_version"
BUNDLE_SHA256_KEY = "bundle_sha256"
"""Meta keys of the last fleet bundle applied (edgeface.fleet)."""


@dataclass(frozen=True)
class Person:
    """One enrolled person: name, N x D unit embeddings (float32) and access rules."""

    name: str
    embeddings: np.ndarray
    rules: AccessRules = ALWAYS


@dataclass(frozen=True)
class ReplaceCounts:
    """What `Gallery.replace_all` changed, person by person."""

    added: int
    removed: int
    updated: int
    unchanged: int


def _safe_text(text: str) -> str:
    """`text` as valid UTF-8 for SQLite: the undecodable bytes of a file name (surrogate escapes) as \\xNN."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class Gallery:
    """Enrolled people in an SQLite file (WAL, one transaction per change), matched by cosine similarity.

    `create=False` refuses a missing or empty file instead of making a new gallery there. Every SQLite failure
    (read-only file, full disk, another process's lock held past `timeout` seconds, damaged tables) is a
    GalleryError naming the file.
    """

    def __init__(self, path: str | Path, model_sha256: str, embedding_dim: int, *, create: bool = True,
                 timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.dim = int(embedding_dim)
        self._damaged = 0  # stored vectors left out at the last load: of the wrong length, or not finite
        self._index: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # vectors, group starts, names
        self._version = -1
        if not create:
            try:
                empty = self.path.stat().st_size == 0
            except OSError:
                raise GalleryError(f"{self.path}: no such gallery (create it with 'edgeface enroll')") from None
            if empty:
                raise GalleryError(f"{self.path}: an empty file, not a gallery (create one with 'edgeface enroll')")
        try:
            self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)  # transactions are explicit
        except sqlite3.Error as error:
            raise GalleryError(f"{self.path}: cannot open the gallery ({error})") from None
        try:
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._check_or_create(model_sha256)
        except sqlite3.Error as error:
            self._db.close()
            raise GalleryError(f"{self.path}: cannot read the gallery ({error})") from None
        except GalleryError:
            self._db.close()
            raise

    def _check_or_create(self, model_sha256: str) -> None:
        empty = "SELECT NOT EXISTS (SELECT 1 FROM sqlite_master)"
        if self._db.execute(empty).fetchone()[0]:
            with self._transaction("create the gallery"):
                if self._db.execute(empty).fetchone()[0]:  # still empty: no other process created it meanwhile
                    for statement in filter(str.strip, _SCHEMA.split(";")):
                        self._db.execute(statement)
                    self._db.executemany("INSERT INTO meta VALUES (?, ?)", [
                        ("schema_version", "1"),  # then upgraded like any older gallery
                        ("embedding_model_sha256", model_sha256),
                        ("embedding_dim", str(self.dim)),
                    ])
        meta = self._meta()
        version = meta.get("schema_version", "")
        if not version.isdigit() or not 1 <= int(version) <= SCHEMA_VERSION:
            raise GalleryError(f"{self.path}: unknown gallery schema version {version!r} "
                               f"(this edgeface reads versions 1 to {SCHEMA_VERSION})")
        stored = meta.get("embedding_model_sha256", "")
        if stored != model_sha256:
            raise GalleryError(f"{self.path}: its embeddings come from another model (gallery {stored[:12]}, "
                               f"current {model_sha256[:12]}); re-enroll the people into a new gallery")
        if meta.get("embedding_dim") != str(self.dim):
            raise GalleryError(f"{self.path}: holds {meta.get('embedding_dim')}-d embeddings, "
                               f"the model gives {self.dim}-d")
        if int(version) < SCHEMA_VERSION or self._missing_columns():
            with self._transaction("upgrade the gallery"):  # one transaction: all the columns, then the version
                for table, column, declaration in self._missing_columns():
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))

    def _missing_columns(self) -> list[tuple[str, str, str]]:
        """The entries of _ADDED_COLUMNS this gallery lacks (checked whatever its version says)."""
        present: dict[str, set[str]] = {}
        for table, _, _ in _ADDED_COLUMNS:
            present.setdefault(table, {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")})
            if not present[table]:
                raise GalleryError(f"{self.path}: a damaged gallery (its {table} table is missing)")
        return [entry for entry in _ADDED_COLUMNS if entry[1] not in present[entry[0]]]

    def _meta(self) -> dict[str, str]:
        try:
            return dict(self._db.execute("SELECT key, value FROM meta"))
        except sqlite3.OperationalError:
            raise GalleryError(f"{self.path}: an SQLite database but not an edgeface gallery (no meta table)") from None

    @classmethod
    def open_existing(cls, path: str | Path) -> Gallery:
        """An existing gallery bound to the embedding model it records (for tools that embed nothing)."""
        path = Path(path)
        if not path.is_file():
            raise GalleryError(f"{path}: no such gallery (create it with 'edgeface enroll')")
        try:
            with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
                meta = dict(db.execute("SELECT key, value FROM meta"))
        except sqlite3.Error as error:
            raise GalleryError(f"{path}: not a readable edgeface gallery ({error})") from None
        dim = meta.get("embedding_dim", "")
        if not dim.isdigit():
            raise GalleryError(f"{path}: no embedding dimension in its meta table")
        return cls(path, meta.get("embedding_model_sha256", ""), int(dim))

    @property
    def model_sha256(self) -> str:
        """The sha256 of the embedding model the gallery is bound to."""
        return self._meta()["embedding_model_sha256"]

    @contextmanager
    def _sqlite(self, action: str) -> Iterator[None]:
        """Turn an SQLite failure inside the block into a GalleryError: '<file>: cannot <action> (<reason>)'."""
        try:
            yield
        except sqlite3.Error as error:
            raise GalleryError(f"{self.path}: cannot {action} ({error})") from None

    @contextmanager
    def _transaction(self, action: str = "write the gallery") -> Iterator[None]:
        """One write transaction (all or nothing), its SQLite failures reported as failing to `action`."""
        with self._sqlite(action):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        """Close the database (the gallery is unusable afterwards)."""
        self._db.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def valid_name(self, name: str) -> str:
        """`name` as stored (stripped; undecodable file-name bytes as \\xNN), or a GalleryError saying why it
        cannot be a person's name (empty, control characters, over 200 characters, or 'unknown')."""
        if not isinstance(name, str) or not name.strip():
            raise GalleryError(f"{self.path}: a person's name must be a non-empty string, got {name!r}")
        name = _safe_text(name.strip())
        if len(name) > 200:
            raise GalleryError(f"{self.path}: invalid name {name[:40]!r}...: over 200 characters ({len(name)})")
        if any(unicodedata.category(c) == "Cc" for c in name):
            raise GalleryError(f"{self.path}: invalid name {name!r}: it holds control characters")
        if name == UNKNOWN:
            raise GalleryError(f"{self.path}: '{UNKNOWN}' is reserved for faces nobody matches")
        return name

    def _vectors(self, values: np.ndarray, what: str) -> np.ndarray:
        """N x D finite non-zero vectors, L2-normalised, float32."""
        array = np.asarray(values, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] != self.dim or len(array) == 0:
            raise GalleryError(f"{self.path}: {what} must be an N x {self.dim} array, got shape {array.shape}")
        if not np.isfinite(array).all():
            raise GalleryError(f"{self.path}: {what} contain NaN or infinite values")
        norms = np.linalg.norm(array, axis=1, keepdims=True)
        if (norms < 1e-12).any():
            raise GalleryError(f"{self.path}: {what} contain an all-zero vector")
        return (array / norms).astype(np.float32)

    def add(self, name: str, embeddings: np.ndarray, sources: list[str | None] | None = None,
            digests: list[str | None] | None = None, *, replace: bool = False) -> int:
        """Enroll N x D embeddings for `name` (created if new) in one transaction; returns the person's new total.

        `digests` (the photos' SHA-256) skip a photo already enrolled for that person; `replace` first deletes the
        person's other embeddings, in the same transaction.
        """
        name = self.valid_name(name)
        vectors = self._vectors(embeddings, "embeddings")
        sources = [None] * len(vectors) if sources is None else [None if s is None else _safe_text(s) for s in sources]
        digests = [None] * len(vectors) if digests is None else list(digests)
        if not len(sources) == len(digests) == len(vectors):
            raise GalleryError(f"{self.path}: {len(sources)} sources and {len(digests)} digests "
                               f"for {len(vectors)} embeddings")
        now = time.time()
        with self._transaction(f"enroll {name!r}"):
            self._db.execute("INSERT OR IGNORE INTO people (name, created) VALUES (?, ?)", (name, now))
            (person,) = self._db.execute("SELECT id FROM people WHERE name = ?", (name,)).fetchone()
            if replace:
                self._db.execute("DELETE FROM embeddings WHERE person_id = ?", (person,))
            seen = {row[0] for row in self._db.execute(
                "SELECT content_sha256 FROM embeddings WHERE person_id = ? AND content_sha256 IS NOT NULL", (person,))}
            rows = []
            for vector, source, digest in zip(vectors, sources, digests):
                if digest is None or digest not in seen:
                    rows.append((person, vector.tobytes(), source, digest, now))
                    seen.add(digest)
            self._db.executemany("INSERT INTO embeddings (person_id, vector, source, content_sha256, created) "
                                 "VALUES (?, ?, ?, ?, ?)", rows)
            (total,) = self._db.execute("SELECT COUNT(*) FROM embeddings WHERE person_id = ?", (person,)).fetchone()
        self._index = None
        return total

    def has(self, name: str, digest: str) -> bool:
        """Whether a photo with this SHA-256 is enrolled for `name`."""
        with self._sqlite("read the gallery"):
            return self._db.execute(
                "SELECT 1 FROM embeddings e JOIN people p ON p.id = e.person_id "
                "WHERE p.name = ? AND e.content_sha256 = ?", (self.valid_name(name), digest)).fetchone() is not None

    def people(self) -> list[tuple[str, int]]:
        """(name, number of embeddings) of everyone enrolled, sorted by name."""
        with self._sqlite("read the gallery"):
            return self._db.execute(
                "SELECT p.name, COUNT(e.id) FROM people p LEFT JOIN embeddings e ON e.person_id = p.id "
                "GROUP BY p.id ORDER BY p.name"
            ).fetchall()

    def remove(self, name: str) -> int:
        """Delete a person and their embeddings; returns how many embeddings went."""
        name = self.valid_name(name)
        with self._transaction(f"remove {name!r}"):
            row = self._db.execute(
                "SELECT COUNT(e.id) FROM people p LEFT JOIN embeddings e ON e.person_id = p.id "
                "WHERE p.name = ? GROUP BY p.id", (name,)
            ).fetchone()
            if row is None:
                raise GalleryError(f"{self.path}: nobody named {name!r} is enrolled")
            self._db.execute("DELETE FROM people WHERE name = ?", (name,))
        self._index = None
        return row[0]

    def set_rules(self, name: str, rules: AccessRules) -> None:
        """Replace a person's access rules (validity period and weekly schedule)."""
        name = self.valid_name(name)
        with self._transaction():
            changed = self._db.execute("UPDATE people SET valid_from = ?, valid_until = ?, schedule = ? "
                                       "WHERE name = ?", (*rules.columns(), name)).rowcount
        if not changed:
            raise GalleryError(f"{self.path}: nobody named {name!r} is enrolled")

    def _stored(self) -> dict[str, tuple[int, tuple[str | None, str | None, str | None], bytes]]:
        """name -> (person id, stored rule columns, the person's embeddings as one float32 byte string)."""
        people = {pid: (name, (vf, vu, sc)) for pid, name, vf, vu, sc in self._db.execute(
            "SELECT id, name, valid_from, valid_until, schedule FROM people")}
        blobs: dict[int, list[bytes]] = {pid: [] for pid in people}
        for pid, vector in self._db.execute("SELECT person_id, vector FROM embeddings ORDER BY id"):
            blobs[pid].append(vector)
        return {name: (pid, columns, b"".join(blobs[pid])) for pid, (name, columns) in people.items()}

    def _parse_rules(self, name: str, columns: tuple[str | None, str | None, str | None]) -> AccessRules:
        try:
            return AccessRules.from_columns(*columns)
        except GalleryError as error:
            raise GalleryError(f"{self.path}: {name}: {error}") from None

    def rules(self, name: str) -> AccessRules | None:
        """A person's access rules, None if nobody has that name; a GalleryError if the stored rules are malformed."""
        row = self._db.execute("SELECT valid_from, valid_until, schedule FROM people WHERE name = ?",
                               (self.valid_name(name),)).fetchone()
        return None if row is None else self._parse_rules(name, row)

    def access(self, name: str, when: datetime) -> str | None:
        """None if `name` may enter at `when` (naive: the door's local time), else why not: 'not enrolled',
        'not yet valid', 'expired', 'outside schedule' or 'invalid access rules' (fails closed)."""
        try:
            rules = self.rules(name)
        except GalleryError:
            return "invalid access rules"
        return "not enrolled" if rules is None else rules.refusal(when)

    def export(self) -> list[Person]:
        """Everyone enrolled with their embeddings and rules, sorted by name (malformed rules raise)."""
        return [Person(name, np.frombuffer(blob, dtype=np.float32).reshape(-1, self.dim),
                       self._parse_rules(name, columns))
                for name, (_, columns, blob) in sorted(self._stored().items())]

    def applied_bundle(self) -> tuple[int, str] | None:
        """(version, sha256) of the last fleet bundle applied, or None."""
        meta = self._meta()
        if BUNDLE_VERSION_KEY not in meta:
            return None
        return int(meta[BUNDLE_VERSION_KEY]), meta.get(BUNDLE_SHA256_KEY, "")

    def replace_all(self, people: Sequence[Person], version: int, sha256: str) -> ReplaceCounts:
        """Make the gallery hold exactly `people` (others removed) and record bundle `version` and `sha256`, in one
        transaction: a failure or a crash midway leaves the gallery as it was. `version` must be newer than the
        one applied before (checked inside the transaction), else a GalleryError."""
        incoming: dict[str, tuple[bytes, tuple[str | None, ...]]] = {}
        for person in people:
            name = self.valid_name(person.name)
            if name == UNKNOWN or name in incoming:
                raise GalleryError(f"{self.path}: bundle names {name!r} twice or uses the reserved '{UNKNOWN}'")
            vectors = np.ascontiguousarray(person.embeddings, dtype=np.float32)
            self._vectors(vectors, f"{name}'s embeddings")  # shape, finite, non-zero; stored as given, not rescaled
            if not np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-3):
                raise GalleryError(f"{self.path}: {name}'s embeddings are not unit vectors")
            incoming[name] = (person.rules.columns(), vectors.tobytes())
        counts = {"added": 0, "removed": 0, "updated": 0, "unchanged": 0}
        now = time.time()
        with self._transaction():
            applied = self.applied_bundle()
            if applied is not None and version <= applied[0]:
                raise GalleryError(f"bundle version {version} is not newer than the applied {applied[0]} (replay)")
            local = self._stored()
            gone = [(local[name][0],) for name in local.keys() - incoming.keys()]
            self._db.executemany("DELETE FROM people WHERE id = ?", gone)
            counts["removed"] = len(gone)
            for name, (columns, blob) in incoming.items():
                if name in local and local[name][1:] == (columns, blob):
                    counts["unchanged"] += 1
                    continue
                if name in local:
                    counts["updated"] += 1
                    person = local[name][0]
                    self._db.execute("UPDATE people SET valid_from = ?, valid_until = ?, schedule = ? WHERE id = ?",
                                     (*columns, person))
                    self._db.execute("DELETE FROM embeddings WHERE person_id = ?", (person,))
                else:
                    counts["added"] += 1
                    person = self._db.execute("INSERT INTO people (name, created, valid_from, valid_until, schedule) "
                                              "VALUES (?, ?, ?, ?, ?)", (name, now, *columns)).lastrowid
                row = 4 * self.dim
                self._db.executemany(
                    "INSERT INTO embeddings (person_id, vector, source, created) VALUES (?, ?, 'fleet', ?)",
                    [(person, blob[i:i + row], now) for i in range(0, len(blob), row)])
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                 [(BUNDLE_VERSION_KEY, str(version)), (BUNDLE_SHA256_KEY, sha256)])
        self._index = None
        return ReplaceCounts(**counts)

    def _load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The cached (E x D vectors sorted by person, first row of each person, person names);
        reloaded after our own changes or when another connection has committed. Damaged vectors (of the wrong
        length, or not finite) are left out and counted."""
        with self._sqlite("read the gallery"):
            (version,) = self._db.execute("PRAGMA data_version").fetchone()
            if self._index is not None and version == self._version:
                return self._index
            rows = self._db.execute(
                "SELECT e.person_id, p.name, e.vector FROM embeddings e JOIN people p ON p.id = e.person_id "
                "ORDER BY e.person_id"
            ).fetchall()
        size = self.dim * 4
        good = [r for r in rows if isinstance(r[2], bytes) and len(r[2]) == size
                and np.isfinite(np.frombuffer(r[2], dtype=np.float32)).all()]
        self._damaged = len(rows) - len(good)
        vectors = np.frombuffer(b"".join(r[2] for r in good), dtype=np.float32).reshape(len(good), self.dim)
        persons = np.array([r[0] for r in good], dtype=np.int64)
        starts = np.flatnonzero(np.diff(persons, prepend=-1))
        names = np.array([good[i][1] for i in starts], dtype=object)
        self._index, self._version = (vectors, starts, names), version
        return self._index

    def damaged(self) -> int:
        """How many stored vectors are unusable (of the wrong length, or not finite) and left out of matching."""
        self._load()
        return self._damaged

    def match(self, queries: np.ndarray, top_k: int = 1) -> list[list[tuple[str, float]]]:
        """For each of the Q x D queries, the top_k (name, cosine similarity) people, best first; a person
        scores the best of their embeddings. An empty gallery gives empty lists."""
        queries = self._vectors(queries, "queries")
        if top_k < 1:
            raise GalleryError(f"{self.path}: top_k must be at least 1, got {top_k}")
        vectors, starts, names = self._load()
        if len(names) == 0:
            return [[] for _ in queries]
        scores = queries @ vectors.T
        if len(starts) < len(vectors):
            scores = np.maximum.reduceat(scores, starts, axis=1)
        k = min(top_k, len(names))
        if k < len(names):
            candidates = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        else:
            candidates = np.broadcast_to(np.arange(k), scores.shape)
        top = np.take_along_axis(scores, candidates, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")
        best, top = np.take_along_axis(candidates, order, axis=1), np.take_along_axis(top, order, axis=1)
        return [[(names[j], float(s)) for j, s in zip(row_best, row_top)] for row_best, row_top in zip(best, top)]

    def identify(self, queries: np.ndarray, threshold: float) -> list[tuple[str, float]]:
        """The best (name, similarity) per query, named 'unknown' below `threshold` (or, with an empty gallery,
        'unknown' at -1.0, the lowest cosine)."""
        answers = []
        for top in self.match(queries, 1):
            name, similarity = top[0] if top else (UNKNOWN, -1.0)
            answers.append((name if similarity >= threshold else UNKNOWN, similarity))
        return answers
