"""`longctx data download` against a local HTTP server on loopback: checksums enforced, files atomic."""

import functools
import http.server
import threading

import pytest

from longctx.download import download, git_blob_sha1
from longctx.errors import UsageError


@pytest.fixture
def server(tmp_path, data_dir):
    root = tmp_path / "www"
    root.mkdir()
    for p in (data_dir / "pg_essays").glob("*.txt"):
        (root / p.name).write_bytes(p.read_bytes())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_port}/{{name}}"
    httpd.shutdown()


def test_download_essays_verifies_and_skips_existing(server, tmp_path):
    root, url = server
    n = download(tmp_path / "data", ("essays",), essay_url=url, log=lambda m: None)
    assert n == 49 and len(list((tmp_path / "data/pg_essays").glob("*.txt"))) == 49
    assert download(tmp_path / "data", ("essays",), essay_url=url, log=lambda m: None) == 0


def test_download_rejects_a_corrupted_file(server, tmp_path):
    root, url = server
    (root / "apple.txt").write_text("tampered")
    with pytest.raises(UsageError, match="checksum mismatch"):
        download(tmp_path / "data", ("essays",), essay_url=url, log=lambda m: None)
    assert not (tmp_path / "data/pg_essays/apple.txt").exists()


def test_git_blob_id_matches_git():
    assert git_blob_sha1(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"
