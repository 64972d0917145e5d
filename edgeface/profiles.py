"""Hardware profiles: `firmware_configs/<name>.toml` parsed into frozen, validated dataclasses.

Each TOML key is a dataclass field declared with `_key(check)`: its type comes from the annotation and
`check` bounds its value, so one generic walk validates every section and reports the first problem as
`<file>: <section.key>: <problem>`.
"""

from __future__ import annotations

import json
import os
import tomllib
import types
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Union, get_args, get_origin, get_type_hints

from edgeface.errors import ProfileError

DEFAULT_PROFILE = "x86"
PROFILE_DIR = Path(str(resources.files("firmware_configs")))
PROFILES_ENV = "EDGEFACE_PROFILES"

Check = Callable[[Any], None]


class _Invalid(Exception):
    """A bad value; `key` is its path below the table being read (e.g. '.score_threshold', '[1]')."""

    def __init__(self, problem: str, key: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.key = key


def _show(value: object) -> str:
    """A value spelled as in TOML."""
    return json.dumps(value, default=str)


def _must(ok: Callable[[Any], bool], text: str) -> Check:
    """A check: the value must satisfy `ok`, described as 'must be <text>'."""
    def check(value: Any) -> None:
        if not ok(value):
            raise _Invalid(f"must be {text}, got {_show(value)}")
    return check


def _one_of(*choices: object) -> Check:
    """The value must equal one of `choices`."""
    return _must(lambda v: v in choices, "one of " + ", ".join(map(_show, choices)))


def _at_least(low: int) -> Check:
    """The value must be `low` or more."""
    return _must(lambda v: v >= low, f"at least {low}")


def _between(low: float, high: float) -> Check:
    """Strictly between `low` and `high`."""
    return _must(lambda v: low < v < high, f"between {low} and {high}")


def _each(check: Check) -> Check:
    """Apply `check` to every item, naming the bad item's index."""
    def each(values: tuple[Any, ...]) -> None:
        for index, value in enumerate(values):
            try:
                check(value)
            except _Invalid as error:
                raise _Invalid(error.problem, f"[{index}]") from None
    return each


_NON_EMPTY = _must(lambda v: v.strip() != "", "a non-empty string")
_POSITIVE = _must(lambda v: v > 0, "greater than 0")


def _key(check: Check | None = None, default: object = MISSING) -> Any:
    """A dataclass field that is a TOML key, validated by its annotation and `check`."""
    return field(default=default, metadata={"check": check})


class _Table:
    """Base of the TOML-backed dataclasses."""

    def _check_relations(self) -> None:
        """Raise `_Invalid` if keys contradict each other (none do unless overridden)."""


@dataclass(frozen=True)
class DetectorConfig(_Table):
    """Which face detector runs, and how its boxes are filtered."""

    name: str = _key(_one_of("retinaface", "mtcnn"))
    input_size: int = _key(_one_of(320, 640))
    score_threshold: float = _key(_between(0, 1))
    nms_iou: float = _key(_between(0, 1))
    max_faces: int = _key(_at_least(1), default=100)


@dataclass(frozen=True)
class MtcnnConfig(_Table):
    """MTCNN letterbox side, image pyramid and P/R/O-Net thresholds."""

    input_size: int = _key(_must(lambda v: 64 <= v <= 2048 and v % 2 == 0, "an even integer from 64 to 2048"))
    min_face: int = _key(_at_least(12))
    factor: float = _key(_must(lambda v: 0.5 <= v < 1, "at least 0.5 and below 1"))
    max_levels: int = _key(_at_least(1))
    thresholds: tuple[float, float, float] = _key(_each(_between(0, 1)))

    def _check_relations(self) -> None:
        if self.min_face > self.input_size:
            raise _Invalid(f"must be at most mtcnn.input_size ({self.input_size}), got {self.min_face}", ".min_face")


@dataclass(frozen=True)
class RuntimeConfig(_Table):
    """TFLite interpreter settings."""

    threads: int = _key(_at_least(1))
    delegate: str = _key(_one_of("xnnpack", "edgetpu", "none"))
    precision: str = _key(_one_of("int8", "float"))


@dataclass(frozen=True)
class RecognitionConfig(_Table):
    """Gallery matching: cosine similarity below `match_threshold` answers 'unknown'. The door lock accepts a
    track at the threshold that holds a stranger's chance of passing at `false_accept_rate` for the number of
    people enrolled (edgeface.evidence), never below `match_threshold`."""

    match_threshold: float = _key(_between(-1, 1))
    top_k: int = _key(_at_least(1))
    false_accept_rate: float = _key(_between(0, 0.5))


@dataclass(frozen=True)
class CameraConfig(_Table):
    """Capture mode requested from the camera."""

    width: int = _key(_at_least(1))
    height: int = _key(_at_least(1))
    fps: int = _key(_at_least(1))


@dataclass(frozen=True)
class DoorlockConfig(_Table):
    """The door lock: a face is followed as a track, judged once it has been seen in `min_frames` frames (its
    liveness is the mean over those frames), and ended after `max_misses` frames unseen; an accepted track pulses the
    relay for `unlock_seconds`, then no track is judged for `cooldown_seconds`; after an error, retry after
    `backoff_seconds`, doubling up to `backoff_max_seconds`."""

    min_frames: int = _key(_must(lambda v: 1 <= v <= 100, "from 1 to 100"))
    max_misses: int = _key(_must(lambda v: 0 <= v <= 100, "from 0 to 100"))
    unlock_seconds: float = _key(_must(lambda v: 0 < v <= 60, "greater than 0 and at most 60"))
    cooldown_seconds: float = _key(_must(lambda v: v >= 0, "at least 0"))
    relay_pin: int = _key(_must(lambda v: 0 <= v <= 27, "a BCM GPIO number from 0 to 27"))
    relay_active_high: bool = _key()
    backoff_seconds: float = _key(_POSITIVE)
    backoff_max_seconds: float = _key(_POSITIVE)

    def _check_relations(self) -> None:
        if self.backoff_max_seconds < self.backoff_seconds:
            raise _Invalid(f"must be at least doorlock.backoff_seconds ({self.backoff_seconds}), "
                           f"got {self.backoff_max_seconds}", ".backoff_max_seconds")


@dataclass(frozen=True)
class LivenessConfig(_Table):
    """The anti-spoofing stage: whether the door lock requires it, and an optional threshold on P(live)
    (left out: the threshold fitted for the profile's precision, see edgeface.liveness)."""

    required: bool = _key()
    threshold: float | None = _key(_between(0, 1), default=None)


@dataclass(frozen=True)
class ExpectedConfig(_Table):
    """A documented expected latency and where the figure comes from."""

    latency_ms: float | None = _key(_POSITIVE, default=None)
    source: str | None = _key(_NON_EMPTY, default=None)

    def _check_relations(self) -> None:
        if self.latency_ms is not None and self.source is None:
            raise _Invalid("missing (required when expected.latency_ms is given)", ".source")


@dataclass(frozen=True)
class Profile(_Table):
    """One hardware profile; `name` is the file stem."""

    name: str
    path: Path
    description: str = _key(_NON_EMPTY)
    detector: DetectorConfig = _key()
    mtcnn: MtcnnConfig = _key()
    runtime: RuntimeConfig = _key()
    recognition: RecognitionConfig = _key()
    camera: CameraConfig = _key()
    doorlock: DoorlockConfig = _key()
    liveness: LivenessConfig = _key()
    expected: ExpectedConfig | None = _key(default=None)

    def with_overrides(self, *, detector: str | None = None, input_size: int | None = None,
                       score_threshold: float | None = None, precision: str | None = None) -> Profile:
        """A copy with CLI overrides applied (None keeps the profile's value), validated like the file.

        `input_size` goes to the letterbox side of the detector in use: detector.input_size or mtcnn.input_size.
        """
        table = _to_table(self)
        if detector is not None:
            table["detector"]["name"] = detector
        if input_size is not None:
            section = "detector" if table["detector"]["name"] == "retinaface" else "mtcnn"
            table[section]["input_size"] = input_size
        if score_threshold is not None:
            table["detector"]["score_threshold"] = score_threshold
        if precision is not None:
            table["runtime"]["precision"] = precision
        return _build(table, self.path, f"{_display(self.path)} (with overrides)")


def _type_name(hint: Any) -> str:
    """How the expected type reads in a message."""
    if get_origin(hint) is tuple:
        return f"an array of {len(get_args(hint))} numbers"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(hint, "a table")


def _kind(value: object) -> str:
    """The TOML type name of a parsed value."""
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}
    return names.get(type(value), type(value).__name__)


