"""Many doors, one enrolment: signed gallery bundles over MQTT, door events out, Home Assistant discovery.

Imported only when the fleet is used; it needs the `fleet` extra (paho-mqtt, cryptography). Topics, for a site and
a door named with letters, digits, '_' and '-':

    edgeface/<site>/gallery               retained  the signed bundle (`edgeface fleet publish`)
    edgeface/<site>/<door>/gallery        retained  the door's report on the last bundle: version, sha256, offered,
                                                    added, removed, updated, unchanged, status, error, time, site,
                                                    door; signed with the door's own key when it has one
    edgeface/<site>/<door>/availability   retained  online / offline (the last will)
    edgeface/<site>/<door>/event          QoS 1     each audit record plus door, seq and event_type
    edgeface/<site>/<door>/state          retained  {"lock", "last_person", "last_event"}
    edgeface/<site>/<door>/lock/set       -         Home Assistant's lock commands: always refused, audited
    homeassistant/<component>/edgeface_<site>_<door>/<object>/config   retained discovery

A bundle is the canonical JSON (sorted keys, no spaces, ASCII) of the whole gallery, signed with Ed25519; a door
applies it only if the signature verifies against its trusted key, the site and the embedding model match its own,
and its version is newer than the one applied (kept in the gallery's meta table, so a replay is refused across
restarts). A door given its own Ed25519 key signs its report the same way, naming its site and door inside the
signed text, so `status` with the doors' public keys tells a report the door made from one anyone else published
(a report moved to another door's topic, altered, unsigned or signed by another key). Events wait in an SQLite
queue beside the gallery while the broker is away (QUEUE_LIMIT, oldest dropped past it; `seq` shows any gap) and
are delivered in order, at least once, when it is back.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import sqlite3
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeface.errors import EdgefaceError, FleetError, GalleryError

try:
    import paho.mqtt.client as mqtt
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
except ImportError as missing:
    raise FleetError(f"the fleet needs paho-mqtt and cryptography ({missing.name} is missing): "
                     "pip install 'edgeface[fleet]'") from None

from edgeface.access import AccessRules, parse_day, parse_schedule
from edgeface.gallery import Gallery, Person

if TYPE_CHECKING:
    from edgeface.doorlock import AuditLog

BUNDLE_FORMAT = "edgeface-gallery-bundle/1"
REPORT_FORMAT = "edgeface-door-report/1"
DEFAULT_SITE = "home"
DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
QUEUE_LIMIT = 10_000
"""Events kept on disk while the broker is away; past it the oldest go first."""
EVENT_TYPES = ("recognised", "unknown", "spoof", "refused", "error", "relay_error", "stopped", "bundle_applied",
               "bundle_refused", "remote_unlock_refused")
"""The Home Assistant event entity's types: a decision's own name, but unlock -> recognised, not_live -> spoof."""
_EVENT_TYPE = {"unlock": "recognised", "not_live": "spoof"}
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class BundleError(FleetError):
    """A bundle this door must not apply: bad signature, another site or model, malformed, or a replay."""


def check_name(value: str, what: str) -> str:
    """A site or door name usable in a topic, else a FleetError."""
    if not _NAME.match(value):
        raise FleetError(f"{what} {value!r}: use 1 to 64 letters, digits, '_' or '-'")
    return value


@dataclass(frozen=True)
class Broker:
    """An MQTT broker from `mqtt://[USER@]HOST[:PORT]`, or `mqtts://` for TLS (the broker's certificate checked
    against $EDGEFACE_MQTT_CA, a PEM file, or else the system's CAs, and its host name against the certificate);
    the password, if any, from $EDGEFACE_MQTT_PASSWORD."""

    host: str
    port: int = DEFAULT_PORT
    username: str | None = None
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> Broker:
        found = re.match(r"^(?P<scheme>mqtts?)://(?:(?P<user>[^@/:]+)@)?(?P<host>[A-Za-z0-9.-]+|\[[0-9a-fA-F:]+\])"
                         r"(?::(?P<port>\d{1,5}))?/?$", url)
        if found is None or (found["port"] and not 0 < int(found["port"]) < 65536):
            raise FleetError(f"--broker {url!r}: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (with USER@ "
                             "before HOST and $EDGEFACE_MQTT_PASSWORD to log in)")
        tls = found["scheme"] == "mqtts"
        port = int(found["port"] or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT))
        return cls(found["host"].strip("[]"), port, found["user"], tls)

    def url(self) -> str:
        return f"mqtt{'s' if self.tls else ''}://{self.username + '@' if self.username else ''}{self.host}:{self.port}"

    def client(self, client_id: str) -> mqtt.Client:
        """A paho client (callback API 2, MQTT 3.1.1) with this broker's credentials and TLS settings."""
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        if self.username:
            client.username_pw_set(self.username, os.environ.get("EDGEFACE_MQTT_PASSWORD"))
        if self.tls:
            ca = os.environ.get("EDGEFACE_MQTT_CA") or None
            try:
                client.tls_set(ca_certs=ca)  # certificate and host name both required to match
            except (OSError, ValueError) as error:
                raise FleetError(f"$EDGEFACE_MQTT_CA {ca}: not a readable PEM CA certificate ({error})") from None
        return client


def gallery_topic(site: str) -> str:
    return f"edgeface/{site}/gallery"


def door_topic(site: str, door: str, leaf: str) -> str:
    return f"edgeface/{site}/{door}/{leaf}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# --- keys and bundles ---------------------------------------------------------------------------------------------

def keygen(out: Path, name: str = "fleet") -> tuple[Path, Path]:
    """Write a new Ed25519 key pair: `out/<name>.key` (PKCS#8 PEM, mode 0600) and `out/<name>.pub` (the fleet's
    signing key by default; a door's own key under the door's name); never overwrites."""
    check_name(name, "--name")
    out.mkdir(parents=True, exist_ok=True)
    private, public = out / f"{name}.key", out / f"{name}.pub"
    for path in (private, public):
        if path.exists():
            raise FleetError(f"{path}: already exists (a key is never overwritten; move it away first)")
    key = Ed25519PrivateKey.generate()
    descriptor = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def _read_key(path: Path, load: Callable[[bytes], Any], kind: type, what: str) -> Any:
    try:
        key = load(path.read_bytes())
    except OSError as error:
        raise FleetError(f"{path}: cannot read the {what} ({error.strerror})") from None
    except (ValueError, TypeError):
        raise FleetError(f"{path}: not a PEM {what}") from None
    if not isinstance(key, kind):
        raise FleetError(f"{path}: not an Ed25519 {what}")
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """A signing key: the fleet's (`fleet.key`) or a door's own."""
    return _read_key(path, lambda data: serialization.load_pem_private_key(data, None), Ed25519PrivateKey,
                     "private key")


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A public key: the fleet's (`fleet.pub`, which doors trust) or a door's own."""
    return _read_key(path, serialization.load_pem_public_key, Ed25519PublicKey, "public key")


def key_id(key: Ed25519PublicKey) -> str:
    """The first 16 hex digits of the sha256 of the raw public key (names the key in envelopes and messages)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def canonical(value: object) -> bytes:
    """The canonical JSON form that is signed: sorted keys, no spaces, ASCII."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def sign_report(report: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """`report` plus "format" (REPORT_FORMAT: no bundle's signed text can pass for a report), "key" (its key id) and
    "signature": Ed25519 over the canonical JSON of everything else."""
    signed = {**report, "format": REPORT_FORMAT, "key": key_id(key.public_key())}
    return {**signed, "signature": base64.b64encode(key.sign(canonical(signed))).decode()}


def check_report(report: object, site: str, door: str, key: Ed25519PublicKey) -> str | None:
    """None if `report` (a door's retained gallery report, parsed by `strict_json`) was signed by `key` for this site
    and door; otherwise why not, in a few words."""
    if not isinstance(report, dict) or "signature" not in report:
        return "unsigned"
    signed = {name: value for name, value in report.items() if name != "signature"}
    if signed.get("key") != key_id(key):
        return f"bad signature: signed by key {str(signed.get('key'))[:16]!r}, not {door}'s key {key_id(key)}"
    try:
        key.verify(base64.b64decode(str(report["signature"]), validate=True), canonical(signed))
    except (InvalidSignature, binascii.Error, ValueError):
        return f"bad signature: not signed by {door}'s key {key_id(key)}, or altered after signing"
    if (signed.get("format"), signed.get("site"), signed.get("door")) != (REPORT_FORMAT, site, door):
        return (f"signed by {door}'s key, but as {signed.get('format')!r} for door {signed.get('door')!r} of site "
                f"{signed.get('site')!r}")
    return None


def strict_json(payload: bytes) -> Any:
    """JSON as signed texts are read: a repeated key or a NaN/Infinity is a ValueError, not a value to guess."""
    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({name for name, _ in pairs}) < len(pairs):
            raise ValueError("a key appears twice")
        return dict(pairs)

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(payload, object_pairs_hook=unique, parse_constant=constant)


def make_bundle(people: list[Person], model_sha256: str, dim: int, site: str, version: int) -> dict[str, Any]:
    """The bundle of a whole gallery: every person's float32 embeddings (base64 each) and access rules."""
    return {
        "format": BUNDLE_FORMAT, "site": site, "version": version, "issued": _now(),
        "embedding_model_sha256": model_sha256, "embedding_dim": dim,
        "people": [{"name": p.name,
                    "embeddings": [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in p.embeddings],
                    "valid_from": p.rules.valid_from.isoformat() if p.rules.valid_from else None,
                    "valid_until": p.rules.valid_until.isoformat() if p.rules.valid_until else None,
                    "schedule": [window.text() for window in p.rules.schedule]}
                   for p in people],
    }


def sign_bundle(bundle: dict[str, Any], key: Ed25519PrivateKey) -> bytes:
    """The MQTT payload: {"format", "key", "signature", "bundle"}, `bundle` the signed canonical text itself."""
    text = canonical(bundle)
    return canonical({"format": BUNDLE_FORMAT, "key": key_id(key.public_key()),
                      "signature": base64.b64encode(key.sign(text)).decode(), "bundle": text.decode()})


def open_bundle(payload: bytes, trusted: Ed25519PublicKey) -> tuple[dict[str, Any], str]:
    """(bundle, sha256 of its signed text) if `payload` is signed by `trusted`; a BundleError otherwise.
    Nothing inside the signed text is parsed before the signature verifies."""
    try:
        envelope = json.loads(payload)
        text, signature = envelope["bundle"].encode(), base64.b64decode(envelope["signature"], validate=True)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise BundleError("not a signed edgeface bundle (malformed envelope)") from None
    try:
        trusted.verify(signature, text)
    except InvalidSignature:
        signer = envelope.get("key") if isinstance(envelope.get("key"), str) else "?"
        raise BundleError(f"bad signature: not signed by the trusted key {key_id(trusted)} "
                          f"(the envelope names key {signer[:16]!r}), or altered after signing") from None
    try:
        bundle = json.loads(text)
    except ValueError:
        raise BundleError("signed, but the bundle is not JSON") from None
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"signed, but not a {BUNDLE_FORMAT} bundle")
    return bundle, hashlib.sha256(text).hexdigest()


def site_version(bundle: dict[str, Any], site: str) -> int:
    """The version of a verified bundle meant for `site`; a BundleError when it is not an integer or the bundle is
    for another site (what a door checks before anything that needs its gallery or model)."""
    version = bundle.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BundleError(f"version {version!r} is not an integer")
    if bundle.get("site") != site:
        raise BundleError(f"bundle for site {bundle.get('site')!r}, not {site!r}")
    return version


def bundle_people(bundle: dict[str, Any], dim: int) -> list[Person]:
    """The people of a verified bundle, each field checked; a BundleError names the first bad one."""
    people = []
    try:
        for entry in bundle["people"]:
            rows = [np.frombuffer(base64.b64decode(text, validate=True), dtype="<f4") for text in entry["embeddings"]]
            if not rows or any(len(row) != dim for row in rows):
                raise BundleError(f"{entry['name']!r}: embeddings must be one or more {dim}-d float32 vectors")
            rules = AccessRules(
                parse_day(entry["valid_from"], "valid_from") if entry["valid_from"] is not None else None,
                parse_day(entry["valid_until"], "valid_until") if entry["valid_until"] is not None else None,
                parse_schedule(", ".join(entry["schedule"])))
            people.append(Person(entry["name"], np.stack(rows).astype(np.float32), rules))
    except (KeyError, TypeError, ValueError, AttributeError, binascii.Error, GalleryError) as error:
        raise BundleError(f"malformed bundle ({type(error).__name__}: {error})") from None
    return people


def next_version(key_path: Path) -> int:
    """A version newer than any published with this key: the clock in ms, or one more than the last one
    (kept in `<key>.version` beside the key) if the clock went back."""
    counter = key_path.with_name(key_path.name + ".version")
    try:
        last = int(counter.read_text().strip() or 0)
    except FileNotFoundError:
        last = 0
    except ValueError:
        raise FleetError(f"{counter}: not a version number (it keeps the last version published)") from None
    version = max(time.time_ns() // 1_000_000, last + 1)
    scratch = counter.with_name(counter.name + ".tmp")
    scratch.write_text(f"{version}\n")
    scratch.replace(counter)
    return version


def connect_failure(broker: Broker, error: BaseException | None) -> str:
    """Why `broker` could not be reached, in one line: a TLS handshake failure names the certificate, not the
    network."""
    if isinstance(error, ssl.SSLError):  # an OSError too
        return (f"{broker.url()}: TLS handshake failed ({error.reason or error}); is $EDGEFACE_MQTT_CA the CA that "
                "signed the broker's certificate?")
    return f"{broker.url()}: cannot reach the broker ({error or 'connection failed'})"


# --- one-shot commands ----------------------------------------------------------------------------------------------

def _connect(broker: Broker, client: mqtt.Client, timeout: float) -> None:
    """Connect and start the network thread; a FleetError if the broker cannot be reached or refuses us."""
    answered, outcome = threading.Event(), []

    def on_connect(_client: mqtt.Client, _userdata: object, _flags: object, reason: Any, _props: object) -> None:
        outcome.append(reason)
        answered.set()

    client.on_connect = on_connect
    try:
        client.connect(broker.host, broker.port, keepalive=30)
    except (OSError, ValueError) as error:
        raise FleetError(connect_failure(broker, error)) from None
    client.loop_start()
    if not answered.wait(timeout) or outcome[0].is_failure:
        client.loop_stop()
        client.disconnect()
        why = outcome[0] if outcome else f"no answer in {timeout:g} s"
        raise FleetError(f"{broker.url()}: the broker refused the connection ({why})")


def publish(gallery: Path, key_path: Path, broker: Broker, site: str = DEFAULT_SITE, allow_empty: bool = False,
            timeout: float = 30.0) -> tuple[int, int, int]:
    """Sign the whole gallery and publish it, retained, to every door of `site`; (version, people, bytes)."""
    check_name(site, "site")
    key = load_private_key(key_path)
    with Gallery.open_existing(gallery) as source:
        people, model_sha256, dim = source.export(), source.model_sha256, source.dim
    if not people and not allow_empty:
        raise FleetError(f"{gallery}: holds nobody; publishing it would remove everyone from every door "
                         "(pass --allow-empty to do that)")
    version = next_version(key_path)
    payload = sign_bundle(make_bundle(people, model_sha256, dim, site, version), key)
    client = broker.client(f"edgeface-publish-{os.getpid()}")
    _connect(broker, client, timeout)
    try:
        info = client.publish(gallery_topic(site), payload, qos=1, retain=True)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise FleetError(f"{broker.url()}: the broker did not acknowledge the bundle within {timeout:g} s")
    finally:
        client.disconnect()
        client.loop_stop()
    return version, len(people), len(payload)


def published(payload: bytes, site: str, trusted: Ed25519PublicKey | None) -> dict[str, Any]:
    """What a retained gallery payload claims: {"version", "verified", "sha256"} (verified: signed by `trusted`, for
    `site`, with an integer version; sha256: of its signed text), or {"refused": why} when it is not; without
    `trusted`, the version it claims, unverified. (Each door also checks the embedding model and that the version is
    newer than its own.)"""
    if trusted is None:
        try:
            return {"version": json.loads(json.loads(payload)["bundle"])["version"], "verified": False}
        except (ValueError, KeyError, TypeError):
            return {"refused": "not a signed edgeface bundle (malformed envelope)"}
    try:
        bundle, sha256 = open_bundle(payload, trusted)
        return {"version": site_version(bundle, site), "verified": True, "sha256": sha256}
    except BundleError as error:
        return {"refused": str(error)}


def status(broker: Broker, site: str = DEFAULT_SITE, wait: float = 1.5, trusted: Ed25519PublicKey | None = None,
           door_keys: Path | None = None) -> dict[str, dict[str, Any]]:
    """Every door's retained availability, gallery report and state, read for `wait` seconds; the key '' holds
    what the published bundle claims (`published`, checked against `trusted` when given).

    With `door_keys` (a folder holding one `<door>.pub` per door, and nothing else), every door there is listed,
    and each door's entry also says whether its report is the door's own ("report": "verified" or why not,
    `check_report`) and, with `trusted` too, whether the door acknowledges the published bundle ("acknowledged": a
    verified report holding exactly that bundle). Topics whose door part is not a door name, and payloads that are
    not a JSON object, are counted under '' as "malformed", never taken as a door."""
    check_name(site, "site")
    if door_keys is not None and not door_keys.is_dir():
        raise FleetError(f"{door_keys}: not a folder (--doors takes the folder of the doors' <door>.pub keys)")
    doors: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()

    def on_message(_client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        parts = message.topic.split("/")
        with lock:
            if len(parts) == 3:
                doors.setdefault("", {}).update(published(message.payload, site, trusted))
            elif not _NAME.match(parts[2]):
                doors.setdefault("", {}).setdefault("malformed", []).append(message.topic[:200])
            elif parts[3] == "availability":
                doors.setdefault(parts[2], {})["availability"] = message.payload.decode(errors="replace")[:32]
            else:
                try:
                    value = strict_json(message.payload)
                except ValueError:
                    value = None
                if isinstance(value, dict):
                    doors.setdefault(parts[2], {})[parts[3]] = value
                else:
                    doors.setdefault(parts[2], {})["malformed"] = message.topic

    client = broker.client(f"edgeface-status-{os.getpid()}")
    _connect(broker, client, wait + 5)
    client.on_message = on_message
    try:
        client.subscribe([(gallery_topic(site), 1)] + [(door_topic(site, "+", leaf), 1)
                                                       for leaf in ("availability", "gallery", "state")])
        time.sleep(wait)
    finally:
        client.disconnect()
        client.loop_stop()
    with lock:
        doors = dict(doors)
    if door_keys is not None:
        bundle = doors.get("", {})
        keys = {path.stem: path for path in sorted(door_keys.glob("*.pub")) if _NAME.match(path.stem)}
        for door in keys:  # a door with a key that never reported is listed too
            doors.setdefault(door, {})
        for door, seen in doors.items():
            if door:
                seen.update(_report_check(seen.get("gallery"), site, door, keys.get(door), door_keys, bundle))
    return doors


def _report_check(report: dict[str, Any] | None, site: str, door: str, key_file: Path | None, door_keys: Path,
                  bundle: dict[str, Any]) -> dict[str, Any]:
    """`status`'s "report" and "acknowledged" for one door (see there); "expected": whether the door has a key."""
    if key_file is None:
        return {"report": f"no key {door_keys / (door + '.pub')} for this door", "acknowledged": False,
                "expected": False}
    try:
        key = load_public_key(key_file)
    except FleetError as error:
        return {"report": f"bad key: {error}", "acknowledged": False, "expected": True}
    why = "no report" if report is None else check_report(report, site, door, key)
    held = report is not None and bundle.get("verified") is True and (
        report.get("version"), report.get("sha256")) == (bundle.get("version"), bundle.get("sha256"))
    return {"report": why or "verified", "acknowledged": why is None and held, "expected": True}


# --- the door's side ------------------------------------------------------------------------------------------------

class EventQueue:
    """Audit records waiting for the broker, in an SQLite file: in order, at most `limit` (the oldest go first)."""

    def __init__(self, path: Path, limit: int = QUEUE_LIMIT) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, record TEXT)")

    def put(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT INTO events (record) VALUES (?)", (json.dumps(record),))
            self._db.execute("DELETE FROM events WHERE seq <= (SELECT MAX(seq) FROM events) - ?", (self.limit,))
            self._db.execute("COMMIT")

    def oldest(self, count: int) -> list[tuple[int, str]]:
        with self._lock:
            return self._db.execute("SELECT seq, record FROM events ORDER BY seq LIMIT ?", (count,)).fetchall()

    def delete_through(self, seq: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM events WHERE seq <= ?", (seq,))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass(frozen=True)
class LinkConfig:
    """`edgeface doorlock --fleet URL --site NAME --door NAME --trust PUBKEY [--door-key KEY]`."""

    broker: Broker
    door: str
    trust: Path
    site: str = DEFAULT_SITE
    door_key: Path | None = None
    """The door's own signing key (`edgeface fleet keygen --name DOOR`): its gallery reports are signed with it."""

    def __post_init__(self) -> None:
        check_name(self.site, "--site")
        check_name(self.door, "--door")


def discovery(site: str, door: str) -> dict[str, dict[str, Any]]:
    """Home Assistant discovery configs (topic -> config) making the door one device: lock, decision event,
    last person and gallery version."""
    node = f"edgeface_{site}_{door}"
    common = {
        "availability_topic": door_topic(site, door, "availability"),
        "device": {"identifiers": [node], "name": f"{door} door", "manufacturer": "edgeface",
                   "model": "face recognition door lock"},
    }
    state = door_topic(site, door, "state")
    entities = {
        ("lock", "lock"): {"name": "Lock", "state_topic": state, "value_template": "{{ value_json.lock }}",
                           "command_topic": door_topic(site, door, "lock/set"), "retain": False},
        ("event", "decision"): {"name": "Decision", "state_topic": door_topic(site, door, "event"),
                                "event_types": list(EVENT_TYPES)},
        ("sensor", "last_person"): {"name": "Last person", "state_topic": state,
                                    "value_template": "{{ value_json.last_person }}"},
        ("sensor", "gallery_version"): {"name": "Gallery version", "state_topic": door_topic(site, door, "gallery"),
                                        "value_template": "{{ value_json.version }}"},
    }
    return {f"homeassistant/{component}/{node}/{name}/config": {**config, **common, "unique_id": f"{node}_{name}"}
            for (component, name), config in entities.items()}


class DoorLink:
    """A door's side of the fleet: applies signed bundles to its gallery, sends its events, answers Home Assistant.

    Everything that touches MQTT or the gallery runs on paho's network thread (which also reconnects); events go
    through an on-disk queue and a sender thread. `publish_event` and `set_lock_state` may be called from any thread.
    """

    def __init__(self, config: LinkConfig, gallery: Path, audit: Callable[[dict[str, Any]], None],
                 queue_limit: int = QUEUE_LIMIT) -> None:
        self.config = config
        self.gallery_path = gallery
        self.trusted = load_public_key(config.trust)
        self.signer = load_private_key(config.door_key) if config.door_key else None
        self.audit = audit
        with Gallery.open_existing(gallery) as local:
            self.model_sha256, self.dim = local.model_sha256, local.dim
            applied = local.applied_bundle()
        self.version, self.sha256 = applied if applied else (None, None)
        self._report: dict[str, Any] = self._reported("current")
        self._gallery: Gallery | None = None  # opened on the network thread
        self._state: dict[str, Any] = {"lock": "LOCKED", "last_person": None, "last_event": None}
        self._queue = EventQueue(gallery.with_name(gallery.name + ".events"), queue_limit)
        self._connected, self._wake, self._stopping = threading.Event(), threading.Event(), threading.Event()
        site, door = config.site, config.door
        self._topics = {leaf: door_topic(site, door, leaf)
                        for leaf in ("availability", "gallery", "event", "state", "lock/set")}
        self._client = config.broker.client(f"edgeface-{site}-{door}")
        self._client.will_set(self._topics["availability"], "offline", qos=1, retain=True)
        self._client.reconnect_delay_set(min_delay=1, max_delay=5)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_message = self._on_message
        self._outage_said = False  # the current outage has had its line on stderr
        self._sender = threading.Thread(target=self._send_events, name=f"edgeface-events-{door}", daemon=True)

    # lifecycle

    def start(self) -> None:
        """Connect in the background (and keep reconnecting); the door decides meanwhile with its last gallery."""
        self._client.connect_async(self.config.broker.host, self.config.broker.port, keepalive=30)
        self._client.loop_start()
        self._sender.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Say offline (within `timeout`) and disconnect; events not yet delivered stay queued for the next start."""
        if self._connected.is_set():
            try:
                self._client.publish(self._topics["availability"], "offline", qos=1,
                                     retain=True).wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                pass  # the broker went away meanwhile: the last will says offline instead
        self._stopping.set()
        self._wake.set()
        self._sender.join(timeout)
        self._client.disconnect()
        self._client.loop_stop()
        self._queue.close()
        self._gallery = None  # it belongs to the network thread, now ended: closed by its finalizer

    # what the door lock calls

    def publish_event(self, record: dict[str, Any]) -> None:
        """Queue one audit record (the door name and an event_type added) for `.../event`; never raises on a
        broker problem. An unlock also updates the retained state's last person."""
        decision = str(record.get("decision"))
        event = {**record, "door": self.config.door, "event_type": _EVENT_TYPE.get(decision, decision)}
        try:
            self._queue.put(event)
        except sqlite3.Error as error:  # the audit file has the record; the door goes on deciding
            print(f"edgeface: fleet: event not queued ({error})", file=sys.stderr, flush=True)
        self._state["last_event"] = event
        if decision == "unlock":
            self._state["last_person"] = record.get("identity")
        self._publish_state()
        self._wake.set()

    def set_lock_state(self, locked: bool) -> None:
        """The relay's state for Home Assistant's lock entity (LOCKED / UNLOCKED, retained)."""
        self._state["lock"] = "LOCKED" if locked else "UNLOCKED"
        self._publish_state()

    def pending_events(self) -> int:
        """Events queued on disk, not yet acknowledged by the broker."""
        return len(self._queue)

    # MQTT callbacks (network thread)

    def _publish_state(self) -> None:
        if self._connected.is_set():
            self._client.publish(self._topics["state"], json.dumps(self._state), qos=1, retain=True)

    def _publish_discovery(self) -> None:
        for topic, config in discovery(self.config.site, self.config.door).items():
            self._client.publish(topic, json.dumps(config), qos=1, retain=True)

    def _on_connect(self, client: mqtt.Client, _userdata: object, _flags: object, reason: Any, _props: object) -> None:
        if reason.is_failure:
            self._say_outage(f"{self.config.broker.url()}: the broker refused the connection ({reason})")
            return  # paho retries; the door keeps deciding with its gallery
        self._outage_said = False
        client.subscribe([(gallery_topic(self.config.site), 1), ("homeassistant/status", 1),
                          (self._topics["lock/set"], 1)])
        client.publish(self._topics["availability"], "online", qos=1, retain=True)
        self._publish_discovery()
        client.publish(self._topics["gallery"], json.dumps(self._report), qos=1, retain=True)
        self._connected.set()
        self._publish_state()
        self._wake.set()

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: object) -> None:
        # paho calls this while it handles the failed connection's OSError: sys.exc_info() holds it
        self._say_outage(connect_failure(self.config.broker, sys.exc_info()[1]))

    def _say_outage(self, why: str) -> None:
        """One stderr line per outage (paho retries every few seconds), not one per retry."""
        if not self._outage_said:
            self._outage_said = True
            print(f"edgeface: fleet: door {self.config.door}: {why}; retrying, the door decides with its gallery "
                  "meanwhile", file=sys.stderr, flush=True)

    def _on_disconnect(self, *_args: object) -> None:
        self._connected.clear()

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        if message.topic == gallery_topic(self.config.site):
            if message.payload:  # an empty retained message only clears the topic: keep the gallery
                self._apply(message.payload)
        elif message.topic == "homeassistant/status":
            if message.payload == b"online":
                self._publish_discovery()
        elif message.topic == self._topics["lock/set"]:
            self._log({"decision": "remote_unlock_refused", "command": message.payload[:32].decode(errors="replace"),
                       "error": "remote unlock is not supported: the door opens only for a recognised face"})

    # bundles

    def _log(self, record: dict[str, Any]) -> None:
        """An audit record from the network thread: a failure to write it must not end that thread."""
        try:
            self.audit(record)
        except Exception as error:
            print(f"edgeface: fleet: audit record not written ({error}): {json.dumps(record)}", file=sys.stderr,
                  flush=True)

    def _reported(self, status: str, offered: int | None = None, counts: dict[str, int] | None = None,
                  error: str | None = None) -> dict[str, Any]:
        """The retained report: what the door holds and what became of the bundle `offered`; signed if the door has
        a key."""
        counts = counts or {}
        report = {"version": self.version, "sha256": self.sha256, "offered": offered,
                  **{k: counts.get(k, 0) for k in ("added", "removed", "updated", "unchanged")},
                  "status": status, "error": error, "time": _now(), "site": self.config.site, "door": self.config.door}
        return sign_report(report, self.signer) if self.signer else report

    def _apply(self, payload: bytes) -> None:
        """Verify and apply one bundle, report it retained, audit an apply or a refusal. Fails closed: on any
        doubt the gallery stays as it was."""
        offered = None
        try:
            bundle, sha256 = open_bundle(payload, self.trusted)
            offered = bundle.get("version")  # reported as offered even when it is refused below
            site_version(bundle, self.config.site)
            if bundle.get("embedding_model_sha256") != self.model_sha256 or bundle.get("embedding_dim") != self.dim:
                raise BundleError(f"bundle embeddings come from model {str(bundle.get('embedding_model_sha256'))[:12]}"
                                  f", this door runs {self.model_sha256[:12]}: re-enroll with this door's model")
            if self._gallery is None:
                self._gallery = Gallery(self.gallery_path, self.model_sha256, self.dim)
            applied = self._gallery.applied_bundle()
            if applied == (offered, sha256):  # the retained bundle again, after a reconnect
                self._report = self._reported("current", offered)
            else:
                started = time.perf_counter()
                counts = vars(self._gallery.replace_all(bundle_people(bundle, self.dim), offered, sha256))
                self.version, self.sha256 = offered, sha256
                self._report = self._reported("applied", offered, counts)
                self._log({"decision": "bundle_applied", "version": offered, **counts,
                           "seconds": round(time.perf_counter() - started, 3)})
        except Exception as error:  # fail closed: whatever went wrong, the gallery is the one applied before
            why = str(error) if isinstance(error, EdgefaceError) else f"{type(error).__name__}: {error}"
            self._report = self._reported("refused", offered if isinstance(offered, int) else None, error=why)
            self._log({"decision": "bundle_refused", "version": self._report["offered"], "held": self.version,
                       "error": why})
        self._client.publish(self._topics["gallery"], json.dumps(self._report), qos=1, retain=True)

    # events (sender thread)

    def _send_events(self) -> None:
        """Deliver queued events while connected, woken by each new one (or every second)."""
        while not self._stopping.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            while self._connected.is_set() and self._send_batch():
                pass

    def _send_batch(self, batch: int = 100, timeout: float = 10.0) -> bool:
        """Publish up to `batch` of the oldest queued events and delete each one the broker acknowledged, in order;
        True if a whole batch went through (more may wait)."""
        sent = [(seq, self._client.publish(self._topics["event"], json.dumps({**json.loads(record), "seq": seq}),
                                           qos=1))
                for seq, record in self._queue.oldest(batch)]
        for seq, info in sent:
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):  # not connected, or paho's queue is full: retry later
                return False
            if not info.is_published():
                return False
            self._queue.delete_through(seq)
        return len(sent) == batch


class ReportingRelay:
    """Wraps the door's relay so Home Assistant's lock entity follows it (on = unlocked)."""

    def __init__(self, relay: Any, link: DoorLink) -> None:
        self.relay, self.link = relay, link

    def on(self) -> None:
        self.relay.on()
        self.link.set_lock_state(False)

    def off(self) -> None:
        self.relay.off()
        self.link.set_lock_state(True)

    def close(self) -> None:
        self.relay.close()
        self.link.set_lock_state(True)


def start_door_link(config: LinkConfig, gallery: Path, audit: AuditLog) -> DoorLink:
    """The door lock's hook: a started DoorLink whose applies and refusals are audit records, and which publishes
    every audit record (the door's decisions too) as an event."""
    link = DoorLink(config, gallery, audit.write)
    audit.listeners.append(link.publish_event)
    link.start()
    return link
