"""`edgeface watch`: the door's tracked stream without a relay, one line per track event.

Events: `appeared` (a track is confirmed), `identified` (the door would open: NAME, similarity, liveness),
`not_live` (the door would refuse it as a spoof), `live` (liveness passed, no gallery given) and `left` (the
track ended, with the identity it ended with, or 'unknown').
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

from edgeface.analyzer import FaceAnalyzer
from edgeface.camera import open_source
from edgeface.doorlock import GalleryWatch, accept_rules, door_stream
from edgeface.evidence import AcceptRules
from edgeface.gallery import UNKNOWN
from edgeface.profiles import Profile
from edgeface.tracker import StreamFrame


def events(stream: Iterator[StreamFrame], gallery: GalleryWatch | None,
           rules: AcceptRules) -> Iterator[dict[str, object]]:
    """The track events of a tracked stream (see the module docstring), judged by the door's rules."""
    for result in stream:
        for track in result.tracks:
            if not track.confirmed:
                continue
            if "appeared" not in track.state:
                track.state["appeared"] = True
                yield {"event": "appeared", "track": track.track_id, "frame": result.index,
                       "face": track.face.to_json() if track.face is not None else None}
            if "verdict" in track.state:
                continue
            if gallery is None:
                live = rules.liveness(track)
                if live is not None and rules.liveness_threshold is not None:
                    decision = "live" if live >= rules.liveness_threshold else "not_live"
                    track.state["verdict"] = decision
                    yield {"event": decision, "track": track.track_id, "frame": result.index,
                           "liveness": round(live, 4)}
                continue
            verdict = rules.judge(track, gallery.current())
            if verdict.decision != "wait":
                track.state["verdict"] = verdict.identity if verdict.decision == "unlock" else UNKNOWN
                yield {"event": "identified" if verdict.decision == "unlock" else verdict.decision,
                       "track": track.track_id, "frame": result.index, "identity": verdict.identity,
                       "similarity": None if verdict.similarity is None else round(verdict.similarity, 4),
                       "liveness": None if verdict.liveness is None else round(verdict.liveness, 4)}
        for track in result.ended:
            if track.confirmed:
                identity = track.state.get("verdict")
                yield {"event": "left", "track": track.track_id, "frame": result.index, "frames": track.hits,
                       "identity": identity if isinstance(identity, str) and identity not in ("live", "not_live")
                       else UNKNOWN}


def _text(event: dict[str, object]) -> str:
    """One event as a line for people."""
    details = " ".join(f"{key}={value}" for key, value in event.items() if key not in ("event", "track", "face"))
    return f"track {event['track']}: {event['event']} {details}".rstrip()


def run(profile: Profile, source: str, gallery: Path | None, as_json: bool, follow: bool = False) -> int:
    """Print the events of `source` until it ends (0)."""
    analyzer = FaceAnalyzer(profile)
    watch = None if gallery is None else GalleryWatch(gallery, lambda path: analyzer.open_gallery(path, create=False))
    if watch is not None:
        watch.current()

    def warn(text: str) -> None:
        print(f"edgeface: {text}", file=sys.stderr, flush=True)

    rules = accept_rules(profile, analyzer)
    stream = door_stream(profile, analyzer, rules, None if watch is None else watch.current)
    try:
        with open_source(source, profile.camera, follow=follow, warn=warn,
                         max_pixels=profile.runtime.max_image_pixels) as frames:
            for event in events(stream.run(frames), watch, rules):
                print(json.dumps(event) if as_json else _text(event), flush=True)
    finally:
        if watch is not None:
            watch.close()
    return 0
