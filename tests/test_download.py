"""Datasets that download themselves (training/download.py), against a local HTTP server.

The server (http.server on 127.0.0.1, in a thread) serves small archives with the real ones'
layout: `cifar-10-binary.tar.gz` holding `cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin`
(records of 1 label byte + 3x32x32 pixels) and the four gzipped MNIST idx files. Their MD5s
replace the published ones (the `md5=` override), exactly as the real checksums are checked.
"""

import dataclasses
import gzip
import hashlib
import http.server
import io
import socket
import tarfile
import threading

import numpy as np
import pytest
from ml_collections import ConfigDict

from training import download
from training.data import DatasetNotFoundError, load_dataset
from training.download import DownloadError, ensure_dataset

CIFAR = 'cifar-10-binary.tar.gz'


def _cifar_archive(rng, records=(2, 2, 2, 2, 2, 3)):
    """A small CIFAR-10 binary tarball: (bytes, {member: records array})."""
    buf, content = io.BytesIO(), {}
    names = [f'data_batch_{i}.bin' for i in range(1, 6)] + ['test_batch.bin']
    with tarfile.open(fileobj=buf, mode='w:gz') as tar:
        for name, n in zip(names, records):
            rec = rng.integers(0, 256, size=(n, 3073), dtype=np.uint8)
            rec[:, 0] %= 10
            content[name] = rec
            _add(tar, f'cifar-10-batches-bin/{name}', rec.tobytes())
        _add(tar, 'cifar-10-batches-bin/batches.meta.txt', b'airplane\nautomobile\n')
    return buf.getvalue(), content


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _idx(array, code):
    head = bytes([0, 0, code, array.ndim]) + b''.join(d.to_bytes(4, 'big') for d in array.shape)
    return gzip.compress(head + array.tobytes())


def _mnist_files(rng):
    files = {}
    for prefix, n in (('train', 4), ('t10k', 3)):
        files[f'{prefix}-images-idx3-ubyte.gz'] = _idx(
            rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), 0x08)
        files[f'{prefix}-labels-idx1-ubyte.gz'] = _idx(
            rng.integers(0, 10, size=(n,), dtype=np.uint8), 0x08)
    return files


def _md5(data):
    return hashlib.md5(data).hexdigest()


