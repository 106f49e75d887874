"""``python -m demo``: run the service on the embedded defaults and show a dock delivering real clips.

The service runs as its own process (``evidence serve``); the dock and cameras are the simulators,
speaking only the public protocol over HTTP, as real hardware would.
"""

from __future__ import annotations

import argparse
import secrets
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from firmware_simulators.camera import CameraIdentity, record_clip
from firmware_simulators.dock import Dock
from firmware_simulators.scene import render_clip
from ingest.settings import get_settings
from storage.embedded import stop_recorded_store, write_private

from . import lone_worker as demo_lone_worker
from .shutdown import ProcessRecord, StopRequests, die_with_parent, stop_all

HTTP_TIMEOUT = httpx.Timeout(60.0)
# How long each child may take to stop after SIGTERM before it is killed: the service finishes its
# requests (uvicorn waits up to 10 s) and stops the embedded store; a redaction worker's job is taken
# over by the next worker once its lease runs out, so it need not be waited for.
SERVICE_GRACE_S = 25.0
WORKER_GRACE_S = 5.0
STAFF = [
    ("S-1001", "Alex Morgan", "nurse", "Ward 7"),
    ("S-1002", "Sam Patel", "porter", "Emergency Department"),
]
CAMERAS = [("CAM-0001", "S-1001"), ("CAM-0002", "S-1002")]


def say(text: str) -> None:
    print(text, flush=True)


def admin_password(demo_dir: Path) -> str:
    configured = get_settings().admin_password
    if configured:
        return configured.get_secret_value()
    path = demo_dir / "admin-password.txt"
    if path.exists():
        return path.read_text().strip()
    password = secrets.token_urlsafe(18)
    write_private(path, password.encode())
    return password


def ensure_admin(password: str) -> None:
    from accounts.models import User
    from accounts.seals import record_user, seal_users
    from accounts.service import create_user, creation_record
    from incidents.grants import seal_grants
    from ingest.services import build_services

    services = build_services(get_settings())
    try:
        with services.db.session() as session:
            if session.query(User).filter_by(username="admin").first() is None:
                created = create_user(
                    session, "admin", password, "admin", key=services.key, full_name="Demo administrator"
                )
                record_user(session, services.ledger, created, "demo", creation_record(services.key, created))
            else:  # demo data from before user seals: its users are sealed as their custody record bears out
                seal_users(session, services.ledger)
        with services.db.session() as session:  # and its assignments and export jobs, the same way
            seal_grants(session, services.ledger)
    finally:
        services.close()


