"""The fleet against a real mosquitto on a private loopback port: doors (in-process DoorLinks, and real
`edgeface doorlock` processes on LFW photos) apply signed bundles, refuse forged, tampered, foreign and replayed ones,
keep deciding and queue their events while the broker is gone, and appear in Home Assistant discovery.
Without mosquitto the tests skip, except under CI=true, where that is a failure."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from PIL import Image

from edgeface.access import AccessRules
from edgeface.analyzer import FaceAnalyzer
from edgeface.cli import main
from edgeface.doorlock import AuditLog
from edgeface.errors import FleetError
from edgeface.gallery import UNKNOWN, Gallery, Person
from edgeface.manifest import Manifest
from edgeface.profiles import PROFILE_DIR, load_profile

try:
    from edgeface import fleet
except FleetError as missing:  # the fleet extra is not installed
    if os.environ.get("CI") == "true":
        raise
    pytest.skip(str(missing), allow_module_level=True)

from edgeface.tools.fleet_bench import LocalBroker, Watcher, mosquitto_binary  # noqa: E402

SHA, DIM, SITE = "ab" * 32, 8, "home"
REPORT_KEYS = {"version", "sha256", "offered", "added", "removed", "updated", "unchanged", "status", "error", "time",
               "site", "door"}


def unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=(1, DIM))
    return (vector / np.linalg.norm(vector)).astype(np.float32)


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[LocalBroker]:
    binary = mosquitto_binary()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mosquitto is missing under CI (.ci/run installs it)")
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    (tmp_path / "broker").mkdir()
    local = LocalBroker(tmp_path / "broker", binary)
    local.start()
    yield local
    local.stop()


@pytest.fixture()
def keys(tmp_path: Path) -> Path:
    fleet.keygen(tmp_path / "keys")
    return tmp_path / "keys"


class Door:
    """An in-process door: its gallery, a DoorLink and the audit records it wrote."""

    def __init__(self, folder: Path, url: str, name: str, trust: Path, door_key: Path | None = None) -> None:
        self.name = name
        self.path = folder / f"{name}.db"
        self.gallery = Gallery(self.path, SHA, DIM)  # the door lock's own connection: it must see every apply
        self.audit: list[dict[str, Any]] = []
        log = AuditLog(folder / f"{name}.jsonl")  # as doorlock.run wires it: audit records also become events
        log.listeners.append(self.audit.append)
        self.link = fleet.start_door_link(fleet.LinkConfig(fleet.Broker.parse(url), name, trust, SITE, door_key),
                                          self.path, log)

    def topic(self, leaf: str) -> str:
        return fleet.door_topic(SITE, self.name, leaf)

    def close(self) -> None:
        self.link.stop()
        self.gallery.close()


@pytest.fixture()
def doors(tmp_path: Path, broker: LocalBroker, keys: Path) -> Iterator[list[Door]]:
    made = [Door(tmp_path, broker.url, f"door{i}", keys / "fleet.pub") for i in range(3)]
    yield made
    for door in made:
        door.close()


def office(path: Path, people: dict[str, int], rules: dict[str, AccessRules] | None = None) -> Path:
    """The enrolment workstation's gallery (same fake model as the doors)."""
    path.unlink(missing_ok=True)
    with Gallery(path, SHA, DIM) as gallery:
        for name, seed in people.items():
            gallery.add(name, unit(seed))
            if rules and name in rules:
                gallery.set_rules(name, rules[name])
    return path


def publish(broker: LocalBroker, keys: Path, gallery: Path, **options: Any) -> int:
    return fleet.publish(gallery, keys / "fleet.key", fleet.Broker.parse(broker.url), SITE, **options)[0]


def reports(watcher: Watcher, door: Door) -> list[dict[str, Any]]:
    return watcher.json(door.topic("gallery"))


def wait_report(watcher: Watcher, door: Door, **expected: Any) -> dict[str, Any]:
    """The first report of `door` with every field of `expected`."""
    return watcher.wait(lambda: next((r for r in reports(watcher, door)
                                      if all(r.get(k) == v for k, v in expected.items())), None))


def who(door: Door, seed: int) -> str:
    return door.gallery.identify(unit(seed), 0.9)[0][0]


