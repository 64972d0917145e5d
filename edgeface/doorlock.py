"""The door lock: frames -> face tracks -> one decision per track -> relay pulse, failing closed.

Each face is followed as a track (edgeface.tracker); its identity and liveness evidence accumulate over its own
frames and are judged by `edgeface.evidence.AcceptRules`, so two people never share evidence and a track judged
not live stays refused while it lasts. The relay is on (unlocked) only inside `DoorLock._pulse`, whose `finally`
turns it off, and only after the unlock's audit line is written: an audit log that cannot be written keeps the
door locked. Before every decision the gallery file is checked (`GalleryWatch`): replaced, it is reopened;
deleted or unreadable, the attempt fails and everyone is refused until it is readable again. Any exception turns
the relay off, is logged (audit and stderr) and the attempt is retried after a doubling, capped backoff; a
misconfiguration found when the lock starts (no gallery, a gallery of another model, no models, no OpenCV) ends
it with exit code 2 instead, so systemd shows a failed unit. SIGTERM or SIGINT ends the loop with the relay off.
Unlocks are one audit line each; unknown and refused tracks one line each when they end (no image, ever).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from edgeface.analyzer import FaceAnalyzer
from edgeface.camera import FrameSource, SourceUnavailable, open_source
from edgeface.errors import CameraError, EdgefaceError, GalleryError, ModelError, ProfileError, RelayError
from edgeface.evidence import IMPOSTORS, AcceptRules, Verdict
from edgeface.gallery import Gallery
from edgeface.profiles import DoorlockConfig, Profile
from edgeface.tracker import FaceStream, StreamFrame, Track, TrackerConfig

if TYPE_CHECKING:
    from edgeface.fleet import LinkConfig

AUDIT_MAX_BYTES = 1_000_000
AUDIT_BACKUPS = 5
"""The audit log rotates at 1 MB and keeps 5 old files (a bounded footprint on an SD card)."""


class DoorlockError(EdgefaceError):
    """The door lock cannot run as configured (audit log path, relay)."""


class AuditError(EdgefaceError):
    """An audit line could not be written (disk full, read-only, removed): the door stays locked."""


class Relay(Protocol):
    """What the door lock needs of a relay (gpiozero's DigitalOutputDevice has it): on = unlocked."""

    def on(self) -> None: ...

    def off(self) -> None: ...

    def close(self) -> None: ...


Galleries = Callable[[], Gallery]
"""Gives the gallery to decide with, checked afresh (GalleryWatch.current)."""

Session = Callable[[], AbstractContextManager[tuple[Iterator[StreamFrame], Galleries]]]
"""Opens what one attempt needs (tracked frames and the gallery); called again after every failure."""


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


class _StrictRotatingHandler(logging.handlers.RotatingFileHandler):
    """A rotating file handler whose write errors reach the caller instead of being printed and dropped."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        raise  # noqa: PLE0704 - called from inside emit's except block: re-raises the write error


class _StrictStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler whose write errors reach the caller."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802
        raise  # noqa: PLE0704


class AuditLog:
    """One JSON line per record, to a size-rotated file (or stdout); `write` raises AuditError when the line
    could not be written and flushed. `listeners` also get every record written (e.g. the fleet link)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.listeners: list[Callable[[dict[str, object]], None]] = []
        self._logger = logging.Logger("edgeface.audit")  # not registered: nothing propagates to or from it
        if path is None:
            handler: logging.Handler = _StrictStreamHandler(sys.stdout)
        else:
            if path.is_dir():
                raise DoorlockError(f"{path}: the audit log is a folder; give a file path, e.g. {path / 'door.jsonl'}")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                handler = _StrictRotatingHandler(path, maxBytes=AUDIT_MAX_BYTES, backupCount=AUDIT_BACKUPS)
            except OSError as error:
                raise DoorlockError(f"{path}: cannot write the audit log ({error.strerror or error})") from None
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger.addHandler(handler)

    def write(self, record: dict[str, object]) -> None:
        """Write one record (stamped with the time) or raise AuditError."""
        record = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), **record}
        try:
            self._logger.info(json.dumps(record))
        except (OSError, ValueError) as error:
            where = self.path or "stdout"
            raise AuditError(f"{where}: cannot write the audit log ({getattr(error, 'strerror', None) or error})"
                             ) from None
        for listener in self.listeners:
            listener(record)

    def close(self) -> None:
        """Close the file."""
        for handler in self._logger.handlers:
            handler.close()


