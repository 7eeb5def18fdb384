"""The S3 connector against moto's S3 server running as its own process (real S3 protocol, IAM authentication on):
first sync through paginated listings, an overwritten object re-indexed alone, deletions pruned, a missing
bucket, wrong credentials, missing permissions, an object over the size limit failing alone, and retries of
throttling and server errors through a fault-injecting proxy in front of moto."""

import uuid

import pytest

from apps.ingestion.connectors import s3 as s3_module
from apps.ingestion.connectors.base import ConfigError
from apps.ingestion.connectors.s3 import S3Connector
from apps.ingestion.models import Chunk, Document, Source, SyncRun
from apps.ingestion.secrets import encrypt_config
from apps.ingestion.sources import SourceError, create_source
from tests.conftest import sync_now
from tests.ingestion.s3_server import FaultProxy, Keys, MotoServer, free_port

pytestmark = pytest.mark.django_db

OBJECTS = {
    "kb/it/vpn.md": b"# Connecting to the VPN\n\nInstall the GateKeeper client and sign in with your badge number.",
    "kb/policies/expenses.txt": b"Travel and expenses\n\nTrain tickets are reimbursed in standard class only.",
    "kb/policies/security.html": b"<html><head><title>Information security</title></head><body><h1>Information "
                                 b"security</h1><p>Laptops must use full-disk encryption.</p></body></html>",
    "kb/finance/rates.csv": b"currency,rate\nEUR,1.17\nUSD,1.27\n",
    "kb/facilities/plants.json": b'{"title": "Office plants", "schedule": "watered on Mondays and Thursdays"}',
    "kb/it/": b"",  # a "folder" marker some tools write
    "kb/it/installer.bin": b"\x00\x01binary",  # a type the parser does not read: not listed
    "kb/drafts/wip.txt": b"Work in progress, excluded by a glob.",
    "outside/readme.txt": b"Outside the prefix.",
}


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log").start()
    yield server
    server.stop()


@pytest.fixture
def proxy(moto):
    with FaultProxy(moto.url) as running:
        yield running


@pytest.fixture
def bucket(moto):
    name = f"kb-{uuid.uuid4().hex[:12]}"
    client = moto.client()
    client.create_bucket(Bucket=name)
    for key, body in OBJECTS.items():
        client.put_object(Bucket=name, Key=key, Body=body)
    return name


@pytest.fixture(autouse=True)
def _quick_throttling_backoff(monkeypatch):
    """botocore waits up to 1 s, 2 s, 4 s... after a throttling error; the same jittered backoff, scaled down."""
    from botocore.retries.standard import ExponentialBackoff

    monkeypatch.setitem(ExponentialBackoff._DEFAULT_BACKOFF_CONFIG, "throttling_base_scale", 0.02)


def s3_config(endpoint, bucket, keys: Keys, **overrides):
    config = {"bucket": bucket, "prefix": "kb/", "endpoint_url": endpoint, "region": "us-east-1",
              "access_key_id": keys.access_key_id, "secret_access_key": keys.secret_access_key,
              "exclude": ["drafts/*"], "max_retries": 2, "timeout": 5}
    config.update(overrides)
    return {k: v for k, v in config.items() if v is not None}


@pytest.fixture
def source(moto, proxy, bucket, roles, monkeypatch):
    monkeypatch.setattr(s3_module, "LIST_PAGE_SIZE", 2)  # several pages, continuation tokens followed
    return create_source(name="kb-bucket", kind="s3", config=s3_config(proxy.url, bucket, moto.reader))


def listing_pages(proxy) -> list:
    return [q for method, path, q, status in proxy.state.requests("GET") if "list-type=2" in q and status == 200]


def downloads(proxy) -> list[str]:
    return [path.split("/", 2)[2] for method, path, q, status in proxy.state.requests("GET")
            if "list-type=2" not in q]


def test_first_sync_indexes_the_objects_under_the_prefix(source, proxy, bucket):
    run = sync_now(source)
    assert run.status == SyncRun.SUCCEEDED, (run.message, run.errors)
    keys = set(Document.objects.filter(source=source).values_list("external_id", flat=True))
    assert keys == {"kb/it/vpn.md", "kb/policies/expenses.txt", "kb/policies/security.html", "kb/finance/rates.csv",
                    "kb/facilities/plants.json"}
    assert run.counts["new"] == 5 and run.counts["failed"] == 0
    doc = Document.objects.get(source=source, external_id="kb/policies/security.html")
    assert doc.uri == f"s3://{bucket}/kb/policies/security.html"
    assert doc.content_type == "text/html" and doc.title == "Information security"
    assert doc.modified_at is not None
    assert Document.objects.get(source=source, external_id="kb/finance/rates.csv").content_type == "text/csv"
    assert "badge number" in Chunk.objects.get(document__external_id="kb/it/vpn.md", ordinal=0).text
    # six wanted-or-not keys under kb/ in pages of two: the run's listing took several pages
    run_pages = listing_pages(proxy)[2:]  # create's check() and the run's check() list one key each
    assert len(run_pages) >= 4 and any("continuation-token" in q for q in run_pages)
    assert sorted(downloads(proxy)) == sorted(keys)  # nothing outside the prefix, excluded or unreadable fetched
    source.refresh_from_db()
    assert set(source.checkpoint) == {"scope", "floor", "recent"}
    assert set(source.checkpoint["recent"]) == keys


