"""Object store on MinIO / S3, through the `minio` client.

Each object carries its sha256 in user metadata (x-amz-meta-sha256): S3 ETags are not content
hashes for multipart uploads, and resumable syncs need one they can compare with a local file.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterator

import certifi
import urllib3
from minio import Minio
from minio.helpers import check_bucket_name
from minio.error import S3Error
from urllib3.util import Retry, Timeout

from cxrjobs.errors import StoreError
from cxrjobs.storage.base import CHUNK, ObjectInfo, ObjectStore, check_key, disk_full_error, sha256_file

SHA_META = "x-amz-meta-sha256"
_MISSING = {"NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"}
NO_BUCKET = "NoSuchBucket"
log = logging.getLogger(__name__)


class S3Store(ObjectStore):
    def __init__(self, endpoint: str, bucket: str, prefix: str = "", *, access_key: str,
                 secret_key: str, secure: bool = False):
        if not endpoint or not bucket:
            raise StoreError("an S3 store needs an endpoint (host:port) and a bucket")
        self.endpoint, self.bucket = endpoint, bucket
        self.prefix = check_key(prefix) if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        # minio's default client waits 5 minutes to connect, times 5 retries: a wrong endpoint
        # would hang a job for half an hour instead of failing with a message.
        http = urllib3.PoolManager(
            timeout=Timeout(connect=15, read=300), maxsize=32,
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            retries=Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]))
        # The credentials live only inside the client's provider, never on this object, so
        # neither repr(store) nor vars(store) can show them.
        self._client = Minio(endpoint, access_key=access_key, secret_key=secret_key,
                             secure=secure, region="us-east-1", http_client=http)
        # The bucket is never made here: every command opens the store, so a typo in
        # CXRJOBS_STORE left a stray bucket behind even for `data inspect`. See _make_bucket for
        # writes. Reads of a missing bucket find nothing (stat -> None, list -> empty), because
        # write paths ask first (is this upload already there? is this a rerun?) and must work on
        # a fresh bucket; the reads that report absence (get_*, nothing_under) name the bucket.
        try:
            check_bucket_name(bucket, strict=True)  # S3 naming rules, before any request
            self._bucket_exists = self._client.bucket_exists(bucket)
        except S3Error as e:
            raise StoreError(f"cannot use bucket {bucket!r} at {endpoint}: {e.code}: {e.message}") from None
        except ValueError as e:  # minio validates names locally, e.g. bucket naming rules
            raise StoreError(f"invalid S3 store {self.url}: {e}") from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise StoreError(f"cannot reach the S3 endpoint {endpoint} for {self.url}: "
                             f"{type(e).__name__}: {e}") from None

    def __repr__(self) -> str:
        return f"S3Store(url={self.url!r}, endpoint={self.endpoint!r})"

    def _name(self, key: str) -> str:
        key = check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _rel(self, name: str) -> str:
        return name[len(self.prefix) + 1:] if self.prefix else name

    def _no_bucket(self) -> str:
        return (f"bucket {self.bucket!r} does not exist at {self.endpoint}. If the name is right, create "
                f"it (the Helm chart's cxrjobs-bucket job does, or `mc mb ALIAS/{self.bucket}`) or write "
                "something to the store first; if it is a typo, fix CXRJOBS_STORE (or the s3:// URL)")

    def _make_bucket(self) -> None:
        """Create the bucket on the first write, if it is missing.

        Kept for writes on purpose: a write names where its output goes, so a bucket it makes is
        the one the user asked for, and a bare MinIO (or the test suite's fresh bucket per test,
        conftest.s3_env) works without a separate step. The Helm chart creates its bucket with a
        hook job (`mc mb --ignore-existing`), so on a cluster this is a no-op. What made stray
        buckets was creation on *every* open, reads included; that is gone. It is logged, so a
        mistyped bucket on a write shows up in the command's output rather than silently."""
        if self._bucket_exists:
            return
        log.warning("bucket %r does not exist at %s: creating it for the first write to %s",
                    self.bucket, self.endpoint, self.url)
        try:
            self._client.make_bucket(self.bucket)
        except S3Error as e:  # another replica created it first
            if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise StoreError(f"cannot create bucket {self.bucket!r} at {self.endpoint} for {self.url}: "
                                 f"{e.code}: {e.message}; create it yourself (the Helm chart's "
                                 f"cxrjobs-bucket job, or `mc mb ALIAS/{self.bucket}`)") from None
        self._bucket_exists = True

    def _bucket_missing(self) -> bool:
        """Asked again, not cached: another process may have made the bucket since we opened."""
        try:
            return not self._client.bucket_exists(self.bucket)
        except (S3Error, urllib3.exceptions.HTTPError, OSError):
            return False  # cannot tell: say only what we know

    def nothing_under(self, prefix: str) -> StoreError:
        if self._bucket_missing():
            return StoreError(f"nothing under {prefix!r} in store {self.url}: {self._no_bucket()}")
        return super().nothing_under(prefix)

    def _fail(self, key: str, e: S3Error) -> StoreError:
        if e.code == NO_BUCKET:
            return StoreError(f"no object {key!r} in store {self.url}: {self._no_bucket()}")
        if e.code in _MISSING:
            return StoreError(f"no object {key!r} in store {self.url}")
        return StoreError(f"S3 error on {key!r} in store {self.url}: {e.code}: {e.message}")

    def put_file(self, key: str, path: str | Path) -> ObjectInfo:
        name, sha = self._name(key), sha256_file(path)
        self._make_bucket()
        try:
            self._client.fput_object(self.bucket, name, str(path), metadata={SHA_META: sha})
        except S3Error as e:
            raise self._fail(key, e) from None
        return ObjectInfo(check_key(key), Path(path).stat().st_size, sha)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        name, sha = self._name(key), hashlib.sha256(data).hexdigest()
        self._make_bucket()
        try:
            self._client.put_object(self.bucket, name, io.BytesIO(data), len(data),
                                    metadata={SHA_META: sha})
        except S3Error as e:
            raise self._fail(key, e) from None
        return ObjectInfo(check_key(key), len(data), sha)

    def _open(self, key: str):
        try:
            return self._client.get_object(self.bucket, self._name(key))
        except S3Error as e:
            raise self._fail(key, e) from None

    def get_file(self, key: str, path: str | Path) -> None:
        dst = Path(path)
        resp = self._open(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
        try:
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as f:
                for chunk in resp.stream(CHUNK):
                    h.update(chunk)
                    f.write(chunk)
            # A truncated or corrupted transfer must not replace a good local file.
            want = resp.headers.get(SHA_META)
            if want and h.hexdigest() != want:
                raise StoreError(f"object {key!r} in store {self.url} failed its sha256 check "
                                 "after download; retry, and re-upload it if this persists")
            os.replace(tmp, dst)
        except BaseException as e:
            full = disk_full_error(e, dst, partial=tmp) if isinstance(e, Exception) else None
            Path(tmp).unlink(missing_ok=True)
            if full is not None:
                raise full from None
            raise
        finally:
            resp.close()
            resp.release_conn()

    def get_bytes(self, key: str) -> bytes:
        resp = self._open(key)
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self._client.stat_object(self.bucket, self._name(key))
        except S3Error as e:
            if e.code in _MISSING or e.code == NO_BUCKET:
                return None
            raise self._fail(key, e) from None
        return ObjectInfo(check_key(key), st.size or 0, (st.metadata or {}).get(SHA_META))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Like LocalStore, a prefix is a path: "a" matches "a" and "a/..." but not "ab".
        want = check_key(prefix) if prefix.strip("/") else ""
        base = self._name(want) if want else (self.prefix + "/" if self.prefix else "")
        try:
            found = [ObjectInfo(self._rel(o.object_name), o.size or 0, None)
                     for o in self._client.list_objects(self.bucket, prefix=base or None, recursive=True)]
        except S3Error as e:
            if e.code == NO_BUCKET:
                return
            raise self._fail(prefix, e) from None
        found = [o for o in found if not want or o.key == want or o.key.startswith(want + "/")]
        yield from sorted(found, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        try:
            self._client.remove_object(self.bucket, self._name(key))
        except S3Error as e:
            if e.code not in _MISSING and e.code != NO_BUCKET:
                raise self._fail(key, e) from None
