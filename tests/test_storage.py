"""The queue's storage by URL: a folder (file://) and S3 through boto3 against a local S3
emulator (moto's server, a real HTTP server on 127.0.0.1): objects named by content and written
once, every read checked against the sha256 in the name, presigned links, writes retried, and no
credential in any message."""

import hashlib
import logging

import httpx
import pytest

from latentsync.client.storage import StorageError, open_storage

ACCESS_KEY, SECRET_KEY = "AKIAQUEUETEST", "queue-secret-key-do-not-print"


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on 127.0.0.1, with a bucket."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_server}.items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture(params=["file", "s3"])
def storage(request, tmp_path):
    if request.param == "file":
        (tmp_path / "shared").mkdir()
        return open_storage(f"file://{tmp_path / 'shared'}")
    request.getfixturevalue("s3_env")
    storage = open_storage("s3://lipsync-test/team/a")
    try:
        storage.s3.create_bucket(Bucket="lipsync-test")
    except storage.s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    return storage


def test_objects_are_stored_once_by_content_and_checked_when_read(storage, tmp_path):
    source = tmp_path / "Talk.MP4"
    source.write_bytes(b"some video bytes" * 1000)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    url = storage.upload(source)
    assert url == f"{storage.url}/inputs/{digest}.mp4"
    written = _written(storage, url)
    assert storage.upload(source) == url and _written(storage, url) == written  # not written again
    copy = storage.download(url, tmp_path / "copy")
    assert copy.read_bytes() == source.read_bytes()
    output = storage.upload(source, "outputs", digest)
    assert output == f"{storage.url}/outputs/{digest}.mp4"
    with pytest.raises(ValueError, match="is not in the storage"):
        storage.download("s3://elsewhere/inputs/" + digest + ".mp4", tmp_path / "x")


def test_a_corrupt_object_is_refused_and_rewritten_by_the_next_upload(storage, tmp_path):
    source = tmp_path / "dub.wav"
    source.write_bytes(b"speech" * 500)
    url = storage.upload(source)
    _overwrite(storage, url, b"tampered")
    with pytest.raises(StorageError, match="does not match its sha256"):
        storage.download(url, tmp_path / "copy")
    assert not (tmp_path / "copy").exists()
    storage.upload(source)  # found wrong, so written again
    assert storage.download(url, tmp_path / "copy").read_bytes() == source.read_bytes()


def test_s3_links_are_presigned_and_errors_carry_no_credential(s3_env, tmp_path):
    storage = open_storage("s3://lipsync-links/out")
    storage.s3.create_bucket(Bucket="lipsync-links")
    source = tmp_path / "out.mp4"
    source.write_bytes(b"an output")
    url = storage.upload(source, "outputs", hashlib.sha256(b"an output").hexdigest())
    link = storage.link(url, 600)
    assert httpx.get(link).content == b"an output" and "X-Amz-Signature=" in link and SECRET_KEY not in link
    missing = open_storage("s3://no-such-bucket/x")
    with pytest.raises(StorageError) as error:
        missing.upload(source)
    assert "no-such-bucket" in str(error.value) and SECRET_KEY not in str(error.value) and ACCESS_KEY not in str(error.value)


def test_a_write_is_retried_until_it_reads_back(tmp_path, monkeypatch):
    (tmp_path / "shared").mkdir()
    storage = open_storage(f"file://{tmp_path / 'shared'}")
    monkeypatch.setattr("latentsync.client.storage.time.sleep", lambda seconds: None)
    real_write, calls = storage._write, []

    def flaky(source, name, sha256):
        calls.append(name)
        if len(calls) < 3:
            raise OSError("the mount went away")
        real_write(source, name, sha256)

    storage._write = flaky
    source = tmp_path / "v.mp4"
    source.write_bytes(b"bytes")
    assert storage.download(storage.upload(source), tmp_path / "back").read_bytes() == b"bytes"
    assert len(calls) == 3


def test_storage_urls_are_checked(tmp_path):
    for url, sentence in [("ftp://host/x", "must be an s3://"), ("file://relative/x", "absolute path"), (f"file://{tmp_path}/missing", "does not exist")]:
        with pytest.raises(ValueError, match=sentence):
            open_storage(url)


def _written(storage, url):
    """When the object was last written."""
    name = storage.name_of(url)
    if hasattr(storage, "root"):
        return (storage.root / name).stat().st_mtime_ns
    return storage.s3.head_object(Bucket=storage.bucket, Key=storage.key(name))["LastModified"]


def _overwrite(storage, url, data: bytes):
    name = storage.name_of(url)
    if hasattr(storage, "root"):
        (storage.root / name).write_bytes(data)
    else:
        storage.s3.put_object(Bucket=storage.bucket, Key=storage.key(name), Body=data)