def test_overwritten_object_alone_is_downloaded_and_reindexed(source, proxy, moto, bucket):
    sync_now(source)
    untouched = set(Chunk.objects.filter(document__external_id="kb/it/vpn.md").values_list("id", "created_at"))
    # Overwritten within the same second as the first upload, as often as not: the ETag still tells.
    moto.client().put_object(Bucket=bucket, Key="kb/policies/expenses.txt",
                             Body=b"Travel and expenses\n\nTrain tickets are reimbursed in first class on long trips.")
    before = len(downloads(proxy))
    run = sync_now(source)
    assert run.status == SyncRun.SUCCEEDED, (run.message, run.errors)
    assert run.counts["seen"] == 1 and run.counts["updated"] == 1
    assert run.counts["new"] == 0 and run.counts["unchanged"] == 0 and run.counts["deleted"] == 0
    assert downloads(proxy)[before:] == ["kb/policies/expenses.txt"]
    assert Chunk.objects.filter(document__external_id="kb/policies/expenses.txt", text__contains="first class").exists()
    assert set(Chunk.objects.filter(document__external_id="kb/it/vpn.md").values_list("id", "created_at")) == untouched
    again = sync_now(source)
    assert again.status == SyncRun.SUCCEEDED and again.counts["seen"] == 0
    assert len(downloads(proxy)) == before + 1


def test_deleted_object_is_pruned(source, moto, bucket):
    sync_now(source)
    moto.client().delete_object(Bucket=bucket, Key="kb/finance/rates.csv")
    run = sync_now(source)
    assert run.status == SyncRun.SUCCEEDED, run.message
    assert run.counts["deleted"] == 1 and run.counts["seen"] == 0
    assert not Document.objects.filter(source=source, external_id="kb/finance/rates.csv").exists()
    assert Document.objects.filter(source=source).count() == 4


def test_object_over_the_size_limit_fails_alone_without_being_downloaded(source, proxy, moto, bucket, settings):
    settings.MAX_DOCUMENT_BYTES = 1000
    moto.client().put_object(Bucket=bucket, Key="kb/big.txt", Body=b"All work and no play. " * 100)  # 2,200 bytes
    run = sync_now(source)
    assert run.status == SyncRun.PARTIAL
    assert run.counts["new"] == 5 and run.counts["failed"] == 1
    assert run.errors == [{"item": "kb/big.txt",
                           "reason": "object is 2,200 bytes, over the 1,000-byte limit (MAX_DOCUMENT_BYTES)"}]
    assert "kb/big.txt" not in downloads(proxy)
    assert not Document.objects.filter(external_id="kb/big.txt").exists()
    source.refresh_from_db()
    assert source.checkpoint["retry"] == ["kb/big.txt"]  # not passed over: tried again next time
    settings.MAX_DOCUMENT_BYTES = 10_000
    run = sync_now(source)
    assert run.status == SyncRun.SUCCEEDED, run.errors
    assert run.counts["seen"] == 1 and run.counts["new"] == 1
    source.refresh_from_db()
    assert "retry" not in source.checkpoint


