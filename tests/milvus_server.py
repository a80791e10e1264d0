"""Start and stop a real Milvus standalone server (the PyPI package ``milvus``) for tests and benches.

The ``milvus`` package (2.3.x) ships the Milvus standalone binary and its libraries as LZMA files,
a config template with ``{{ key(type): default }}`` slots (ports, data dirs), and a small launcher
(``milvus.MilvusServer``). We reuse its config resolution (``MilvusServerConfig``: ports, storage
dirs, extra ``a.b.c`` keys) and its unpacker (``_initialize_data_files``), but launch the process
ourselves, in its own session, so that stopping it can kill the whole process group.

* The binaries are unpacked once to ``~/.cache/cbir/milvus-<version>/bin`` (~190 MB, skipped when
  their md5 stamps match); every server gets its own data dir (etcd, rocksmq, segments, logs).
* Every port (gRPC, embedded etcd client and peer, coordinators, metrics/health) is a free
  local port from the OS; the embedded etcd gets them through its own config file.
* Ready = ``GET http://127.0.0.1:<metrics port>/healthz`` answers OK (the package's own check).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

#: Milvus settings for tests (``section.key`` -> value), written into the server's milvus.yaml
TEST_CONFIG: dict[str, object] = {
    # quiet, and small log files
    "log.level": "warn",
    # the growing-segment "interim" IVF index (nlist 128, nprobe 16) is approximate; off, search
    # over not-yet-sealed data is brute force: exact and deterministic on test-sized data
    "queryNode.segcore.interimIndex.enableIndex": "false",
    # shorter ticks: a Strong search waits for the next time tick (200 ms by default), and
    # loading a collection for the query coordinator's next check (1 s) and pull (0.5 s)
    "proxy.timeTickInterval": 50,
    "queryCoord.checkInterval": 100,
    "queryCoord.distPullInterval": 50,
}


#: the template's port slots (``{{ x_port(int): default }}``)
_PORT_KEYS = ("etcd_port", "root_coord_port", "proxy_internal_port", "query_coord_port",
              "query_node_port", "index_coord_port", "index_node_port", "data_coord_port",
              "data_node_port")


#: query coordinator loops (ms) that a collection load waits on; shortened for tests, where
#: every test creates (and so loads) a collection: ~3 s a load with the defaults
FAST_LOAD: dict[str, object] = {
    "checkChannelInterval": 100,
    "checkSegmentInterval": 100,
    "leaderViewUpdateInterval": 100,
    "UpdateNextTargetInterval": 100,
}


@dataclass
class MilvusProcess:
    uri: str
    port: int
    health_url: str
    data_dir: Path
    proc: subprocess.Popen
    log: Path
    _files: list = field(default_factory=list)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the server's process group, then SIGKILL what is left."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # children the server left, if any
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        for f in self._files:
            f.close()

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def binary_dir() -> Path:
    """Where the server binaries are unpacked (once per milvus package version)."""
    import milvus

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    root = cache / "cbir" / f"milvus-{milvus.__version__}"
    milvus._initialize_data_files(str(root))  # no-op when the md5 stamps match
    return root / "bin"


def _add_keys(yaml: Path, section: str, keys: dict[str, object]) -> None:
    """Add ``keys`` (absent from the template, so MilvusServerConfig cannot set them) to a
    top-level section of milvus.yaml."""
    if not keys:
        return
    text = yaml.read_text(encoding="utf-8")
    lines = "".join(f"  {k}: {v}\n" for k, v in keys.items())
    yaml.write_text(text.replace(f"\n{section}:\n", f"\n{section}:\n{lines}", 1), encoding="utf-8")


def _embedded_etcd_config(data_dir: Path, client_port: int) -> None:
    """Give the embedded etcd its own ports.

    The template's ``etcd_port`` only tells Milvus where to *connect*; without a config file the
    embedded etcd *listens* on etcd's defaults (2379, peer 2380), so a second server on the
    machine would fail. ``etcd.config.path`` (an etcd embed.Config YAML) fixes both ports.
    """
    peer = free_port()
    etcd = data_dir / "configs" / "etcd.yaml"
    etcd.write_text(
        "name: cbir-milvus\n"
        f"listen-client-urls: http://127.0.0.1:{client_port}\n"
        f"advertise-client-urls: http://127.0.0.1:{client_port}\n"
        f"listen-peer-urls: http://127.0.0.1:{peer}\n"
        f"initial-advertise-peer-urls: http://127.0.0.1:{peer}\n"
        f"initial-cluster: cbir-milvus=http://127.0.0.1:{peer}\n", encoding="utf-8")
    yaml = data_dir / "configs" / "milvus.yaml"
    text = yaml.read_text(encoding="utf-8")
    text = text.replace("\netcd:\n", f"\netcd:\n  config:\n    path: {etcd}\n", 1)
    text = text.replace("endpoints: localhost:", "endpoints: 127.0.0.1:", 1)
    yaml.write_text(text, encoding="utf-8")


def start_milvus(data_dir: Path, port: int | None = None, timeout: float = 120.0,
                 config: dict[str, object] | None = None, fast_load: bool = True) -> MilvusProcess:
    """Start Milvus standalone with its data in ``data_dir``; return once /healthz says OK.

    ``config``: milvus.yaml settings (default TEST_CONFIG); ``fast_load``: shorten the query
    coordinator's loops (FAST_LOAD). Raises RuntimeError (with the log's tail) when the
    package is missing, the process dies, or it is not healthy within ``timeout`` seconds.
    """
    try:
        import milvus
    except ImportError as e:
        raise RuntimeError("the 'milvus' package (a Milvus standalone server) is not installed: "
                           "pip install 'milvus>=2.3,<2.4'") from e
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    # every port from the OS's ephemeral range, not the package's scan upward from the defaults
    # (2379, 19530, ...): two servers starting at once would both pick the same first free one
    ports = {key: free_port() for key in _PORT_KEYS}
    cfg = milvus.MilvusServerConfig(data_dir=str(data_dir), **{**ports, "proxy_port": port})
    for key, value in (TEST_CONFIG if config is None else config).items():
        cfg.set(key, value)
    cfg.resolve()  # binds each port to check it is free, writes configs/milvus.yaml
    _embedded_etcd_config(data_dir, int(cfg.get("etcd_port")))
    _add_keys(data_dir / "configs" / "milvus.yaml", "queryCoord", FAST_LOAD if fast_load else {})
    bin_dir = binary_dir()
    metrics_port = free_port()
    env = {**os.environ, "DEPLOY_MODE": "STANDALONE", "METRICS_PORT": str(metrics_port),
           "MILVUS_RUN_DIR": str(data_dir / "run"),
           "LD_LIBRARY_PATH": f"{bin_dir}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    log = data_dir / "logs" / "milvus-stdout.log"
    out = open(log, "w", encoding="utf-8")  # noqa: SIM115  (closed by stop())
    # -alias: the pid file is /run/milvus/standalone-<alias>.pid (flock'ed), one per server
    proc = subprocess.Popen([str(bin_dir / "milvus"), "run", "standalone", f"-alias=cbir{port}"],
                            cwd=data_dir, env=env,
                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    server = MilvusProcess(uri=f"http://127.0.0.1:{port}", port=port,
                           health_url=f"http://127.0.0.1:{metrics_port}/healthz",
                           data_dir=data_dir, proc=proc, log=log, _files=[out])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            server.stop()
            raise RuntimeError(f"Milvus exited with code {proc.returncode} while starting; "
                               f"log {log}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(server.health_url, timeout=2) as resp:
                if b"OK" in resp.read():
                    return server
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"Milvus was not healthy within {timeout:.0f} s; log {log}:\n{server.log_tail()}")


if __name__ == "__main__":  # python tests/milvus_server.py DIR: run a server until Ctrl-C
    import sys
    import tempfile

    d = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="milvus-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # run the finally below
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    t0 = time.monotonic()
    srv = start_milvus(d)
    print(f"{srv.uri} healthy after {time.monotonic() - t0:.1f} s (data {d}, pid {srv.proc.pid})", flush=True)
    try:
        srv.proc.wait()
    finally:
        srv.stop()
