"""Datasets that download themselves: CIFAR-10 (binary release) and MNIST.

    folder = ensure_dataset('CIFAR10')            # ~/.cache/score-sde/cifar10, fetched once
    folder = ensure_dataset('MNIST', data_dir='/data')

Each file comes from its canonical public location (mirrors tried in order), is checked against
its published MD5 before anything is kept, and is put in place atomically: downloads and
extraction happen in a temporary folder next to the target, and only complete, verified files
are renamed into it. A failure (offline, checksum mismatch, a bad archive) removes the
temporary folder and raises `DownloadError` saying which file to fetch by hand and where to
put it (the temporary folder of a download that was killed is removed by the next call on this
host); a file put there by hand is verified and used on the next run, without the network.
A second run finds the files in place and does not touch the network.

CelebA(-HQ), FFHQ and LSUN cannot be downloaded freely (licence or terms of use); their loaders
keep asking for the files (training/data.py).
"""

import hashlib
import os
import re
import shutil
import socket
import tarfile
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

CACHE_NAME = 'score-sde'
_CHUNK = 1 << 20


def default_cache_dir():
    """$XDG_CACHE_HOME/score-sde, else ~/.cache/score-sde."""
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(base) / CACHE_NAME


class DownloadError(OSError):
    """A dataset could not be fetched or verified; the message says what to put where."""


@dataclass(frozen=True)
class RemoteFile:
    """One published file: its name, MD5 and the URLs it is served from (tried in order)."""
    filename: str
    md5: str
    urls: tuple


@dataclass(frozen=True)
class DatasetSource:
    """A downloadable dataset: `files` land in `<data_dir>/<folder>/`; tar archives among them
    are extracted there and removed; `expected` (relative paths) exist when it is complete."""
    name: str
    folder: str
    files: tuple
    expected: tuple
    homepage: str
    hint: str = ''


_CIFAR_BIN = tuple(f'cifar-10-batches-bin/{n}' for n in
                   [f'data_batch_{i}.bin' for i in range(1, 6)] + ['test_batch.bin'])
_MNIST_FILES = (('train-images-idx3-ubyte.gz', 'f68b3c2dcbeaaa9fbdd348bbdeb94873'),
                ('train-labels-idx1-ubyte.gz', 'd53e105ee54ea40749a09fcbcd1e9432'),
                ('t10k-images-idx3-ubyte.gz', '9fb629c4189551a2d022fa330f9573f3'),
                ('t10k-labels-idx1-ubyte.gz', 'ec29112dd5afa0611ce80d1b7f02629c'))
_MNIST_MIRRORS = ('https://ossci-datasets.s3.amazonaws.com/mnist/',
                  'http://yann.lecun.com/exdb/mnist/')

SOURCES = {
    # The binary release (the python release is pickled and never read by this toolkit);
    # MD5 as published on the dataset's page.
    'CIFAR10': DatasetSource(
        name='CIFAR10', folder='cifar10',
        files=(RemoteFile('cifar-10-binary.tar.gz', 'c32a1d4ab5d03f1284b67883e8d87530',
                          ('https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz',)),),
        expected=_CIFAR_BIN, homepage='https://www.cs.toronto.edu/~kriz/cifar.html',
        hint="It is the CIFAR-10 binary version; the python version is pickled and never read "
             "here. An extracted copy works too: "
             "<data_dir>/cifar10/cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin."),
    # The four idx files, kept gzipped (training/data.py reads .gz directly).
    'MNIST': DatasetSource(
        name='MNIST', folder='mnist',
        files=tuple(RemoteFile(n, md5, tuple(m + n for m in _MNIST_MIRRORS))
                    for n, md5 in _MNIST_FILES),
        expected=tuple(n for n, _ in _MNIST_FILES), homepage='http://yann.lecun.com/exdb/mnist/'),
}


def downloadable():
    """Names of the datasets `ensure_dataset` can fetch."""
    return sorted(SOURCES)


def _source(name):
    key = str(name).upper().replace('-', '').replace('_', '')
    if key not in SOURCES:
        raise ValueError(f"{name!r} cannot be downloaded automatically; downloadable: "
                         f"{downloadable()}")
    return SOURCES[key]


def is_complete(folder, source):
    return all((Path(folder) / rel).is_file() for rel in source.expected)


def _md5(path):
    h = hashlib.md5()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(_CHUNK), b''):
            h.update(block)
    return h.hexdigest()


def _fetch(url, dest, progress, timeout):
    """Download `url` to `dest` with a progress bar; returns the MD5 of what was written."""
    from tqdm.auto import tqdm
    h = hashlib.md5()
    with urllib.request.urlopen(url, timeout=timeout) as r, open(dest, 'wb') as out:
        total = r.headers.get('Content-Length')
        with tqdm(total=int(total) if total else None, unit='B', unit_scale=True,
                  unit_divisor=1024, desc=os.path.basename(dest), disable=not progress,
                  leave=False) as bar:
            for block in iter(lambda: r.read(_CHUNK), b''):
                out.write(block)
                h.update(block)
                bar.update(len(block))
    return h.hexdigest()


def _by_hand(source, rf, target):
    return (f"Download {rf.filename} (MD5 {rf.md5}) by hand from {rf.urls[0]} (see "
            f"{source.homepage}) and put it at {target / rf.filename}; the next run verifies "
            f"and {'extracts' if _is_tar(rf.filename) else 'uses'} it without the network."
            + (f" {source.hint}" if source.hint else ''))


