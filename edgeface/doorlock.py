"""The door lock: frame -> largest face -> gallery match -> K-of-N vote -> relay pulse, failing closed.

The relay is on (unlocked) only inside `DoorLock._pulse`, whose `finally` turns it off. Any exception (camera lost,
model or gallery error, a bug) turns the relay off, clears the votes, is logged, and the loop retries after a
doubling, capped backoff; SIGTERM or SIGINT ends the loop with the relay off. Every decision on a frame with a face
is one JSON line in the audit log (no image). gpiozero is imported only to drive a real relay.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from edgeface.analyzer import Face, FaceAnalyzer
from edgeface.camera import open_source
from edgeface.errors import GalleryError, RelayError
from edgeface.gallery import UNKNOWN, Gallery
from edgeface.profiles import DoorlockConfig, Profile

if TYPE_CHECKING:
    from edgeface.fleet import LinkConfig

AUDIT_MAX_BYTES = 1_000_000
AUDIT_BACKUPS = 5
"""The audit log rotates at 1 MB and keeps 5 old files (a bounded footprint on an SD card)."""


class Relay(Protocol):
    """What the door lock needs of a relay (gpiozero's DigitalOutputDevice has it): on = unlocked."""

    def on(self) -> None: ...

    def off(self) -> None: ...

    def close(self) -> None: ...


class Recognizer(Protocol):
    """The largest face of a frame with `identity` ('unknown' below the threshold) and `similarity`, or None."""

    def __call__(self, frame: np.ndarray) -> Face | None: ...


Session = Callable[[], AbstractContextManager[tuple[Iterable[np.ndarray], Recognizer]]]
"""Opens what one attempt needs (frames and a recognizer); called again after every failure."""


class DryRunRelay:
    """Stands in for the relay under --dry-run: reports its state on stderr."""

    def __init__(self, pin: int) -> None:
        self.pin = pin
        self.is_active = False

    def _set(self, active: bool) -> None:
        if active != self.is_active:
            print(f"edgeface: dry run: relay on GPIO {self.pin} {'ON (unlocked)' if active else 'off (locked)'}",
                  file=sys.stderr, flush=True)
        self.is_active = active

    def on(self) -> None:
        self._set(True)

    def off(self) -> None:
        self._set(False)

    def close(self) -> None:
        self._set(False)


def gpio_relay(pin: int, active_high: bool) -> Relay:
    """The relay on BCM GPIO `pin` through gpiozero, starting off (locked)."""
    try:
        from gpiozero import DigitalOutputDevice
        from gpiozero.exc import GPIOZeroError
    except ImportError:
        raise RelayError("gpiozero is not installed: pip install 'edgeface[pi]' (or pass --dry-run)") from None
    try:
        return DigitalOutputDevice(pin, active_high=active_high, initial_value=False)
    except GPIOZeroError as error:
        raise RelayError(f"GPIO {pin}: cannot drive the relay ({error})") from None


def audit_logger(path: Path | None) -> logging.Logger:
    """A logger writing one message per line to `path` (rotated by size), or to stdout when None."""
    logger = logging.Logger("edgeface.audit")  # not registered: nothing propagates to or from other loggers
    if path is None:
        handler: logging.Handler = logging.StreamHandler(sys.stdout)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=AUDIT_MAX_BYTES, backupCount=AUDIT_BACKUPS)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    return logger


class GalleryRecognizer:
    """Detect, embed only the largest face and name it from the gallery at the profile's match threshold;
    with `check_liveness`, also score it live or spoof (edgeface.liveness)."""

    def __init__(self, analyzer: FaceAnalyzer, gallery: Gallery, check_liveness: bool = False) -> None:
        self.analyzer = analyzer
        self.gallery = gallery
        self.threshold = analyzer.profile.recognition.match_threshold
        self.check_liveness = check_liveness

    def __call__(self, frame: np.ndarray) -> Face | None:
        faces = self.analyzer.detect(frame)
        if not faces:
            return None
        face = max(faces, key=lambda f: f.area)
        face.embedding = self.analyzer.embedder.embed(frame, np.array([face.landmarks]))[0]
        [(face.identity, face.similarity)] = self.gallery.identify(face.embedding[None], self.threshold)
        if self.check_liveness:
            self.analyzer.score_liveness(frame, [face])
        return face