def _convert(value: object, hint: Any) -> Any:
    """`value` as the annotated type (ints are accepted as floats, bools never as numbers)."""
    if get_origin(hint) in (Union, types.UnionType):
        hint = next(arg for arg in get_args(hint) if arg is not type(None))
    if is_dataclass(hint) and isinstance(value, dict):
        return _read_table(hint, value)
    origin = get_origin(hint)
    if origin is tuple and isinstance(value, (list, tuple)) and len(value) == len(get_args(hint)):
        items = []
        for index, (item, item_hint) in enumerate(zip(value, get_args(hint))):
            try:
                items.append(_convert(item, item_hint))
            except _Invalid as error:
                raise _Invalid(error.problem, f"[{index}]") from None
        return tuple(items)
    if not isinstance(value, bool):
        if hint is float and isinstance(value, (int, float)):
            return float(value)
        if hint in (int, str) and isinstance(value, hint):
            return value
    elif hint is bool:
        return value
    raise _Invalid(f"must be {_type_name(hint)}, got {_kind(value)} {_show(value)}")


def _read_table(cls: type[_Table], table: dict[str, Any], **extra: Any) -> Any:
    """An instance of `cls` from a TOML table: no unknown or missing keys, every value typed and checked."""
    keys = [f for f in fields(cls) if "check" in f.metadata]
    known = {f.name for f in keys}
    for key in table:
        if key not in known:
            raise _Invalid(f"unknown key (allowed: {', '.join(sorted(known))})", f".{key}")
    hints = get_type_hints(cls)
    values = dict(extra)
    for spec in keys:
        if spec.name not in table:
            if spec.default is MISSING:
                raise _Invalid("missing required key", f".{spec.name}")
            continue
        try:
            value = _convert(table[spec.name], hints[spec.name])
            if spec.metadata["check"] is not None:
                spec.metadata["check"](value)
        except _Invalid as error:
            raise _Invalid(error.problem, f".{spec.name}{error.key}") from None
        values[spec.name] = value
    instance = cls(**values)
    instance._check_relations()
    return instance