class GalleryWatch:
    """The gallery at `path`, reopened when the file is replaced (another inode) and refused when it is gone."""

    def __init__(self, path: Path, open_gallery: Callable[[Path], Gallery]) -> None:
        self.path = path
        self._open = open_gallery
        self._gallery: Gallery | None = None
        self._identity: tuple[int, int] | None = None

    def current(self) -> Gallery:
        """The gallery as the file is now, or GalleryError when it is missing or unreadable."""
        try:
            stat = self.path.stat()
        except OSError as error:
            self.close()
            raise GalleryError(f"{self.path}: no gallery there ({error.strerror}); refusing everyone") from None
        identity = (stat.st_dev, stat.st_ino)
        if self._gallery is None or identity != self._identity:
            self.close()
            self._gallery, self._identity = self._open(self.path), identity
        try:
            self._gallery.people()
        except Exception as error:  # sqlite3 errors and GalleryError alike: the file cannot be read as it is
            self.close()
            raise GalleryError(f"{self.path}: the gallery cannot be read ({error}); refusing everyone") from None
        return self._gallery

    def close(self) -> None:
        """Close the open gallery, if any."""
        if self._gallery is not None:
            self._gallery.close()
            self._gallery = None


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


PERMANENT = (GalleryError, ModelError, ProfileError, SourceUnavailable)
"""Errors that retrying cannot fix when the lock has not yet started (it then exits with 2)."""


class DoorLock:
    """The decision loop over tracked frames; see the module docstring."""

    def __init__(self, config: DoorlockConfig, rules: AcceptRules, relay: Relay, audit: AuditLog) -> None:
        self.config = config
        self.rules = rules
        self.relay = relay
        self.audit = audit
        self._stop = threading.Event()
        self._stop_reason = ""
        self._quiet_until = 0.0  # monotonic time the cooldown ends

    def stop(self, reason: str = "stop requested") -> None:
        """End the loop (callable from a signal handler or another thread); the relay ends off."""
        self._stop_reason = reason
        self._stop.set()

    @property
    def stopped(self) -> bool:
        """True once `stop` was called."""
        return self._stop.is_set()

    def _record(self, verdict: Verdict, track: Track) -> dict[str, object]:
        return {"decision": verdict.decision, "track": track.track_id, "identity": verdict.identity,
                "similarity": None if verdict.similarity is None else round(verdict.similarity, 4),
                "threshold": None if verdict.threshold is None else round(verdict.threshold, 4),
                "liveness": None if verdict.liveness is None else round(verdict.liveness, 4),
                "frames": track.hits, "views": len(track.views),
                **({"reason": verdict.reason} if verdict.reason else {})}

    def _lock(self) -> None:
        """Relay off; if even that fails, say so (nothing else can be done from here)."""
        try:
            self.relay.off()
        except Exception as error:
            message = f"{type(error).__name__}: {error}"
            self._say("relay_error", message, error=message)

    def _say(self, decision: str, text: str, **extra: object) -> None:
        """A non-decision line (error, stopped): `text` on stderr, and the record in the audit log when it can be
        written there."""
        print(f"edgeface: doorlock: {decision}: {text}", file=sys.stderr, flush=True)
        try:
            self.audit.write({"decision": decision, **extra})
        except AuditError:
            pass  # already on stderr; the relay is off whatever happens here

    def decide(self, result: StreamFrame, gallery: Galleries) -> list[str]:
        """The decisions this frame brings: at most one per track ('unlock', 'not_live' or 'refused'), and one
        line for each track that ended undecided ('unknown') or refused."""
        decisions = []
        for track in result.tracks:
            if not track.confirmed or "verdict" in track.state or time.monotonic() < self._quiet_until:
                continue
            current = gallery()
            verdict = self.rules.judge(track, current)
            if verdict.decision == "unlock" and (reason := current.access(verdict.identity, datetime.now())):
                verdict = replace(verdict, decision="refused", reason=reason)  # validity days, weekly schedule
            if verdict.decision == "wait":
                track.state["last"] = verdict
                continue
            track.state["verdict"] = verdict
            decisions.append(verdict.decision)
            if verdict.decision == "unlock":
                self.audit.write(self._record(verdict, track))  # first: no unlock that is not in the log
                self._pulse()
        for track in result.ended:
            verdict = track.state.get("verdict") or track.state.get("last") or Verdict("wait")
            if not track.confirmed or verdict.decision == "unlock":
                continue
            final = verdict if verdict.decision != "wait" else replace(verdict, decision="unknown", threshold=None)
            self.audit.write(self._record(final, track))
            decisions.append(final.decision)
        return decisions

    def _pulse(self) -> None:
        """Relay on for unlock_seconds (cut short by stop), off whatever happens, then the cooldown."""
        try:
            self.relay.on()
            self._stop.wait(self.config.unlock_seconds)
        finally:
            self._lock()
        self._quiet_until = time.monotonic() + self.config.cooldown_seconds

    def run(self, session: Session) -> int:
        """Decide over the session's frames until the source ends (0) or a signal or `stop` ends it (0); 2 when the
        lock cannot even start on a misconfiguration that no retry can fix.

        Other failures never escape: each is logged, the relay goes off, and the session is reopened after a backoff.
        """
        backoff = self.config.backoff_seconds
        opened = False
        with _stop_on_signals(self.stop):
            try:
                while not self._stop.is_set():
                    try:
                        with session() as (frames, gallery):
                            opened = True
                            for result in frames:
                                if self._stop.is_set():
                                    break
                                self.decide(result, gallery)
                                backoff = self.config.backoff_seconds
                            else:
                                self._stop_reason = "source ended"
                                return 0
                    except Exception as error:
                        self._lock()
                        message = f"{type(error).__name__}: {error}"
                        if not opened and isinstance(error, PERMANENT):
                            self._stop_reason = "misconfigured"
                            self._say("error", f"{message}; exiting with 2", error=message, exit=2)
                            return 2
                        self._say("error", f"{message}; the relay is off, retrying in {backoff:g} s", error=message,
                                  retry_in=backoff)
                        self._stop.wait(backoff)
                        backoff = min(2 * backoff, self.config.backoff_max_seconds)
                return 0
            finally:
                self._lock()
                reason = self._stop_reason or "exception"
                self._say("stopped", reason, reason=reason)