def test_publish_reaches_every_door_and_removal_follows(tmp_path: Path, broker: LocalBroker, keys: Path,
                                                        doors: list[Door]) -> None:
    watcher = Watcher(broker.url, [fleet.door_topic(SITE, "+", "gallery"), fleet.door_topic(SITE, "+", "event")])
    source = office(tmp_path / "office.db", {"alice": 1, "bob": 2, "carol": 3})
    version = publish(broker, keys, source)
    for door in doors:
        report = wait_report(watcher, door, version=version)
        assert set(report) == REPORT_KEYS
        assert report | {"time": None, "sha256": None} == {
            "version": version, "sha256": None, "offered": version, "added": 3, "removed": 0, "updated": 0,
            "unchanged": 0, "status": "applied", "error": None, "time": None, "site": SITE, "door": door.name}
        assert len(report["sha256"]) == 64
        assert who(door, 2) == "bob"
    office(source, {"alice": 1, "carol": 3})
    removal = publish(broker, keys, source)
    assert removal > version
    for door in doors:
        assert wait_report(watcher, door, version=removal)["removed"] == 1
        assert who(door, 2) == UNKNOWN and who(door, 1) == "alice"  # the door lock's connection sees it at once
        assert door.gallery.access("bob", datetime.now()) == "not enrolled"
        assert [r["decision"] for r in door.audit] == ["bundle_applied", "bundle_applied"]
    event = watcher.wait(lambda: next((e for e in watcher.json(doors[0].topic("event"))
                                       if e["decision"] == "bundle_applied"), None))
    assert event["door"] == "door0" and event["event_type"] == "bundle_applied" and isinstance(event["seq"], int)
    watcher.close()


def test_forged_tampered_foreign_and_replayed_bundles_are_refused(tmp_path: Path, broker: LocalBroker, keys: Path,
                                                                  doors: list[Door]) -> None:
    door = doors[0]
    watcher = Watcher(broker.url, [door.topic("gallery"), fleet.gallery_topic(SITE)])
    source = office(tmp_path / "office.db", {"alice": 1, "bob": 2})
    first = publish(broker, keys, source)
    wait_report(watcher, door, version=first, status="applied")
    old_payload = next(p for t, p, _ in watcher.messages if t == fleet.gallery_topic(SITE))
    office(source, {"alice": 1})
    second = publish(broker, keys, source)
    wait_report(watcher, door, version=second, status="applied")

    fleet.keygen(tmp_path / "intruder")
    intruder = fleet.load_private_key(tmp_path / "intruder" / "fleet.key")
    everyone = [Person("mallory", unit(9)), Person("alice", unit(1))]
    forged = fleet.sign_bundle(fleet.make_bundle(everyone, SHA, DIM, SITE, second + 10), intruder)
    envelope = json.loads(fleet.sign_bundle(fleet.make_bundle(everyone, SHA, DIM, SITE, second + 20),
                                            fleet.load_private_key(keys / "fleet.key")))
    envelope["bundle"] = envelope["bundle"].replace('"mallory"', '"mallorz"')
    tampered = json.dumps(envelope).encode()
    key = fleet.load_private_key(keys / "fleet.key")
    foreign = fleet.sign_bundle(fleet.make_bundle(everyone, SHA, DIM, "office", second + 30), key)
    other_model = fleet.sign_bundle(fleet.make_bundle(everyone, "cd" * 32, DIM, SITE, second + 40), key)
    attacks = [(forged, "bad signature"), (tampered, "bad signature"), (foreign, "site 'office'"),
               (other_model, "from model cdcdcdcdcdcd"), (old_payload, "not newer than the applied"),
               (b"{not json", "malformed envelope")]
    publisher = Watcher(broker.url, [])
    for payload, reason in attacks:
        publisher.client.publish(fleet.gallery_topic(SITE), payload, qos=1, retain=True).wait_for_publish(10)
        report = watcher.wait(lambda: next((r for r in reports(watcher, door)
                                            if r["status"] == "refused" and reason in r["error"]), None))
        assert report["version"] == second  # the report says what the door still holds
        assert door.gallery.people() == [("alice", 1)] and door.gallery.applied_bundle()[0] == second
    refusals = [r for r in door.audit if r["decision"] == "bundle_refused"]
    assert len(refusals) == len(attacks) and all(r["held"] == second for r in refusals)
    assert [any(reason in r["error"] for r in refusals) for _, reason in attacks] == [True] * len(attacks)
    publisher.close()
    watcher.close()


def test_a_restarted_door_refuses_a_replay_and_ignores_the_same_bundle(tmp_path: Path, broker: LocalBroker,
                                                                     keys: Path) -> None:
    source = office(tmp_path / "office.db", {"alice": 1})
    door = Door(tmp_path, broker.url, "front", keys / "fleet.pub")
    watcher = Watcher(broker.url, [door.topic("gallery")])
    version = publish(broker, keys, source)
    wait_report(watcher, door, version=version, status="applied")
    door.close()
    again = Door(tmp_path, broker.url, "front", keys / "fleet.pub")  # the retained bundle arrives again
    wait_report(watcher, again, status="current", offered=version)
    assert again.audit == [] and again.gallery.people() == [("alice", 1)]
    again.close()
    watcher.close()