def test_object_the_key_may_not_read_fails_alone(moto, proxy, bucket, roles):
    keys = moto.user(f"no-policies-{bucket}", {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/kb/policies/*"}]})
    source = create_source(name="kb-bucket", kind="s3", config=s3_config(proxy.url, bucket, keys))
    run = sync_now(source)
    assert run.status == SyncRun.PARTIAL
    assert run.counts["new"] == 3 and run.counts["failed"] == 2
    assert {e["item"] for e in run.errors} == {"kb/policies/expenses.txt", "kb/policies/security.html"}
    assert all(e["reason"].startswith("cannot download the object (AccessDenied)") for e in run.errors)
    source.refresh_from_db()
    assert source.checkpoint["retry"] == ["kb/policies/expenses.txt", "kb/policies/security.html"]


def test_missing_bucket_is_refused_at_save(moto, proxy, roles):
    with pytest.raises(SourceError) as err:
        create_source(name="nowhere", kind="s3", config=s3_config(proxy.url, "no-such-bucket-here", moto.reader))
    assert err.value.field == "config"
    assert err.value.message == f"bucket 'no-such-bucket-here' does not exist at {proxy.url}"
    assert not Source.objects.exists()


def test_bucket_gone_fails_the_run_and_prunes_nothing(source, moto, bucket):
    sync_now(source)
    client = moto.client()
    for key in OBJECTS:
        client.delete_object(Bucket=bucket, Key=key)
    client.delete_bucket(Bucket=bucket)
    run = sync_now(source)
    assert run.status == SyncRun.FAILED
    assert run.message.endswith(f"bucket '{bucket}' does not exist at {Source.objects.get().config['endpoint_url']}")
    assert Document.objects.filter(source=source).count() == 5


@pytest.mark.parametrize(
    ("keys", "reason"),
    [
        (lambda m: Keys(m.reader.access_key_id, "not-the-secret"),
         "rejected the request signature: secret_access_key does not belong to access key id '{key}'"),
        (lambda m: Keys("AKIAIOSFODNN7EXAMPLE", "whatever"),
         "does not know the access key id 'AKIAIOSFODNN7EXAMPLE' (check access_key_id)"),
        (lambda m: m.get_only,
         "access denied listing bucket '{bucket}' as '{key}' (AccessDenied): Access Denied"),
    ],
    ids=["wrong-secret", "unknown-key", "no-list-permission"],
)
def test_wrong_credentials_are_refused_at_save(moto, proxy, bucket, roles, keys, reason):
    keys = keys(moto)
    with pytest.raises(SourceError) as err:
        create_source(name="kb-bucket", kind="s3", config=s3_config(proxy.url, bucket, keys))
    assert reason.format(key=keys.access_key_id, bucket=bucket) in err.value.message
    assert "not-the-secret" not in err.value.message


def test_credentials_revoked_after_save_fail_the_run(source, moto, proxy, bucket):
    sync_now(source)
    stored = Source.objects.get(pk=source.pk).config
    config = {**s3_config(proxy.url, bucket, moto.reader), "secret_access_key": "rotated-away"}
    Source.objects.filter(pk=source.pk).update(config=encrypt_config(config, S3Connector.secret_fields))
    assert Source.objects.get(pk=source.pk).config != stored
    moto.client().delete_object(Bucket=bucket, Key="kb/it/vpn.md")
    run = sync_now(source)
    assert run.status == SyncRun.FAILED
    assert "rejected the request signature: secret_access_key does not belong to access key id" in run.message
    assert Document.objects.filter(source=source, external_id="kb/it/vpn.md").exists()  # nothing pruned


@pytest.mark.parametrize("mode", ["503", "500"])
def test_throttling_and_server_errors_are_retried(source, proxy, mode):
    proxy.state.fail(mode, times=2)
    start = len(proxy.state.requests("GET"))
    run = sync_now(source)
    assert run.status == SyncRun.SUCCEEDED, run.message
    assert run.counts["new"] == 5
    statuses = [status for _, _, _, status in proxy.state.requests("GET")[start:]]
    assert statuses[:3] == [int(mode), int(mode), 200]


def test_a_timeout_is_retried(source, proxy, bucket, moto):
    Source.objects.filter(pk=source.pk).update(config=encrypt_config(
        s3_config(proxy.url, bucket, moto.reader, timeout=0.5), S3Connector.secret_fields))
    proxy.state.fail("slow", times=1)
    run = sync_now(source)
    assert run.status == SyncRun.SUCCEEDED, run.message
    assert run.counts["new"] == 5


def test_persistent_throttling_fails_the_run_with_the_reason(source, proxy, bucket):
    sync_now(source)
    proxy.state.fail("503")
    start = len(proxy.state.requests("GET"))
    run = sync_now(source)
    assert run.status == SyncRun.FAILED
    assert run.message == (f"{proxy.url} answered SlowDown (HTTP 503) after 2 retries listing bucket '{bucket}': "
                           "Please reduce your request rate.")
    assert len(proxy.state.requests("GET")) - start == 3  # the run's check(): one try and two retries, no more
    assert Document.objects.filter(source=source).count() == 5


def test_unreachable_endpoint_is_reported(moto, roles):
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SourceError) as err:
        create_source(name="dead", kind="s3", config=s3_config(dead, "some-bucket", moto.reader, max_retries=1))
    assert err.value.message.startswith(f"cannot reach {dead} after 1 retry (listing bucket 'some-bucket'): ")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"bucket": "Bad_Bucket"}, "bucket"),
        ({"bucket": None}, "bucket"),
        ({"endpoint_url": "ftp://example.com"}, "endpoint_url"),
        ({"endpoint_url": "https://key:secret@example.com"}, "endpoint_url"),
        ({"secret_access_key": None}, "secret_access_key"),
        ({"access_key_id": ""}, "access_key_id"),
        ({"region": "EU West"}, "region"),
        ({"include": "*.md"}, "include"),
        ({"max_retries": 11}, "max_retries"),
        ({"depth": 2}, "depth"),
    ],
)
def test_bad_s3_settings_name_the_field(changes, field):
    config = {k: v for k, v in {**s3_config("http://127.0.0.1:9", "kb-bucket", Keys("a", "b")), **changes}.items()
              if v is not None}
    with pytest.raises(ConfigError) as err:
        S3Connector.validate_config(config)
    assert err.value.field == field


def test_secret_access_key_is_stored_encrypted_and_masked(source):
    from apps.ingestion.secrets import MASK, is_secret, mask_config

    stored = Source.objects.get(pk=source.pk).config
    assert is_secret(stored["secret_access_key"])
    assert mask_config(stored)["secret_access_key"] == MASK
