"""Storage for a self-hosted queue's inputs and outputs, named by URL and shared by the client and
every worker, so no file travels through the client machine:

    s3://bucket/prefix        any S3-compatible store (boto3; credentials and endpoint from the
                              usual AWS variables: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
                              AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, or an instance role)
    file:///shared/folder     a folder every machine mounts (NFS, SMB)

Objects are named by their content: `inputs/<sha256><.ext>` (uploaded once by the client) and
`outputs/<sha256>.mp4` (written by a worker). A write is retried, then checked (size and sha256)
before it counts; every read is checked against the sha256 in the object's name.
"""

import hashlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..files import sha256_of
from ..redaction import mask_credentials

CONTENT_NAME = re.compile(r"(inputs|outputs)/([0-9a-f]{64})(\.[a-z0-9]{1,8})?")
WRITE_ATTEMPTS = 4  # a write (upload and check) is tried this many times, with growing pauses
BLOCK = 8 * 1024 * 1024


class StorageError(RuntimeError):
    """An object could not be written or read intact; the message names the object, never a credential."""


def open_storage(url):
    """A storage from its URL (s3://bucket/prefix or file:///folder), or a storage object as it is."""
    if hasattr(url, "put"):
        return url
    scheme = urlsplit(str(url)).scheme
    if scheme == "s3":
        return S3Storage(str(url))
    if scheme == "file":
        return FileStorage(str(url))
    raise ValueError(f"The storage must be an s3://bucket/prefix or file:///folder URL, got {mask_credentials(str(url))!r}.")


def content_name(kind: str, sha256: str, suffix: str = "") -> str:
    """The object name of a file by its content: inputs/<sha256><.ext> or outputs/<sha256>.mp4."""
    suffix = suffix.lower() if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix.lower()) else ""
    return f"{kind}/{sha256}{suffix}"


def digest_in(name: str) -> str:
    """The sha256 an object's name carries (ValueError if it is not a content name)."""
    match = CONTENT_NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"{name!r} is not a storage object named by its content.")
    return match.group(2)


class Storage:
    """What the client and the workers need of a storage (see the module doc)."""

    url: str

    def ref(self, name: str) -> str:
        """The URL of object `name`, as jobs record it."""
        return f"{self.url}/{name}"

    def name_of(self, ref: str) -> str:
        """The object name of one of this storage's URLs (ValueError for any other URL)."""
        if not str(ref).startswith(self.url + "/"):
            raise ValueError(f"{mask_credentials(str(ref))} is not in the storage {self}.")
        name = str(ref)[len(self.url) + 1:]
        digest_in(name)
        return name

    def upload(self, path, kind: str = "inputs", sha256: str | None = None) -> str:
        """Store a local file by its content (once: an object already there is kept); its URL."""
        path = Path(path)
        sha256 = sha256 or sha256_of(path)
        name = content_name(kind, sha256, path.suffix if kind == "inputs" else ".mp4")
        size = path.stat().st_size
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                if not self._holds(name, size, sha256):
                    self._write(path, name, sha256)
                    if not self._holds(name, size, sha256):
                        raise StorageError(f"{name} did not read back with its size and sha256 after the upload")
                return self.ref(name)
            except (StorageError, OSError) as error:
                if attempt == WRITE_ATTEMPTS:
                    raise StorageError(f"Could not write {name} to the storage {self}: {mask_credentials(str(error))}.") from None
                time.sleep(0.5 * 2**attempt)

    def download(self, ref: str, target) -> Path:
        """Fetch object `ref` to the local file `target`, checked against the sha256 in its name."""
        name = self.name_of(ref)
        target = Path(target)
        try:
            digest = self._read(name, target)
        except (StorageError, OSError) as error:
            target.unlink(missing_ok=True)
            raise StorageError(f"Could not read {name} from the storage {self}: {mask_credentials(str(error))}.") from None
        if digest != digest_in(name):
            target.unlink(missing_ok=True)
            raise StorageError(f"{name} in the storage {self} does not match its sha256: it is corrupt.")
        return target

    def __str__(self) -> str:
        return mask_credentials(self.url)


