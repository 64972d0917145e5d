"""Fleet numbers on a loopback mosquitto: publish -> the last of N doors acknowledging, and bundle size and apply
time by gallery size. `python -m edgeface.tools.fleet_bench [--doors 1 10 50] [--people 100 1000 10000]`.

Doors are in-process `DoorLink`s, each with its own SQLite gallery; embeddings are synthetic (192-d, 3 a person).
`LocalBroker` (a private mosquitto on a free 127.0.0.1 port) is shared with tests/test_fleet.py.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

DIM = 192
SHA = "0123456789abcdef" * 4


def mosquitto_binary() -> str | None:
    """Debian installs mosquitto in /usr/sbin, often not on a user's PATH."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


class LocalBroker:
    """A mosquitto of our own on 127.0.0.1 (config, persistence and log under `folder`), stoppable and restartable
    on the same port; with `tls` (certificate and key PEM files), it speaks only TLS."""

    def __init__(self, folder: Path, binary: str, tls: tuple[Path, Path] | None = None) -> None:
        self.folder, self.binary, self.tls = folder, binary, tls is not None
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.config = folder / "mosquitto.conf"
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                               f"persistence_location {folder}/\nautosave_interval 1\n"
                               f"log_dest file {folder}/mosquitto.log\n"
                               f"user {getpass.getuser()}\n"  # not mosquitto's own user: it could not read these files
                               + (f"certfile {tls[0]}\nkeyfile {tls[1]}\n" if tls else ""))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt{'s' if self.tls else ''}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.process = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}; see {self.folder}/mosquitto.log")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on 127.0.0.1:{self.port} within {timeout} s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: a clean stop (retained messages saved); SIGKILL: the broker simply gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)
        self.process = None


class Watcher:
    """A client subscribed to `topics` that keeps every message; `wait` polls a predicate with a deadline."""

    def __init__(self, url: str, topics: list[str]) -> None:
        from edgeface.fleet import Broker, _connect

        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        broker = Broker.parse(url)
        self.client = broker.client(f"watcher-{os.getpid()}-{id(self)}")
        self.client.on_message = lambda _c, _u, m: self._keep(m.topic, m.payload, m.retain)
        _connect(broker, self.client, 10)
        if topics:
            self.client.subscribe([(topic, 1) for topic in topics])

    def _keep(self, topic: str, payload: bytes, retain: bool) -> None:
        with self.lock:
            self.messages.append((topic, payload, retain))

    def json(self, topic: str) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(p) for t, p, _ in self.messages if t == topic and p]

    def wait(self, ready: Callable[[], Any], timeout: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = ready()
            if value:
                return value
            time.sleep(0.01)
        raise TimeoutError(f"not within {timeout} s")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def synthetic_gallery(path: Path, people: int, per_person: int = 3, seed: int = 0) -> Path:
    """A gallery of `people` random unit embeddings (bound to the bench's fake model)."""
    from edgeface.gallery import Gallery, Person

    vectors = np.random.default_rng(seed).normal(size=(people * per_person, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with Gallery(path, SHA, DIM) as gallery:
        gallery.replace_all([Person(f"person_{i:05d}", vectors[i * per_person:(i + 1) * per_person])
                             for i in range(people)], 0, "")
    return path


def _apply_row(folder: Path, people: int, key: Any) -> dict[str, float]:
    from edgeface.fleet import bundle_people, make_bundle, open_bundle, sign_bundle
    from edgeface.gallery import Gallery

    with Gallery(synthetic_gallery(folder / f"source-{people}.db", people), SHA, DIM) as source:
        exported = source.export()
    started = time.perf_counter()
    payload = sign_bundle(make_bundle(exported, SHA, DIM, "bench", 1), key)
    signed = time.perf_counter() - started
    with Gallery(folder / f"door-{people}.db", SHA, DIM) as door:
        started = time.perf_counter()
        bundle, digest = open_bundle(payload, key.public_key())
        counts = door.replace_all(bundle_people(bundle, DIM), 1, digest)
        applied = time.perf_counter() - started
    assert counts.added == people
    return {"people": people, "bytes": len(payload), "sign_s": signed, "apply_s": applied}


def _ack_row(folder: Path, broker: LocalBroker, doors: int, key_dir: Path) -> dict[str, float]:
    from edgeface.fleet import Broker, DoorLink, LinkConfig, door_topic, publish
    from edgeface.gallery import Gallery

    site = f"bench{doors}"
    links = []
    for index in range(doors):
        gallery = folder / f"{site}-door{index}.db"
        Gallery(gallery, SHA, DIM).close()
        link = DoorLink(LinkConfig(Broker.parse(broker.url), f"door{index}", key_dir / "fleet.pub", site), gallery,
                        lambda record: None)
        link.start()
        links.append(link)
    topics = [door_topic(site, f"door{i}", "gallery") for i in range(doors)]
    watcher = Watcher(broker.url, topics)
    try:
        watcher.wait(lambda: all(watcher.json(t) for t in topics))  # every door connected and reported
        source = synthetic_gallery(folder / f"{site}-source.db", 100)
        started = time.perf_counter()
        version, _, _ = publish(source, key_dir / "fleet.key", Broker.parse(broker.url), site)
        watcher.wait(lambda: all(any(r["version"] == version for r in watcher.json(t)) for t in topics), 60)
        elapsed = time.perf_counter() - started
    finally:
        watcher.close()
        for link in links:
            link.stop()
    return {"doors": doors, "ack_s": elapsed}


def main(argv: list[str] | None = None) -> int:
    from edgeface.fleet import keygen, load_private_key

    parser = argparse.ArgumentParser(prog="python -m edgeface.tools.fleet_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--doors", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--people", type=int, nargs="+", default=[100, 1000, 10000])
    args = parser.parse_args(argv)
    binary = mosquitto_binary()
    if binary is None:
        parser.error("mosquitto is not installed (apt-get install mosquitto)")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        keygen(folder / "keys")
        key = load_private_key(folder / "keys" / "fleet.key")
        print("| people | bundle | sign | verify + apply |\n| ---: | ---: | ---: | ---: |")
        for people in args.people:
            row = _apply_row(folder, people, key)
            print(f"| {people:,} | {row['bytes'] / 1e6:.2f} MB | {row['sign_s']:.2f} s | {row['apply_s']:.2f} s |",
                  flush=True)
        broker = LocalBroker(folder, binary)
        broker.start()
        try:
            print("\n| doors | publish -> last ack (100 people) |\n| ---: | ---: |")
            for doors in args.doors:
                row = _ack_row(folder, broker, doors, folder / "keys")
                print(f"| {doors} | {row['ack_s']:.2f} s |", flush=True)
        finally:
            broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
