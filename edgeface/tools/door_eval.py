"""The door lock end to end on nuaa_dev: does each person get in, does their printed photo, do strangers?

`python -m edgeface.tools.door_eval [--profile rpi4] [--data DIR]`:
1. Everyone enrolled from their first 3 live frames; each person's other live frames are one visit (admitted?),
   their printed-photo frames another (unlocks: should be 0).
2. Look-alikes: the people split in two halves; one half enrolled, the other half walks up (live frames and
   printed photos), and the other way round; every unlock there is a false one: reported per 1,000 stranger
   frames.
Both for the tracked door (edgeface.doorlock) and, for comparison, the per-frame loop it replaced.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from edgeface.analyzer import FaceAnalyzer
from edgeface.gallery import Gallery
from edgeface.images import load_image
from edgeface.profiles import Profile, load_profile
from edgeface.tools.datasets import data_dir
from edgeface.tools.stream_bench import ENROLL, Visit, nuaa_visits, per_frame_visit, tracked_visit

LOOPS = ("tracked", "per_frame")


def _visit(loop: str, profile: Profile, analyzer: FaceAnalyzer, gallery: Gallery, paths: list[Path]) -> Visit:
    frames = [load_image(path) for path in paths]
    if loop == "tracked":
        return tracked_visit(profile, analyzer, gallery, frames)
    return per_frame_visit(analyzer, gallery, frames)


def _enroll(analyzer: FaceAnalyzer, gallery: Gallery, people: list[str], live: dict[str, list[Path]]) -> None:
    for person in people:
        for path in live[person][:ENROLL]:
            gallery.add(person, max(analyzer.embed(path), key=lambda f: f.area).embedding[None])


def door_eval(profile: Profile, root: Path, scratch: Path) -> dict[str, object]:
    """The report (see the module docstring)."""
    analyzer = FaceAnalyzer(profile)
    live, spoof = dict(nuaa_visits(root, "live")), dict(nuaa_visits(root, "spoof"))
    people = sorted(live)
    report: dict[str, object] = {"profile": profile.name, "people": {}, "lookalikes": {}}
    with analyzer.open_gallery(scratch / "all.db") as gallery:
        _enroll(analyzer, gallery, people, live)
        for person in people:
            row = {}
            for loop in LOOPS:
                own = _visit(loop, profile, analyzer, gallery, live[person][ENROLL:])
                photo = _visit(loop, profile, analyzer, gallery, spoof[person])
                row[loop] = {"admitted": person in own.unlocked, "wrong_person_admitted": sum(
                    name != person for name in own.unlocked), "photo_unlocks": len(photo.unlocked),
                    "frames_to_unlock": own.unlock_frame}
            report["people"][person] = row  # type: ignore[index]
    halves = (people[: len(people) // 2], people[len(people) // 2:])
    for enrolled, walkers in (halves, halves[::-1]):
        name = f"{enrolled[0]}..{enrolled[-1]} enrolled"
        with analyzer.open_gallery(scratch / f"{enrolled[0]}.db") as gallery:
            _enroll(analyzer, gallery, enrolled, live)
            row = {}
            for loop in LOOPS:
                frames, unlocks = 0, 0
                for person in walkers:
                    for paths in (live[person], spoof[person]):
                        visit = _visit(loop, profile, analyzer, gallery, paths)
                        frames, unlocks = frames + visit.frames, unlocks + len(visit.unlocked)
                row[loop] = {"stranger_frames": frames, "false_unlocks": unlocks,
                             "per_1000_frames": 1000 * unlocks / frames}
            report["lookalikes"][name] = row  # type: ignore[index]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeface.tools.door_eval", description=__doc__)
    parser.add_argument("--profile", default="rpi4")
    parser.add_argument("--data", type=Path, default=data_dir())
    args = parser.parse_args(argv)
    if args.data is None or not (args.data / "nuaa_dev" / "labels.csv").is_file():
        parser.error("nuaa_dev not found: pass --data DIR")
    with tempfile.TemporaryDirectory() as scratch:
        report = door_eval(load_profile(args.profile), args.data / "nuaa_dev", Path(scratch))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