def _is_tar(filename):
    return filename.endswith(('.tar', '.tar.gz', '.tgz'))


def _obtain(source, rf, target, staging, urls, md5, progress, timeout):
    """The verified file `rf` in `staging`: from `target` when put there by hand, else
    downloaded. Raises DownloadError."""
    dest = staging / rf.filename
    by_hand = target / rf.filename
    if by_hand.is_file():
        got = _md5(by_hand)
        if got != md5:
            raise DownloadError(f"{source.name}: {by_hand} has MD5 {got}, not the published "
                                f"{md5}: it is corrupt or another file. Remove it; "
                                + _by_hand(source, rf, target))
        shutil.copyfile(by_hand, dest)
        return dest
    failures = []
    for url in urls:
        try:
            got = _fetch(url, dest, progress, timeout)
        except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as e:
            reason = getattr(e, 'reason', None) or e
            failures.append(f"{url}: {reason}")
            continue
        if got != md5:
            raise DownloadError(f"{source.name}: {rf.filename} downloaded from {url} has MD5 "
                                f"{got}, not the published {md5}; nothing was kept. "
                                + _by_hand(source, rf, target))
        return dest
    raise DownloadError(f"{source.name}: cannot download {rf.filename} (offline or unreachable: "
                        + '; '.join(failures) + "). " + _by_hand(source, rf, target))


def _safe_members(tar, archive):
    """The regular files and folders of `tar`, refusing absolute or '..' paths and links."""
    members = []
    for m in tar.getmembers():
        p = PurePosixPath(m.name)
        if p.is_absolute() or '..' in p.parts:
            raise DownloadError(f"{archive}: unsafe path {m.name!r} in the archive")
        if m.isfile() or m.isdir():
            members.append(m)
    return members


def _extract(archive, into):
    try:
        with tarfile.open(archive) as tar:
            members = _safe_members(tar, archive)
            if hasattr(tarfile, 'data_filter'):  # Python >= 3.12 / patched 3.8-3.11
                tar.extractall(into, members=members, filter='data')
            else:
                tar.extractall(into, members=members)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DownloadError(f"{archive.name}: cannot extract the archive ({e})") from None


def _staging_name(folder):
    """`.<folder>.partial-<pid>-<random>-<host>`: the temporary folder of one download."""
    return f'.{folder}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}-{socket.gethostname()}'


def remove_stale_partials(root, folder):
    """Delete the temporary folders `.<folder>.partial-*` that downloads killed on this host
    left in `root` (their process is gone); those of running downloads and of other hosts are
    kept. Returns the removed paths."""
    from sde_base.fileio import pid_alive
    pattern = re.compile(rf'\.{re.escape(folder)}\.partial-(\d+)-[0-9a-f]{{8}}(?:-(.+))?')
    removed = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m is None or not entry.is_dir(follow_symlinks=False):
            continue
        host = m.group(2)  # absent in names written before the host was recorded
        if (host is None or host == socket.gethostname()) and not pid_alive(int(m.group(1))):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
    return removed


def ensure_dataset(name, data_dir=None, *, url=None, md5=None, progress=True, timeout=60):
    """The folder `<data_dir>/<name's folder>` holding dataset `name` ('CIFAR10' or 'MNIST'),
    downloaded, verified and extracted first when incomplete. `data_dir` defaults to
    `default_cache_dir()`. `url`: a base URL to fetch the files from instead of the canonical
    mirrors (`<url>/<filename>`); `md5`: {filename: md5} replacing the published checksums
    (for a mirror of modified files, or tests). Raises DownloadError (which file, where)."""
    source = _source(name)
    root = Path(data_dir) if data_dir is not None else default_cache_dir()
    target = root / source.folder
    remove_stale_partials(root, source.folder)
    if is_complete(target, source):
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = root / _staging_name(source.folder)
    staging.mkdir()
    try:
        content = staging / 'content'
        content.mkdir()
        for rf in source.files:
            urls = (url.rstrip('/') + '/' + rf.filename,) if url else rf.urls
            digest = (md5 or {}).get(rf.filename, rf.md5)
            path = _obtain(source, rf, target, staging, urls, digest, progress, timeout)
            if _is_tar(rf.filename):
                _extract(path, content)
            else:
                os.replace(path, content / rf.filename)
        missing = [rel for rel in source.expected if not (content / rel).is_file()]
        if missing:
            raise DownloadError(f"{source.name}: the downloaded files lack {', '.join(missing)}; "
                                f"nothing was kept. " + _by_hand(source, source.files[0], target))
        # Move each complete top-level entry into place (a rename each: atomic).
        target.mkdir(exist_ok=True)
        for entry in sorted(content.iterdir()):
            dest = target / entry.name
            if dest.is_dir():  # an incomplete earlier copy: replace it whole
                shutil.rmtree(dest)
            os.replace(entry, dest)
        for rf in source.files:  # an archive put there by hand has served its purpose
            if _is_tar(rf.filename) and (target / rf.filename).is_file():
                os.remove(target / rf.filename)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not is_complete(target, source):
        raise DownloadError(f"{source.name}: {target} is still incomplete after the download")
    return target