def accept_rules(profile: Profile, analyzer: FaceAnalyzer) -> AcceptRules:
    """The door's accept rule from the profile, for the analyzer's precision (loads the liveness model when the
    profile requires liveness)."""
    threshold = analyzer.liveness_scorer.threshold if profile.liveness.required else None
    return AcceptRules(profile.doorlock.min_frames, profile.recognition.false_accept_rate,
                       profile.recognition.match_threshold, IMPOSTORS[analyzer.precision], threshold)


def door_stream(profile: Profile, analyzer: FaceAnalyzer, rules: AcceptRules,
                gallery: Galleries | None) -> FaceStream:
    """The tracked stream the door decides on: the profile's track ending, liveness scored on `min_frames` frames
    of the tracks that match someone in the gallery (of every track without a gallery)."""
    config = profile.doorlock
    return FaceStream(analyzer, TrackerConfig(max_misses=config.max_misses),
                      config.min_frames if profile.liveness.required else 0,
                      (lambda track: True) if gallery is None else lambda track: rules.candidate(track, gallery()))


def run(profile: Profile, gallery: Path, source: str, *, relay_pin: int | None = None,
        audit_log: Path | None = None, dry_run: bool = False, follow: bool = False,
        fleet: LinkConfig | None = None) -> int:
    """The `edgeface doorlock` command: run the lock on `source` until it ends or a signal stops it; with `fleet`,
    also apply the fleet's signed galleries and publish every audit record (edgeface.fleet)."""
    config = profile.doorlock
    pin = config.relay_pin if relay_pin is None else relay_pin
    analyzer = FaceAnalyzer(profile)
    rules = accept_rules(profile, analyzer)
    audit = AuditLog(audit_log)
    relay: Relay = DryRunRelay(pin) if dry_run else gpio_relay(pin, config.relay_active_high)
    link = None
    if fleet is not None:  # the fleet's hooks: a gallery for it to fill, the link, a relay Home Assistant can see
        from edgeface.fleet import ReportingRelay, start_door_link

        analyzer.open_gallery(gallery).close()
        link = start_door_link(fleet, gallery, audit)
        relay = ReportingRelay(relay, link)
    lock = DoorLock(config, rules, relay, audit)
    frames: FrameSource | None = None

    def warn(text: str) -> None:
        print(f"edgeface: {text}", file=sys.stderr, flush=True)

    @contextmanager
    def session() -> Iterator[tuple[Iterator[StreamFrame], Galleries]]:
        nonlocal frames
        watch = GalleryWatch(gallery, lambda path: analyzer.open_gallery(path, create=False))
        try:
            watch.current()
            if frames is None:  # a folder or a video resumes where it stopped; only a lost camera is opened anew
                frames = open_source(source, profile.camera, follow=follow, stopped=lambda: lock.stopped, warn=warn,
                                     max_pixels=profile.runtime.max_image_pixels)
            try:
                yield door_stream(profile, analyzer, rules, watch.current).run(frames), watch.current
            except CameraError:
                frames.close()
                frames = None
                raise
        finally:
            watch.close()

    try:
        return lock.run(session)
    finally:
        relay.close()
        if link is not None:
            link.stop()
        if frames is not None:
            frames.close()
        audit.close()