@contextmanager
def _stop_on_signals(stop: Callable[[str], None]) -> Iterator[None]:
    """Route SIGTERM and SIGINT to `stop` while inside (main thread only), then restore the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda signum, _: stop(signal.Signals(signum).name))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class DoorLock:
    """The decision loop. A face the recognizer judged not live (`Face.live` False) never counts as a match."""

    def __init__(self, config: DoorlockConfig, relay: Relay, audit: logging.Logger) -> None:
        self.config = config
        self.relay = relay
        self.audit = audit
        self._votes: deque[str | None] = deque(maxlen=config.window)
        self._stop = threading.Event()
        self._stop_reason = ""

    def stop(self, reason: str = "stop requested") -> None:
        """End the loop (callable from a signal handler or another thread); the relay ends off."""
        self._stop_reason = reason
        self._stop.set()

    def _log(self, decision: str, face: Face | None = None, **extra: object) -> None:
        record: dict[str, object] = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "decision": decision,
            "identity": face.identity if face is not None else None,
            "similarity": round(float(face.similarity), 4) if face is not None else None,
            "liveness": round(float(face.liveness), 4) if face is not None and face.liveness is not None else None,
            **extra,
        }
        self.audit.info(json.dumps(record))

    def _lock(self) -> None:
        """Relay off; if even that fails, say so (nothing else can be done from here)."""
        try:
            self.relay.off()
        except Exception as error:
            self._log("relay_error", error=f"{type(error).__name__}: {error}")

    def step(self, frame: np.ndarray, recognize: Recognizer) -> str | None:
        """Decide on one frame: 'unlock', 'pending' (enrolled, too few votes), 'unknown' or 'not_live';
        None without a face (a miss in the vote window, not logged)."""
        face = recognize(frame)
        if face is None:
            self._votes.append(None)
            return None
        live = face.live is not False
        name = face.identity if live and face.identity != UNKNOWN else None
        self._votes.append(name)
        votes = self._votes.count(name) if name is not None else 0
        if name is not None and votes >= self.config.votes:
            decision = "unlock"
        else:
            decision = "not_live" if not live else "pending" if name is not None else "unknown"
        self._log(decision, face, votes=votes)
        if decision == "unlock":
            self._pulse()
        return decision

    def _pulse(self) -> None:
        """Relay on for unlock_seconds (cut short by stop), off whatever happens, then the cooldown."""
        self._votes.clear()
        try:
            self.relay.on()
            self._stop.wait(self.config.unlock_seconds)
        finally:
            self._lock()
        self._stop.wait(self.config.cooldown_seconds)

    def run(self, session: Session) -> int:
        """Loop over the session's frames until the source ends (0) or a signal or `stop` ends it (0).

        Failures never escape: each is logged, the relay goes off, and the session is reopened after a backoff.
        """
        backoff = self.config.backoff_seconds
        with _stop_on_signals(self.stop):
            try:
                while not self._stop.is_set():
                    try:
                        with session() as (frames, recognize):
                            for frame in frames:
                                if self._stop.is_set():
                                    break
                                self.step(frame, recognize)
                                backoff = self.config.backoff_seconds
                            else:
                                self._stop_reason = "source ended"
                                return 0
                    except Exception as error:
                        self._lock()
                        self._votes.clear()
                        self._log("error", error=f"{type(error).__name__}: {error}", retry_in=backoff)
                        self._stop.wait(backoff)
                        backoff = min(2 * backoff, self.config.backoff_max_seconds)
                return 0
            finally:
                self._lock()
                self._log("stopped", reason=self._stop_reason or "exception")


def run(profile: Profile, gallery: Path, source: str, *, relay_pin: int | None = None,
        audit_log: Path | None = None, dry_run: bool = False, fleet: LinkConfig | None = None) -> int:
    """The `edgeface doorlock` command: run the lock on `source` until it ends or a signal stops it; with `fleet`,
    also apply the fleet's signed galleries and publish every audit line (edgeface.fleet)."""
    config = profile.doorlock
    pin = config.relay_pin if relay_pin is None else relay_pin
    relay: Relay = DryRunRelay(pin) if dry_run else gpio_relay(pin, config.relay_active_high)
    audit = audit_logger(audit_log)
    link = None
    if fleet is not None:  # the fleet's hooks: a gallery to fill, the link, a relay Home Assistant can see
        from edgeface.fleet import ReportingRelay, start_door_link

        FaceAnalyzer(profile).open_gallery(gallery).close()
        link = start_door_link(fleet, gallery, audit)
        relay = ReportingRelay(relay, link)

    @contextmanager
    def session() -> Iterator[tuple[Iterable[np.ndarray], Recognizer]]:
        if not gallery.is_file():
            raise GalleryError(f"{gallery}: no such gallery (create it with 'edgeface enroll')")
        analyzer = FaceAnalyzer(profile)
        with analyzer.open_gallery(gallery) as people, open_source(source, profile.camera) as frames:
            yield frames, GalleryRecognizer(analyzer, people, profile.liveness.required)

    try:
        return DoorLock(config, relay, audit).run(session)
    finally:
        relay.close()
        if link is not None:
            link.stop()
        for handler in audit.handlers:
            handler.close()