def wait_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited with {proc.returncode}; see its log above")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("the service did not start in time")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=int, default=get_settings().demo_clips)
    parser.add_argument("--once", action="store_true", help="stop after the demo instead of serving on")
    args = parser.parse_args()

    # Stop cleanly (children included) on SIGTERM or SIGHUP as on Ctrl-C, however many arrive.
    stop_requests = StopRequests(sys.stdout.fileno())
    stop_requests.install()
    settings = get_settings()
    demo_dir = Path(settings.data_dir) / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    record = ProcessRecord(demo_dir / "processes.json")
    record.stop_leftovers(say)
    url = f"http://{settings.http_host}:{settings.http_port}"
    password = admin_password(demo_dir)
    say("Preparing the database, the embedded object store and the service key ...")
    ensure_admin(password)

    lone_worker: demo_lone_worker.LoneWorkerDemo | None = None
    proc: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    http = httpx.Client(timeout=HTTP_TIMEOUT)
    try:
        lone_worker = demo_lone_worker.start_broker(demo_dir, say)  # before the service, which consumes it
        proc = subprocess.Popen(
            [sys.executable, "-m", "ingest.cli", "serve"], start_new_session=True, preexec_fn=die_with_parent
        )
        if lone_worker is not None:
            record.add("broker", lone_worker.broker.pid, str(lone_worker.broker.files.config))
        record.add("service", proc.pid, "ingest.cli")
        wait_up(url, proc)
        token = http.post(f"{url}/api/v1/auth/token", data={"username": "admin", "password": password}).json()
        admin = {"Authorization": f"Bearer {token['access_token']}"}
        for staff_id, name, group, site in STAFF:
            http.post(
                f"{url}/api/v1/staff",
                json={"id": staff_id, "name": name, "group": group, "site": site},
                headers=admin,
            ).raise_for_status()
        dock = http.post(
            f"{url}/api/v1/devices/docks",
            json={"id": "DOCK-WARD7", "name": "Ward 7 office", "site": "Ward 7"},
            headers=admin,
        )
        dock.raise_for_status()
        dock_token = dock.json()["token"]
        cameras: dict[str, CameraIdentity] = {}
        for serial, staff_id in CAMERAS:
            key_path = demo_dir / f"{serial}.pem"
            ident = CameraIdentity.load(key_path) if key_path.exists() else CameraIdentity.generate(serial)
            if not key_path.exists():
                ident.save(key_path)
            http.post(
                f"{url}/api/v1/devices/cameras",
                json={"id": serial, "public_key": ident.public_key_b64(), "staff_id": staff_id},
                headers=admin,
            ).raise_for_status()
            cameras[serial] = ident
        say(f"Enrolled dock DOCK-WARD7 and cameras {', '.join(cameras)}.")
        # A redaction worker, as a separate process like on a real deployment (it finds the same store).
        worker = subprocess.Popen(
            [sys.executable, "-m", "ingest.cli", "worker"], start_new_session=True, preexec_fn=die_with_parent
        )
        record.add("redaction worker", worker.pid, "ingest.cli")

        clips_dir = demo_dir / "clips"
        clips_dir.mkdir(exist_ok=True)
        results = []
        with Dock(url, dock_token) as station:
            for i in range(args.clips):
                serial, staff_id = CAMERAS[i % len(CAMERAS)]
                start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10 * (args.clips - i))
                path = clips_dir / f"{start:%Y%m%dT%H%M%SZ}_{serial}.mp4"
                say(f"Camera {serial} records {path.name} (real H.264/AAC with faces) ...")
                render_clip(path, seconds=6, width=640, height=360, fps=25, faces=3, seed=100 + i)
                clip = record_clip(cameras[serial], path, staff_id, start, start + timedelta(seconds=6))
                result = station.upload(clip)
                results.append(result)
                say(f"  uploaded over tus: evidence {result.evidence_item_id} ({result.evidence_status})")

        if lone_worker is not None:
            say("Lone-worker devices speak MQTT to the broker; the service verifies, stores and answers ...")
            demo_lone_worker.run(lone_worker, url, http, admin, settings.resolved_database_url, demo_dir, say)

        say("Waiting for the automatic redaction of each clip (faces blurred, audio kept) ...")
        for result in results:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                versions = http.get(
                    f"{url}/api/v1/evidence/{result.evidence_item_id}/redactions", headers=admin
                ).json()
                if versions and versions[0]["status"] in ("done", "failed"):
                    break
                time.sleep(0.5)
            if versions:
                v = versions[0]
                say(
                    f"  {result.evidence_item_id}: redaction {v['status']}, redacted copy {v['result_item_id']}"
                )

        say("")
        say("The evidence service is running.")
        say(f"  Console (alarm board, map, devices, people): {url}/")
        say(f"  API and OpenAPI docs:     {url}/docs")
        say(f"  Sign in:                  admin / {password}   (kept in {demo_dir / 'admin-password.txt'})")
        say(f"  An access token:          {token['access_token']}")
        say(f"  List evidence:            curl -H 'Authorization: Bearer <token>' {url}/api/v1/evidence")
        if results:
            say(
                f"  Custody trail of a clip:  curl -H 'Authorization: Bearer <token>' "
                f"{url}/api/v1/evidence/{results[0].evidence_item_id}/custody"
            )
        say("  Verify ledger and objects: .venv/bin/evidence verify")
        if lone_worker is not None:
            say(f"  Alarms (live: /stream):   curl -H 'Authorization: Bearer <token>' {url}/api/v1/alarms")
        if args.once:
            return 0
        say("Press Ctrl-C to stop.")
        while proc.poll() is None:
            time.sleep(1)
        return proc.returncode or 0
    except KeyboardInterrupt:
        return 0
    finally:
        stop_requests.begin_stopping()
        say("Stopping the demo ...")
        stop_all(
            [(child, grace) for child, grace in ((proc, SERVICE_GRACE_S), (worker, WORKER_GRACE_S)) if child]
        )
        # A service killed before it could stop its embedded store leaves the store running.
        if stop_recorded_store(Path(settings.data_dir) / "s3"):
            say("Stopped the embedded object store the service left running.")
        if lone_worker is not None:
            lone_worker.stop()
        record.clear()
        say("Stopped.")


if __name__ == "__main__":
    raise SystemExit(main())
