"""Helpers shared by the benchmark scripts (run as ``python bench/<script>.py``)."""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def table(title, header, rows):
    """Prints a Markdown table under a ``###`` title."""
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    sys.stdout.flush()


def start_mongod(db_dir):
    """FiftyOne's bundled mongod on a free loopback port, on ``db_dir``."""
    import importlib.util

    spec = importlib.util.find_spec("fiftyone")
    mongod = os.path.join(os.path.dirname(spec.origin), "db", "bin", "mongod")
    os.makedirs(db_dir, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [mongod, "--dbpath", db_dir, "--port", str(port), "--bind_ip", "127.0.0.1", "--nounixsocket",
         "--logpath", os.path.join(db_dir, "mongod.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, f"mongodb://127.0.0.1:{port}"
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"mongod exited with {process.returncode}; see {db_dir}/mongod.log")
            time.sleep(0.2)
    process.terminate()
    raise RuntimeError("mongod did not start within 120 s")


@contextlib.contextmanager
def own_database(prefix):
    """A throwaway mongod of this benchmark's own (``FIFTYONE_DATABASE_URI``
    set, progress bars off), stopped and deleted on exit."""
    work = tempfile.mkdtemp(prefix=prefix)
    mongod, uri = start_mongod(os.path.join(work, "db"))
    os.environ.update(
        FIFTYONE_DATABASE_URI=uri, FIFTYONE_DATABASE_VALIDATION="false", FIFTYONE_DO_NOT_TRACK="true",
        FIFTYONE_SHOW_PROGRESS_BARS="false",
    )
    try:
        yield uri
    finally:
        if "fiftyone" in sys.modules:
            import fiftyone.core.odm.database as food

            food._disconnect()
        mongod.terminate()  # stop mongod before its files go
        mongod.wait(60)
        shutil.rmtree(work, ignore_errors=True)