class _Server:
    """Serves `files` ({name: bytes}) at http://127.0.0.1:<port>/<name>, counting requests."""

    def __init__(self):
        self.files, self.requests = {}, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                name = self.path.lstrip('/')
                server.requests.append(name)
                data = server.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header('Content-Length', str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _closed_port_url():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    return f'http://127.0.0.1:{port}'


def _leftovers(root):
    """Anything under `root` that a failed download must not leave behind."""
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def _cfg(dataset, size, channels):
    c = ConfigDict()
    c.data = ConfigDict(dict(dataset=dataset, image_size=size, num_channels=channels,
                             centered=False, random_flip=False, uniform_dequantization=False))
    return c


def _point_at(monkeypatch, name, server, md5s):
    """Make the registered source of `name` download from the local server with its MD5s."""
    src = download.SOURCES[name]
    files = tuple(dataclasses.replace(rf, urls=(f'{server.url}/{rf.filename}',),
                                      md5=md5s[rf.filename]) for rf in src.files)
    monkeypatch.setitem(download.SOURCES, name, dataclasses.replace(src, files=files))


def test_cifar10_first_run_downloads_second_uses_cache(tmp_path, server, monkeypatch):
    data, content = _cifar_archive(np.random.default_rng(0))
    server.files[CIFAR] = data
    _point_at(monkeypatch, 'CIFAR10', server, {CIFAR: _md5(data)})

    ds = load_dataset(_cfg('CIFAR10', 32, 3), 'test', data_dir=tmp_path)
    assert server.requests == [CIFAR]
    rec = content['test_batch.bin']
    assert len(ds) == 3 and ds.labels.tolist() == rec[:, 0].tolist()
    assert (ds.images.reshape(3, -1).numpy() == rec[:, 1:]).all()
    assert _leftovers(tmp_path) == ['cifar10']  # no temporary folder, no archive kept
    assert _leftovers(tmp_path / 'cifar10') == ['cifar-10-batches-bin']

    train = load_dataset(_cfg('CIFAR10', 32, 3), 'train', data_dir=tmp_path)
    assert len(train) == 10 and server.requests == [CIFAR]  # from the cache
    server.close()
    assert len(load_dataset(_cfg('CIFAR10', 32, 3), 'test', data_dir=tmp_path)) == 3


def test_mnist_downloads_each_file_once(tmp_path, server, monkeypatch):
    files = _mnist_files(np.random.default_rng(1))
    server.files.update(files)
    _point_at(monkeypatch, 'MNIST', server, {n: _md5(b) for n, b in files.items()})
    test = load_dataset(_cfg('MNIST', 28, 1), 'test', data_dir=tmp_path)
    train = load_dataset(_cfg('MNIST', 28, 1), 'train', data_dir=tmp_path)
    assert (len(train), len(test)) == (4, 3)
    assert sorted(server.requests) == sorted(files)
    assert _leftovers(tmp_path / 'mnist') == sorted(files)


def test_corrupted_download_is_rejected_and_leaves_nothing(tmp_path, server):
    data, _ = _cifar_archive(np.random.default_rng(2))
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF
    server.files[CIFAR] = bytes(bad)
    with pytest.raises(DownloadError, match=r"MD5 [0-9a-f]{32}, not the published .*put it at "
                                            r".*cifar10/cifar-10-binary\.tar\.gz"):
        ensure_dataset('CIFAR10', tmp_path, url=server.url, md5={CIFAR: _md5(data)},
                       progress=False)
    assert _leftovers(tmp_path) == []

    # An archive that passes the checksum but breaks while extracting: nothing half-extracted.
    truncated = data[: len(data) // 2]
    server.files[CIFAR] = truncated
    with pytest.raises(DownloadError, match='cannot extract'):
        ensure_dataset('CIFAR10', tmp_path, url=server.url, md5={CIFAR: _md5(truncated)},
                       progress=False)
    assert _leftovers(tmp_path) == []


def test_unreachable_server_says_which_file_to_put_where(tmp_path, monkeypatch):
    url = _closed_port_url()
    data, content = _cifar_archive(np.random.default_rng(3))
    monkeypatch.setitem(download.SOURCES, 'CIFAR10', dataclasses.replace(
        download.SOURCES['CIFAR10'], files=(download.RemoteFile(CIFAR, _md5(data),
                                                                (f'{url}/{CIFAR}',)),)))
    with pytest.raises(DatasetNotFoundError) as e:  # what the data loader raises
        load_dataset(_cfg('CIFAR10', 32, 3), 'test', data_dir=tmp_path)
    msg = str(e.value)
    target = tmp_path / 'cifar10' / CIFAR
    assert 'cannot download cifar-10-binary.tar.gz' in msg and 'offline or unreachable' in msg
    assert f'put it at {target}' in msg and 'binary version' in msg
    assert _leftovers(tmp_path) == []

    # Following the message: the file put there by hand is verified and extracted, offline.
    target.parent.mkdir(parents=True)
    target.write_bytes(data)
    folder = ensure_dataset('CIFAR10', tmp_path, progress=False)
    assert _leftovers(folder) == ['cifar-10-batches-bin']
    assert (folder / 'cifar-10-batches-bin' / 'test_batch.bin').read_bytes() == \
        content['test_batch.bin'].tobytes()


def test_wrong_file_put_by_hand_is_named(tmp_path):
    target = tmp_path / 'cifar10' / CIFAR
    target.parent.mkdir(parents=True)
    target.write_bytes(b'not the archive')
    with pytest.raises(DownloadError, match=r"cifar-10-binary\.tar\.gz has MD5 .* not the "
                                            r"published c32a1d4ab5d03f1284b67883e8d87530"):
        ensure_dataset('CIFAR10', tmp_path, url=_closed_port_url(), progress=False)


def test_only_cifar10_and_mnist_download():
    assert download.downloadable() == ['CIFAR10', 'MNIST']
    with pytest.raises(ValueError, match='cannot be downloaded automatically'):
        ensure_dataset('CelebA')
    with pytest.raises(NotImplementedError, match='FOLDER'):
        load_dataset(_cfg('LSUN', 32, 3), 'train')


def test_a_killed_download_leaves_nothing_after_the_next_run(tmp_path, server, monkeypatch):
    import os
    import socket as sock
    import subprocess
    import sys
    data, _ = _cifar_archive(np.random.default_rng(3))
    server.files[CIFAR] = data
    _point_at(monkeypatch, 'CIFAR10', server, {CIFAR: _md5(data)})
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                          capture_output=True, text=True, check=True)
    pid = int(dead.stdout)  # a process that has ended
    host = sock.gethostname()
    killed = [tmp_path / f'.cifar10.partial-{pid}-0123abcd-{host}',
              tmp_path / f'.cifar10.partial-{pid}-89abcdef']  # named before hosts were recorded
    running = tmp_path / f'.cifar10.partial-{os.getpid()}-00000000-{host}'
    elsewhere = tmp_path / f'.cifar10.partial-{pid}-11111111-another-host.example'
    for d in killed + [running, elsewhere]:
        (d / 'content').mkdir(parents=True)
        (d / 'cifar-10-binary.tar.gz').write_bytes(b'half')
    ensure_dataset('CIFAR10', data_dir=tmp_path, progress=False)
    assert _leftovers(tmp_path) == sorted(['cifar10', running.name, elsewhere.name])
    killed[0].mkdir()  # killed after a complete download: the next run cleans it too
    ensure_dataset('CIFAR10', data_dir=tmp_path, progress=False)
    assert _leftovers(tmp_path) == sorted(['cifar10', running.name, elsewhere.name])