def test_empty_bundle_needs_allow_empty(tmp_path: Path, broker: LocalBroker, keys: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    empty = office(tmp_path / "empty.db", {})
    command = ["fleet", "publish", "--gallery", str(empty), "--key", str(keys / "fleet.key"),
               "--broker", broker.url]
    assert main(command) == 2
    assert "holds nobody" in capsys.readouterr().err
    assert main(command + ["--allow-empty"]) == 0
    assert "0 people" in capsys.readouterr().out


def test_broker_gone_the_door_queues_events_and_delivers_them_in_order(tmp_path: Path, broker: LocalBroker,
                                                                       keys: Path, doors: list[Door]) -> None:
    door = doors[0]
    watcher = Watcher(broker.url, [door.topic("gallery")])
    today = date.today()
    source = office(tmp_path / "office.db", {"alice": 1, "bob": 2},
                    {"bob": AccessRules(valid_until=today + timedelta(days=1))})
    version = publish(broker, keys, source)
    wait_report(watcher, door, version=version)
    watcher.close()
    broker.stop(signal.SIGKILL)
    for index in range(150):
        door.link.publish_event({"decision": "unknown", "index": index})
    assert who(door, 1) == "alice"  # still deciding with the last applied gallery
    assert door.gallery.access("bob", datetime.now() + timedelta(days=2)) == "expired"  # offline expiry
    assert door.link.pending_events() >= 150  # (and the bundle_applied event, if the broker died before it)
    broker.start()
    events = Watcher(broker.url, [door.topic("event")])
    received = events.wait(lambda: (lambda got: got if len({e["seq"] for e in got}) >= 150 else None)(
        [e for e in events.json(door.topic("event")) if e.get("decision") == "unknown"]), 30)
    unique = list({e["seq"]: e for e in received}.values())
    assert [e["index"] for e in unique] == list(range(150))  # none lost, in order (duplicates share a seq)
    assert all(e["door"] == "door0" and e["event_type"] == "unknown" for e in unique)
    events.wait(lambda: door.link.pending_events() == 0)
    events.close()


def test_event_queue_is_bounded(tmp_path: Path) -> None:
    queue = fleet.EventQueue(tmp_path / "q.events", limit=5)
    for index in range(8):
        queue.put({"index": index})
    assert [json.loads(r)["index"] for _, r in queue.oldest(10)] == [3, 4, 5, 6, 7] and len(queue) == 5
    queue.delete_through(queue.oldest(2)[-1][0])
    assert [json.loads(r)["index"] for _, r in queue.oldest(10)] == [5, 6, 7]
    queue.close()


def test_home_assistant_discovery_lock_state_and_status(tmp_path: Path, broker: LocalBroker, keys: Path,
                                                        doors: list[Door], capsys: pytest.CaptureFixture[str]) -> None:
    door = doors[1]
    node = f"edgeface_{SITE}_{door.name}"
    watcher = Watcher(broker.url, [f"homeassistant/+/{node}/+/config", door.topic("state")])
    expected = {f"homeassistant/{c}/{node}/{o}/config"
                for c, o in (("lock", "lock"), ("event", "decision"), ("sensor", "last_person"),
                             ("sensor", "gallery_version"))}
    watcher.wait(lambda: expected <= {t for t, _, _ in watcher.messages})
    configs = {t: json.loads(p) for t, p, _ in watcher.messages if t in expected}
    assert {c["device"]["identifiers"][0] for c in configs.values()} == {node}
    assert all(c["availability_topic"] == door.topic("availability") for c in configs.values())
    assert configs[f"homeassistant/lock/{node}/lock/config"]["retain"] is False
    assert configs[f"homeassistant/event/{node}/decision/config"]["event_types"] == list(fleet.EVENT_TYPES)
    count = len(watcher.messages)
    watcher.client.publish("homeassistant/status", "online", qos=1).wait_for_publish(10)
    watcher.wait(lambda: sum(t in expected for t, _, _ in watcher.messages[count:]) == len(expected))
    door.link.set_lock_state(False)
    door.link.publish_event({"decision": "unlock", "identity": "alice"})
    state = watcher.wait(lambda: next((s for s in watcher.json(door.topic("state"))
                                       if s["last_person"] == "alice"), None))
    assert state["lock"] == "UNLOCKED" and state["last_event"]["event_type"] == "recognised"
    watcher.client.publish(door.topic("lock/set"), "UNLOCK", qos=1).wait_for_publish(10)
    watcher.wait(lambda: any(r["decision"] == "remote_unlock_refused" for r in door.audit))
    assert main(["fleet", "status", "--broker", broker.url, "--wait", "1"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert sorted(lines) == ["door0", "door1", "door2"] and all(" online " in line for line in lines.values())
    assert "gallery none" in lines["door0"] and "remote_unlock_refused" in lines["door1"]
    watcher.close()


def test_status_checks_the_published_bundle_as_the_doors_do(tmp_path: Path, broker: LocalBroker, keys: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A forged retained bundle must not show as the site's version to whoever holds fleet.pub."""
    version = publish(broker, keys, office(tmp_path / "office.db", {"alice": 1}))
    status = ["fleet", "status", "--broker", broker.url, "--wait", "1"]
    assert main([*status, "--trust", str(keys / "fleet.pub")]) == 0
    assert f"published version {version} (signed by the trusted key)" in capsys.readouterr().out
    fleet.keygen(tmp_path / "intruder")
    forged = fleet.sign_bundle(fleet.make_bundle([Person("mallory", unit(9))], SHA, DIM, SITE, version + 1),
                               fleet.load_private_key(tmp_path / "intruder" / "fleet.key"))
    publisher = Watcher(broker.url, [])
    publisher.client.publish(fleet.gallery_topic(SITE), forged, qos=1, retain=True).wait_for_publish(10)
    publisher.close()
    assert main([*status, "--trust", str(keys / "fleet.pub")]) == 0
    out = capsys.readouterr().out
    assert "the published bundle does not verify, doors refuse it: bad signature" in out and "version" not in out
    assert main(status) == 0
    assert f"published version {version + 1} (signature not checked" in capsys.readouterr().out
    foreign = fleet.sign_bundle(fleet.make_bundle([Person("alice", unit(1))], SHA, DIM, "office", version + 2),
                                fleet.load_private_key(keys / "fleet.key"))  # signed, but for another site
    publisher = Watcher(broker.url, [])
    publisher.client.publish(fleet.gallery_topic(SITE), foreign, qos=1, retain=True).wait_for_publish(10)
    publisher.close()
    assert main([*status, "--trust", str(keys / "fleet.pub")]) == 0
    assert "does not verify, doors refuse it: bundle for site 'office', not 'home'" in capsys.readouterr().out


def test_status_tells_a_door_s_signed_report_from_a_forged_moved_or_replayed_one(
        tmp_path: Path, broker: LocalBroker, keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Revocation is done when every door says so: a report anyone on the broker could write must not count."""
    door_keys = tmp_path / "door-keys"
    for name in ("front", "back", "intruder"):
        fleet.keygen(door_keys, name)
    front = Door(tmp_path, broker.url, "front", keys / "fleet.pub", door_keys / "front.key")
    back = Door(tmp_path, broker.url, "back", keys / "fleet.pub")  # no key of its own: its reports are unsigned
    watcher = Watcher(broker.url, [front.topic("gallery"), back.topic("gallery")])
    try:
        first = publish(broker, keys, office(tmp_path / "office.db", {"alice": 1, "bob": 2}))
        genuine = wait_report(watcher, front, version=first, status="applied")
        wait_report(watcher, back, version=first, status="applied")
        assert fleet.check_report(genuine, SITE, "front", fleet.load_public_key(door_keys / "front.pub")) is None
        status = ["fleet", "status", "--broker", broker.url, "--wait", "1", "--trust", str(keys / "fleet.pub"),
                  "--doors", str(door_keys)]

        def seen() -> dict[str, dict[str, Any]]:
            assert main([*status, "--json"]) == 0
            doors = json.loads(capsys.readouterr().out)
            return {door: {k: doors[door][k] for k in ("report", "acknowledged")} for door in ("front", "back")}

        assert seen() == {"front": {"report": "verified", "acknowledged": True},
                          "back": {"report": "unsigned", "acknowledged": False}}
        assert main(status) == 0
        out = capsys.readouterr().out
        assert "report signed by the door" in out and "report NOT the door's: unsigned" in out
        assert f"1 of 3 doors with a key in {door_keys} acknowledge the published version {first}" in out

        second = publish(broker, keys, office(tmp_path / "office.db", {"alice": 1}))  # bob revoked
        wait_report(watcher, front, version=second, status="applied")
        wait_report(watcher, back, version=second, status="applied")
        assert seen()["front"] == {"report": "verified", "acknowledged": True}
        intruder = fleet.load_private_key(door_keys / "intruder.key")
        unsigned = {k: v for k, v in genuine.items() if k not in ("format", "key", "signature")}
        forgeries = {
            "replayed": (front, genuine),  # the door's own, from before the revocation
            "altered": (front, {**genuine, "version": second}),
            "another key": (front, fleet.sign_report(unsigned, intruder)),
            "moved": (back, genuine),  # front's genuine report on back's topic (back.pub is in the folder)
            "another site": (front, fleet.sign_report({**unsigned, "site": "office", "version": second},
                                                      fleet.load_private_key(door_keys / "front.key"))),
        }
        publisher = Watcher(broker.url, [])
        for how, (door, report) in forgeries.items():
            publisher.client.publish(door.topic("gallery"), json.dumps(report), qos=1, retain=True).wait_for_publish(10)
            checked = seen()[door.name]
            assert checked["acknowledged"] is False, how
            if how == "replayed":
                assert checked["report"] == "verified"  # genuine, but for the bundle before: not an acknowledgement
            elif how == "another site":  # front's own key, for its namesake at another site
                assert checked["report"].endswith("for door 'front' of site 'office'"), checked
            else:
                assert checked["report"].startswith("bad signature"), (how, checked)

        # an older genuine bundle retained over the revocation: doors refuse it, and status says it was replaced
        older = fleet.sign_bundle(fleet.make_bundle([Person("bob", unit(2))], SHA, DIM, SITE, first),
                                  fleet.load_private_key(keys / "fleet.key"))
        publisher.client.publish(fleet.gallery_topic(SITE), older, qos=1, retain=True).wait_for_publish(10)
        wait_report(watcher, front, version=second, status="refused")
        # noise no door wrote: a topic naming no door (too long), a payload that is not an object, a bad key file
        publisher.client.publish(fleet.door_topic(SITE, "x" * 300, "gallery"), b"{}", qos=1,
                                 retain=True).wait_for_publish(10)
        publisher.client.publish(back.topic("state"), b"[]", qos=1, retain=True).wait_for_publish(10)
        publisher.close()
        (door_keys / "side.pub").write_text("not a key")
        assert main(status) == 0
        out = capsys.readouterr().out
        assert f"published version {first} (signed by the trusted key)" in out
        assert "WARNING: door(s) front hold a newer version than the retained bundle" in out
        assert "ignored 1 message(s) on topics that name no door" in out
        assert "report NOT the door's: bad key:" in out and "0 of 4 doors with a key" in out
        assert main([*status, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["intruder"] == {"report": "no report", "acknowledged": False,
                                                               "expected": True}
        (door_keys / "back.pub").unlink()
        assert seen()["back"]["report"] == f"no key {door_keys / 'back.pub'} for this door"
    finally:
        watcher.close()
        front.close()
        back.close()


def test_a_door_key_that_is_not_a_private_key_is_one_line(tmp_path: Path, keys: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    office(tmp_path / "door.db", {"alice": 1})
    config = fleet.LinkConfig(fleet.Broker.parse("mqtt://127.0.0.1:9"), "front", keys / "fleet.pub", SITE,
                              keys / "fleet.pub")
    with pytest.raises(FleetError, match="fleet.pub: not a PEM private key"):
        fleet.DoorLink(config, tmp_path / "door.db", lambda record: None)
    assert main(["fleet", "keygen", "--out", str(keys), "--name", "front door"]) == 2
    err = capsys.readouterr().err
    assert "--name 'front door'" in err and err.count("\n") == 1
    assert main(["fleet", "keygen", "--out", str(keys)]) == 2  # never overwritten
    assert "fleet.key: already exists" in capsys.readouterr().err


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A fresh CA, and a certificate for 127.0.0.1 it signed: (CA, certificate, key) PEM files."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir()
    now = datetime.now(tz=datetime.now().astimezone().tzinfo)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"edgeface test CA {folder.name}")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
          .not_valid_after(now + timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    server = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
              .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             critical=False).sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_over_tls_a_door_applies_the_bundle_and_a_broker_of_another_ca_is_refused(
        tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """mqtts:// with $EDGEFACE_MQTT_CA: publish, a door's apply and status all cross TLS; a broker whose certificate
    another CA signed (a man in the middle) is refused in one line, before any bundle or event crosses."""
    binary = mosquitto_binary()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mosquitto is missing under CI (.ci/run installs it)")
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    ca, certificate, key = _certificates(tmp_path / "tls")
    (tmp_path / "broker").mkdir()
    broker = LocalBroker(tmp_path / "broker", binary, tls=(certificate, key))
    broker.start()
    try:
        assert broker.url.startswith("mqtts://")
        monkeypatch.setenv("EDGEFACE_MQTT_CA", str(ca))
        door = Door(tmp_path, broker.url, "tls", keys / "fleet.pub")
        watcher = Watcher(broker.url, [door.topic("gallery")])
        version = publish(broker, keys, office(tmp_path / "office.db", {"alice": 1}))
        wait_report(watcher, door, version=version, status="applied")
        assert door.gallery.people() == [("alice", 1)]
        status = ["fleet", "status", "--broker", broker.url, "--wait", "1", "--trust", str(keys / "fleet.pub")]
        assert main(status) == 0
        assert f"published version {version} (signed by the trusted key)" in capsys.readouterr().out
        watcher.close()
        door.close()
        monkeypatch.setenv("EDGEFACE_MQTT_CA", str(_certificates(tmp_path / "other")[0]))
        assert main(status) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "TLS handshake failed" in err[0] and "CERTIFICATE_VERIFY_FAILED" in err[0], err
        door = Door(tmp_path, broker.url, "tls", keys / "fleet.pub")  # a door behind the man in the middle
        time.sleep(4)  # paho retries every 1-2 s meanwhile
        assert door.gallery.people() == [("alice", 1)] and door.audit == []
        door.close()
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "door tls:" in err[0] and "CERTIFICATE_VERIFY_FAILED" in err[0], err
        monkeypatch.setenv("EDGEFACE_MQTT_CA", str(tmp_path / "absent.pem"))
        assert main(status) == 2
        assert "absent.pem: not a readable PEM CA certificate" in capsys.readouterr().err
    finally:
        broker.stop()


def test_a_stopped_door_says_offline(tmp_path: Path, broker: LocalBroker, keys: Path) -> None:
    door = Door(tmp_path, broker.url, "side", keys / "fleet.pub")
    watcher = Watcher(broker.url, [door.topic("availability")])
    watcher.wait(lambda: (door.topic("availability"), b"online", True) in watcher.messages
                 or (door.topic("availability"), b"online", False) in watcher.messages)
    door.close()
    watcher.wait(lambda: watcher.messages[-1][1] == b"offline")
    watcher.close()


def test_without_the_fleet_extra_one_line_names_it(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import sys
        sys.modules["paho"] = None  # as if paho-mqtt were not installed
        from edgeface.cli import main
        sys.exit(main(["fleet", "keygen", "--out", sys.argv[1]]))
    """)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "k")], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).parents[1])
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "pip install 'edgeface[fleet]'" in done.stderr and "Traceback" not in done.stderr


