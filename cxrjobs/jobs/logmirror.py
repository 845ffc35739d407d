"""A replica's output, mirrored into the store (runs/<run>/logs/replica-<i>.log) while it runs.

On Kubernetes a pod's log lives only as long as the pod: a Job deleted ttlSecondsAfterFinished
after its end (or a pod replaced after a crash) takes it along. The local backend's supervisor
uploads its replicas' log files at the end; in a pod the entrypoint does it itself: file
descriptors 1 and 2 are redirected into a pipe (so the output of child processes, data-loader
workers and C libraries is caught too), a thread copies every byte to the original stdout (the
pod log stays as it was) and to a local file, and the file is uploaded every `interval` seconds
and at exit. A later attempt of the same replica (a new pod) appends to the object under a
header line, as the local backend's log file does. Best effort: a failed upload never changes
the replica's outcome; a replica killed outright (OOM, SIGKILL) keeps what the last upload had.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the renderer reads ENV_FLAG and stays free of the store's imports
    from cxrjobs.storage import ObjectStore

ENV_FLAG = "CXRJOBS_LOG_TO_STORE"  # set to 1 in the pods the Kubernetes backend renders


def log_key(run_id: str, replica: int | str) -> str:
    from cxrjobs.storage import join_key

    return join_key("runs", run_id, "logs", f"replica-{replica}.log")


class StoreLogMirror:
    def __init__(self, store: ObjectStore, run_id: str, replica: int | str, interval: float = 30.0):
        self.store, self.key, self.interval = store, log_key(run_id, replica), interval
        self._lock = threading.Lock()
        self._dirty = False
        self._stop = threading.Event()

    def __enter__(self) -> StoreLogMirror:
        # What earlier attempts of this replica left in the store comes first in the file.
        earlier = self.store.get_bytes(self.key) if self.store.exists(self.key) else b""
        self._file = tempfile.NamedTemporaryFile(prefix="cxrjobs-log-", suffix=".log", delete=False)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        self._file.write(earlier + f"=== attempt started {stamp} on {os.uname().nodename} ===\n".encode())
        self._file.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._reader = threading.Thread(target=self._copy, args=(read_fd,), daemon=True, name="log-mirror")
        self._reader.start()
        self._uploader = threading.Thread(target=self._upload_loop, daemon=True, name="log-upload")
        self._uploader.start()
        return self

    def _copy(self, read_fd: int) -> None:
        with os.fdopen(read_fd, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                os.write(self._saved[0], chunk)
                with self._lock:
                    self._file.write(chunk)
                    self._file.flush()
                    self._dirty = True

    def _upload(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            self._dirty = False
        try:
            self.store.put_file(self.key, self._file.name)
        except Exception as e:  # the replica's work matters more than its log's copy
            os.write(self._saved[1], f"cxrjobs: could not upload the log to {self.key}: {e}\n".encode())

    def _upload_loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._upload()

    def __exit__(self, *exc) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        # Put the original descriptors back: the pipe's last write end closes, the reader drains
        # it and ends (children that still hold it are waited for at most a few seconds).
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        self._reader.join(timeout=5)
        self._stop.set()
        self._uploader.join(timeout=5)
        with self._lock:
            self._dirty = True
        self._upload()
        self._file.close()
        os.unlink(self._file.name)
        for fd in self._saved:
            os.close(fd)