class FileStorage(Storage):
    """A folder every machine mounts: file:///shared/folder."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(f"A file storage needs an absolute path, as file:///shared/folder; got {url!r}.")
        self.root = Path(unquote(parts.path))
        self.url = "file://" + str(self.root).rstrip("/")
        if not self.root.is_dir():
            raise ValueError(f"The storage folder {self.root} does not exist (mount it, or create it).")

    def link(self, ref: str, expires_s: float = 0) -> str:
        """A URL of the object for others on the same mount."""
        return self.ref(self.name_of(ref))

    def _holds(self, name: str, size: int, sha256: str) -> bool:
        path = self.root / name
        return path.is_file() and path.stat().st_size == size and sha256_of(path) == sha256

    def _write(self, source: Path, name: str, sha256: str) -> None:
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".part")
        try:
            with os.fdopen(handle, "wb") as out, open(source, "rb") as file:
                shutil.copyfileobj(file, out, BLOCK)
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial, target)
        finally:
            Path(partial).unlink(missing_ok=True)

    def _read(self, name: str, target: Path) -> str:
        digest = hashlib.sha256()
        with open(self.root / name, "rb") as file, open(target, "wb") as out:
            for block in iter(lambda: file.read(BLOCK), b""):
                digest.update(block)
                out.write(block)
        return digest.hexdigest()


class S3Storage(Storage):
    """An S3-compatible bucket: s3://bucket/prefix (see the module doc for credentials)."""

    def __init__(self, url: str):
        import boto3
        from botocore.config import Config

        parts = urlsplit(url)
        if not parts.netloc:
            raise ValueError(f"An S3 storage is named s3://bucket/prefix; got {url!r}.")
        self.bucket, self.prefix = parts.netloc, parts.path.strip("/")
        self.url = f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        settings = Config(connect_timeout=10, read_timeout=60, retries={"max_attempts": 5, "mode": "standard"}, signature_version="s3v4")
        self.s3 = boto3.client("s3", config=settings)

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def link(self, ref: str, expires_s: float = 24 * 3600) -> str:
        """A presigned GET URL of the object, valid `expires_s` seconds (at most the credentials' life)."""
        params = {"Bucket": self.bucket, "Key": self.key(self.name_of(ref))}
        return self.s3.generate_presigned_url("get_object", Params=params, ExpiresIn=int(expires_s))

    def _holds(self, name: str, size: int, sha256: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=self.key(name))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise StorageError(_s3_reason(error)) from None
        except BotoCoreError as error:
            raise StorageError(_s3_reason(error)) from None
        return head["ContentLength"] == size and head.get("Metadata", {}).get("sha256") == sha256

    def _write(self, source: Path, name: str, sha256: str) -> None:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        extra = {"Metadata": {"sha256": sha256}, "ChecksumAlgorithm": "SHA256"}  # the store checks each part on arrival
        try:
            self.s3.upload_file(str(source), self.bucket, self.key(name), ExtraArgs=extra)
        except (BotoCoreError, ClientError, Boto3Error) as error:
            raise StorageError(_s3_reason(error)) from None

    def _read(self, name: str, target: Path) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.s3.download_file(self.bucket, self.key(name), str(target))
        except (BotoCoreError, ClientError) as error:
            raise StorageError(_s3_reason(error)) from None
        return sha256_of(target)


def _s3_reason(error) -> str:
    """What went wrong, in a few words: S3's error code (never a signed URL, a key or a local path)."""
    response = getattr(error, "response", None) or {}
    code = response.get("Error", {}).get("Code") or next(iter(re.findall(r"An error occurred \((\w+)\)", str(error))), None)
    return f"S3 answered {code}" if code else f"S3 could not be reached ({type(error).__name__})"