def test_bad_fleet_arguments_are_one_line(tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in ((["fleet", "status", "--broker", "http://x"], "expected mqtt://HOST[:PORT]"),
                          (["fleet", "status", "--broker", "mqtt://127.0.0.1:9", "--site", "a/b"], "site 'a/b'"),
                          (["fleet", "publish", "--gallery", str(tmp_path / "none.db"), "--key",
                            str(keys / "fleet.pub"), "--broker", "mqtt://127.0.0.1:9"], "not a PEM private key"),
                          (["fleet", "status", "--broker", "mqtt://127.0.0.1:9", "--doors", str(tmp_path / "no")],
                           "no: not a folder"),
                          (["doorlock", "--gallery", str(tmp_path / "g.db"), "--door-key", str(keys / "fleet.key")],
                           "--door-key signs this door's fleet reports: it needs --fleet"),
                          (["doorlock", "--gallery", str(tmp_path / "g.db"), "--fleet", "mqtt://127.0.0.1:9", "--door",
                            "front", "--trust", str(keys / "fleet.pub"), "--door-key", str(keys / "fleet.pub")],
                           "fleet.pub: not a PEM private key"),
                          (["doorlock", "--gallery", str(tmp_path / "g.db"), "--fleet", "mqtt://127.0.0.1:9"],
                           "--fleet needs --door NAME and --trust PUBKEY"),
                          (["doorlock", "--gallery", str(tmp_path / "g.db"), "--fleet", "mqtt://127.0.0.1:9",
                            "--door", "front door", "--trust", str(keys / "fleet.pub")], "--door 'front door'")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


# --- real door processes on LFW photos ---------------------------------------------------------------------------

PERSON = "Hugo_Chavez"
EDGEFACE = Path(sys.executable).with_name("edgeface")


@pytest.fixture(scope="module")
def enrolment(manifest: Manifest, data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A quick door profile (320 input, a track judged on its first frame and ended by one frame without it, no
    liveness: LFW photos are not webcam frames), the office gallery of PERSON (3 photos) and of one other person,
    and photos of both to show the doors."""
    root = tmp_path_factory.mktemp("fleet-doors")
    profile = root / "door.toml"
    profile.write_text((PROFILE_DIR / "rpi4.toml").read_text()
                       .replace("input_size = 640\nscore", "input_size = 320\nscore")
                       .replace("min_frames = 4", "min_frames = 1").replace("max_misses = 5", "max_misses = 0")
                       .replace("unlock_seconds = 3.0", "unlock_seconds = 0.01")
                       .replace("cooldown_seconds = 5.0", "cooldown_seconds = 0.0")
                       .replace("required = true", "required = false"))
    people = data / "lfw_fold1" / "images"
    photos = sorted((people / PERSON).glob("*.jpg"))
    other = next(d for d in sorted(people.iterdir()) if d.name != PERSON and len(list(d.glob("*.jpg"))) >= 3)
    analyzer = FaceAnalyzer(load_profile(profile))
    embeddings = {}
    for name, chosen in ((PERSON, photos[:3]), (other.name, sorted(other.glob("*.jpg"))[:1])):
        embeddings[name] = np.stack([max(analyzer.embed(p), key=lambda f: f.area).embedding for p in chosen])
    return {"profile": profile, "embeddings": embeddings, "model": analyzer.embedding_model_sha256,
            "dim": analyzer.embedder.dim, "person": photos[3:], "other": other.name,
            "other_photos": sorted(other.glob("*.jpg"))[1:]}


def office_of(path: Path, enrolment: dict[str, Any], names: list[str],
              rules: dict[str, AccessRules] | None = None) -> Path:
    path.unlink(missing_ok=True)
    with Gallery(path, enrolment["model"], enrolment["dim"]) as gallery:
        for name in names:
            gallery.add(name, enrolment["embeddings"][name])
            if rules and name in rules:
                gallery.set_rules(name, rules[name])
    return path


class DoorProcess:
    """`edgeface doorlock --dry-run --source DIR --follow --fleet ...` in its own process; `show` hands it a frame."""

    def __init__(self, root: Path, name: str, profile: Path, url: str, trust: Path,
                 door_key: Path | None = None) -> None:
        self.name, self.folder, self.log = name, root / name, root / f"{name}.jsonl"
        self.folder.mkdir()
        self.shown = 0
        self.stderr = (root / f"{name}.err").open("w")
        self.process = subprocess.Popen(
            [str(EDGEFACE), "doorlock", "--dry-run", "--profile", str(profile), "--gallery", str(root / f"{name}.db"),
             "--source", str(self.folder), "--follow", "--audit-log", str(self.log), "--fleet", url,
             "--door", name, "--trust", str(trust), *(["--door-key", str(door_key)] if door_key else [])],
            stdout=subprocess.DEVNULL, stderr=self.stderr)

    def visit(self, photos: list[Path]) -> None:
        """A person in front of the door: their photos as frames (a track is confirmed after 2), then a frame
        without a face, which ends the track."""
        for photo in photos:
            self.show(photo)
        self.show(None)

    def show(self, photo: Path | None) -> None:
        """A photo as the next frame, or (None) a frame with no face."""
        self.shown += 1
        target = self.folder / f"{self.shown:04d}.jpg"
        scratch = self.folder / f".{self.shown:04d}.tmp"
        if photo is None:
            Image.new("RGB", (250, 250), (128, 128, 128)).save(scratch, format="JPEG")
        else:
            shutil.copyfile(photo, scratch)
        scratch.replace(target)

    def decisions(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def wait_decision(self, decision: str, count: int = 1, timeout: float = 90.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [d for d in self.decisions() if d["decision"] == decision]
            if len(found) >= count:
                return found
            errors = self.log.parent / f"{self.name}.err"
            assert self.process.poll() is None, f"{self.name} exited: {errors.read_text()}"
            time.sleep(0.1)
        raise TimeoutError(f"{self.name}: no {count} x {decision} within {timeout} s: {self.decisions()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(30)
        self.stderr.close()
        return code


@pytest.fixture()
def door_processes(tmp_path: Path) -> Iterator[list[DoorProcess]]:
    started: list[DoorProcess] = []
    yield started
    for door in started:
        door.stop()


def test_real_doors_apply_the_bundle_and_lock_out_a_removed_person(
        tmp_path: Path, broker: LocalBroker, keys: Path, enrolment: dict[str, Any],
        door_processes: list[DoorProcess], capsys: pytest.CaptureFixture[str]) -> None:
    watcher = Watcher(broker.url, [fleet.door_topic(SITE, "+", "gallery"), fleet.door_topic(SITE, "+", "event"),
                                   fleet.door_topic(SITE, "+", "availability")])
    source = office_of(tmp_path / "office.db", enrolment, [PERSON, enrolment["other"]])
    version = publish(broker, keys, source)
    door_keys = tmp_path / "door-keys"
    for i in range(3):
        assert main(["fleet", "keygen", "--out", str(door_keys), "--name", f"door{i}"]) == 0
    doors = [DoorProcess(tmp_path, f"door{i}", enrolment["profile"], broker.url, keys / "fleet.pub",
                         door_keys / f"door{i}.key") for i in range(3)]
    door_processes.extend(doors)
    for door in doors:
        watcher.wait(lambda: any(r["version"] == version and r["added"] == 2
                                 for r in watcher.json(fleet.door_topic(SITE, door.name, "gallery"))), 90)
        door.visit(enrolment["person"][:2])
    for door in doors:
        [unlock] = door.wait_decision("unlock")
        assert unlock["identity"] == PERSON
        event = watcher.wait(lambda: next((e for e in watcher.json(fleet.door_topic(SITE, door.name, "event"))
                                           if e["decision"] == "unlock"), None))
        assert event["door"] == door.name and event["event_type"] == "recognised" and event["identity"] == PERSON
    removal = publish(broker, keys, office_of(source, enrolment, [enrolment["other"]]))
    for door in doors:
        report = watcher.wait(lambda: next((r for r in watcher.json(fleet.door_topic(SITE, door.name, "gallery"))
                                            if r["version"] == removal), None))
        assert (report["status"], report["removed"], report["unchanged"]) == ("applied", 1, 1)
        door.visit(enrolment["person"][2:4])  # only after the door's ack
    capsys.readouterr()
    assert main(["fleet", "status", "--broker", broker.url, "--wait", "1", "--trust", str(keys / "fleet.pub"),
                 "--doors", str(door_keys)]) == 0
    shown = capsys.readouterr().out
    assert f"3 of 3 doors with a key in {door_keys} acknowledge the published version {removal}" in shown
    for door in doors:
        door.wait_decision("unknown")
        assert len(door.wait_decision("unlock")) == 1  # nobody let in after the removal
        assert door.stop() == 0
    said = lambda: {(t, p) for t, p, _ in watcher.messages}  # noqa: E731
    watcher.wait(lambda: all((fleet.door_topic(SITE, d.name, "availability"), b"offline") in said() for d in doors))
    watcher.close()


def test_a_real_door_decides_offline_refuses_the_expired_and_delivers_later(
        tmp_path: Path, broker: LocalBroker, keys: Path, enrolment: dict[str, Any],
        door_processes: list[DoorProcess]) -> None:
    other = enrolment["other"]
    yesterday = date.today() - timedelta(days=1)
    source = office_of(tmp_path / "office.db", enrolment, [PERSON, other],
                       {other: AccessRules(valid_until=yesterday)})
    watcher = Watcher(broker.url, [fleet.door_topic(SITE, "front", "gallery")])
    version = publish(broker, keys, source)
    door = DoorProcess(tmp_path, "front", enrolment["profile"], broker.url, keys / "fleet.pub")
    door_processes.append(door)
    watcher.wait(lambda: any(r["version"] == version
                             for r in watcher.json(fleet.door_topic(SITE, "front", "gallery"))), 90)
    watcher.close()
    broker.stop(signal.SIGKILL)
    door.visit(enrolment["person"][:2])
    door.visit(enrolment["other_photos"][:2])
    [unlock] = door.wait_decision("unlock")
    [refused] = door.wait_decision("refused")
    assert unlock["identity"] == PERSON
    assert refused["identity"] == other and refused["reason"] == "expired"
    broker.start()
    events = Watcher(broker.url, [fleet.door_topic(SITE, "front", "event")])
    got = events.wait(lambda: (lambda e: e if {"unlock", "refused"} <= {x["decision"] for x in e} else None)(
        events.json(fleet.door_topic(SITE, "front", "event"))), 60)
    decisions = [e for e in {e["seq"]: e for e in got}.values() if e["decision"] in ("unlock", "refused")]
    assert [e["decision"] for e in decisions] == ["unlock", "refused"]  # in the order decided, none lost
    assert all(e["door"] == "front" for e in decisions)
    events.close()


def test_a_real_door_never_lets_in_a_face_from_a_forged_bundle(
        tmp_path: Path, broker: LocalBroker, keys: Path, enrolment: dict[str, Any],
        door_processes: list[DoorProcess]) -> None:
    other = enrolment["other"]
    version = publish(broker, keys, office_of(tmp_path / "office.db", enrolment, [other]))
    door = DoorProcess(tmp_path, "back", enrolment["profile"], broker.url, keys / "fleet.pub")
    door_processes.append(door)
    watcher = Watcher(broker.url, [fleet.door_topic(SITE, "back", "gallery")])
    watcher.wait(lambda: any(r["version"] == version for r in watcher.json(fleet.door_topic(SITE, "back", "gallery"))),
                 90)
    fleet.keygen(tmp_path / "intruder")
    intruder = fleet.load_private_key(tmp_path / "intruder" / "fleet.key")
    mallory = [Person("mallory", enrolment["embeddings"][PERSON]), Person(other, enrolment["embeddings"][other])]
    forged = fleet.sign_bundle(fleet.make_bundle(mallory, enrolment["model"], enrolment["dim"], SITE, version + 1),
                               intruder)
    watcher.client.publish(fleet.gallery_topic(SITE), forged, qos=1, retain=True).wait_for_publish(10)
    watcher.wait(lambda: any(r["status"] == "refused" and "bad signature" in r["error"]
                             for r in watcher.json(fleet.door_topic(SITE, "back", "gallery"))))
    door.visit(enrolment["person"][:2])  # PERSON's face, which the forged bundle calls mallory
    [unknown] = door.wait_decision("unknown")
    [refusal] = door.wait_decision("bundle_refused")  # the audit line
    assert unknown["identity"] in (None, UNKNOWN) and "bad signature" in refusal["error"]
    assert [d for d in door.decisions() if d["decision"] == "unlock"] == []
    watcher.close()