def _to_table(instance: _Table) -> dict[str, Any]:
    """The TOML table of a profile or section (absent optional keys left out)."""
    table: dict[str, Any] = {}
    for spec in fields(instance):
        value = getattr(instance, spec.name)
        if "check" in spec.metadata and value is not None:
            table[spec.name] = _to_table(value) if is_dataclass(value) else value
    return table


def _display(path: Path) -> str:
    """`path` relative to the working directory when below it, else as is."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _build(table: dict[str, Any], path: Path, where: str) -> Profile:
    """A validated Profile from a parsed TOML document; `where` names it in errors."""
    try:
        return _read_table(Profile, table, name=path.stem, path=path)
    except _Invalid as error:
        raise ProfileError(f"{where}: {error.key.lstrip('.')}: {error.problem}") from None


def profile_dir() -> Path:
    """The folder of profiles: $EDGEFACE_PROFILES if set, else the bundled `firmware_configs`."""
    override = os.environ.get(PROFILES_ENV)
    folder = Path(override) if override else PROFILE_DIR
    if not folder.is_dir():
        raise ProfileError(f"{PROFILES_ENV}={override}: not a folder")
    return folder


def available_profiles() -> list[str]:
    """Names of the profiles in `profile_dir()`, sorted."""
    return sorted(path.stem for path in profile_dir().glob("*.toml"))


def load_profile(name_or_path: str | Path = DEFAULT_PROFILE) -> Profile:
    """The profile called `name_or_path` in `profile_dir()`, or the .toml file at that path."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or text.endswith(".toml") or "/" in text or os.sep in text:
        path = Path(name_or_path)
        if not path.is_file():
            raise ProfileError(f"{_display(path)}: no such profile file")
    else:
        path = profile_dir() / f"{text}.toml"
        if not path.is_file():
            names = ", ".join(available_profiles()) or "none"
            raise ProfileError(f"unknown profile '{text}' (available: {names})")
    where = _display(path)
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ProfileError(f"{where}: invalid TOML: {error}") from None
    except OSError as error:
        raise ProfileError(f"{where}: cannot read: {error.strerror}") from None
    return _build(document, path, where)
