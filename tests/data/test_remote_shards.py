"""Shards over http:// from a loopback server: the same samples as the local files, a transient 503 is
retried, a missing shard is a DataError naming it, the shard cache serves later epochs, and a short
pretrain run streams from the server."""

from __future__ import annotations

import http.server
import math
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from medvlp.data.dataset import ImageOptions
from medvlp.data.manifest import read_manifest
from medvlp.data.shardio import Fetcher
from medvlp.data.shards import write_shards
from medvlp.data.stream import ShardStream
from medvlp.errors import DataError


def _tok(texts: list[str]) -> torch.Tensor:
    return torch.tensor([[len(t), ord(t[0]) if t else 0] for t in texts], dtype=torch.long)


class _Server:
    """Serves a folder on 127.0.0.1; ``fail_once`` paths answer 503 the first time they are asked for."""

    def __init__(self, root: Path) -> None:
        self.requests: Counter[str] = Counter()
        self.fail_once: set[str] = set()
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a: object, **k: object) -> None:
                super().__init__(*a, directory=str(root), **k)  # type: ignore[arg-type]

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                server.requests[self.path] += 1
                if self.path in server.fail_once:
                    server.fail_once.discard(self.path)
                    self.send_error(503, "busy, try again")
                    return
                super().do_GET()

            def log_message(self, *a: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    from medvlp.demos.corpora import demo_manifest

    root = tmp_path_factory.mktemp("remote")
    path = demo_manifest("pathology", n_per_class=8, size=48, out_dir=root / "demo", progress=False,
                         variant="tiles")
    s = write_shards(read_manifest(path), root / "www" / "shards", shard_size=12)  # 4 shards
    server = _Server(root / "www")
    yield {"server": server, "local": s.pattern, "remote": server.url + "/shards/{000000..000003}.tar"}
    server.close()


def _steps(ds: ShardStream, batch: int, total: int) -> list[list[int]]:
    ds.configure(batch, total)
    return [b["index"].tolist() for b in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=0)]


def test_http_shards_give_the_local_samples_and_a_503_is_retried(served: dict, tmp_path: Path) -> None:
    server: _Server = served["server"]
    server.fail_once |= {"/shards/000001.tar", "/shards/000002.tar.idx.json"}
    remote = ShardStream(served["remote"], _tok, ImageOptions(size=16), seed=1, shuffle_buffer=20,
                         cache_dir=tmp_path / "cache", retries=2)
    local = ShardStream(served["local"], _tok, ImageOptions(size=16), seed=1, shuffle_buffer=20)
    assert len(remote) == len(local) == 36
    assert _steps(remote, 8, 9) == _steps(local, 8, 9)  # two epochs
    assert server.requests["/shards/000001.tar"] == 2 and server.requests["/shards/000002.tar.idx.json"] == 2
    # each shard was fetched once into the cache; the second epoch read the copies
    assert all(server.requests[f"/shards/{i:06d}.tar"] == (2 if i == 1 else 1) for i in range(4))
    assert len(list((tmp_path / "cache").glob("*-0000*.tar"))) == 4
    again = ShardStream(served["remote"], _tok, ImageOptions(size=16), seed=1, shuffle_buffer=20,
                        cache_dir=tmp_path / "cache")
    before = sum(v for k, v in server.requests.items() if k.endswith(".tar"))
    _steps(again, 8, 3)
    assert sum(v for k, v in server.requests.items() if k.endswith(".tar")) == before  # a later run: cache only


def test_missing_shard_is_a_data_error_naming_it(served: dict) -> None:
    pattern = served["server"].url + "/shards/{000000..000004}.tar"  # 000004 does not exist
    with pytest.raises(DataError, match=r"shard http://127\.0\.0\.1:\d+/shards/000004\.tar not found"):
        ShardStream(pattern, _tok, ImageOptions(size=16))


def test_retries_give_up_with_the_shard_named(tmp_path: Path) -> None:
    server = _Server(tmp_path)
    try:
        (tmp_path / "a.tar").write_bytes(b"x")
        server.fail_once.add("/a.tar")
        with pytest.raises(DataError, match=r"a\.tar: could not be read after 1 tries .*HTTP 503"):
            Fetcher(retries=0).get(server.url + "/a.tar", tmp_path / "copy")
        assert Fetcher(retries=0).get(server.url + "/a.tar", tmp_path / "copy")  # 503 answered only once
        assert (tmp_path / "copy").read_bytes() == b"x"
    finally:
        server.close()


def test_pretrain_streams_http_shards(served: dict, tmp_path: Path) -> None:
    from medvlp.config import TrainConfig
    from medvlp.train import pretrain

    result = pretrain(TrainConfig(domain="pathology", data=served["remote"], steps=2, batch_size=8, eval=False,
                                  workers=0, out=str(tmp_path / "run"), log_every=1, threads=2), quiet=True)
    assert result.steps == 2 and result.info["n_train"] == 36 and math.isfinite(result.info["final_loss"])


def test_pipe_shards_and_a_scheme_without_its_package(served: dict, tmp_path: Path) -> None:
    import shlex

    from medvlp.errors import ConfigError

    local = [Path(served["local"].split("{")[0]) / f"{i:06d}.tar" for i in range(4)]
    pattern = "::".join(f"pipe:cat {shlex.quote(str(p))}" for p in local)  # no index reachable: scanned
    piped = ShardStream(pattern, _tok, ImageOptions(size=16), seed=1, shuffle_buffer=20)
    assert piped.names == [p.name for p in local] and piped.count_source == "scanned shards"
    plain = ShardStream(served["local"], _tok, ImageOptions(size=16), seed=1, shuffle_buffer=20)
    assert _steps(piped, 8, 5) == _steps(plain, 8, 5)
    with pytest.raises(DataError, match=r"shard pipe:cat /nonexistent/000000\.tar: could not be read .*exited with 1"):
        Fetcher(retries=1, backoff=0.01).get("pipe:cat /nonexistent/000000.tar", tmp_path / "x")
    try:
        import s3fs  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"s3:// needs fsspec and its s3 package .*s3fs.*pipe:aws s3 cp"):
            Fetcher(retries=0).get("s3://bucket/shards/000000.tar", tmp_path / "y")
