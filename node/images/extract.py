"""Safe layer extraction into a directory usable as an overlayfs lower layer.

Debian's Python 3.11.2 has no `tarfile` extraction filters, so every member is checked and
written here by hand:

* names: absolute paths, `..` components and paths more than MAX_DEPTH directories deep are rejected;
* parents: every directory on the way is lstat()ed; a symlink there is rejected, so nothing is ever
  written through a symlink (in-layer or escaping);
* files are created with O_NOFOLLOW|O_EXCL after removing whatever was there;
* hardlinks must name a file already extracted from this layer (no `..`, no absolute path);
* char/block devices are skipped and logged (a 0/0 char device is overlay's own whiteout: kept);
* whiteouts: `.wh.<name>` becomes a 0/0 char device `<name>`, `.wh..wh..opq` sets
  `trusted.overlay.opaque=y` on its directory — what overlayfs expects in a lower layer.

The uncompressed stream is hashed while reading, so the caller can check it against the diff_id.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import stat
import tarfile
from pathlib import Path
from typing import BinaryIO, Protocol

from node.images.errors import DigestMismatch, LayerRejected
from node.runtime.imagefs import OPAQUE_XATTR  # the overlay format is the runtime's: it mounts the layers
from orch.trees import remove_tree

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20
# Directories deep, as the path a member names: real images stay far below; far deeper trees only
# make trouble for whatever walks them later (the runtime reads /etc/passwd across the layers).
MAX_DEPTH = 256


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _HashingReader:
    """A read()-only stream that hashes everything read through it (the layer's diff_id)."""

    def __init__(self, inner: Readable) -> None:
        self._inner = inner
        self._hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self._hash.update(data)
        return data

    def drain(self) -> str:
        while self.read(_CHUNK):
            pass
        return "sha256:" + self._hash.hexdigest()


def open_layer_stream(raw: BinaryIO) -> Readable:
    """Decompress by magic bytes, not media type: docker-archive layers are plain tar whatever they claim."""
    magic = raw.read(4)
    raw.seek(0)
    if magic.startswith(_GZIP_MAGIC):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if magic == _ZSTD_MAGIC:
        import zstandard  # optional: only zstd layers need it

        return zstandard.ZstdDecompressor().stream_reader(raw)
    return raw


def extract_layer(blob: Path, dest: Path, digest: str, diff_id: str = "") -> str:
    """Unpack the layer `blob` into the empty directory `dest`; return its computed diff_id.

    Raises LayerRejected for an unsafe member, DigestMismatch when `diff_id` is given and differs.
    """
    with blob.open("rb") as raw:
        reader = _HashingReader(open_layer_stream(raw))
        writer = _Writer(dest, digest)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    writer.add(member, tar)
        except (tarfile.TarError, EOFError, OSError) as exc:
            if isinstance(exc, OSError) and exc.filename:
                raise
            raise LayerRejected(digest, "", f"not a valid (compressed) tar: {exc}") from exc
        writer.finish()
        computed = reader.drain()
    if diff_id and computed != diff_id:
        raise DigestMismatch(f"layer {digest}: uncompressed content hashes to {computed}, config says {diff_id}")
    return computed


class _Writer:
    def __init__(self, root: Path, digest: str) -> None:
        self.root = root
        self.digest = digest
        self.dirs: list[tuple[Path, tarfile.TarInfo]] = []  # modes/times applied last: a 0555 dir stays writable
        self.as_root = os.geteuid() == 0

    def reject(self, member: tarfile.TarInfo, why: str) -> LayerRejected:
        return LayerRejected(self.digest, member.name, why)

    def add(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        parts = self._clean(member.name, member)
        if not parts:
            return  # "." / "./": the layer root itself
        parent = self._parent(parts[:-1], member)
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parent, base, member)
        elif member.isdir():
            self._dir(parent / base, member)
        elif member.isreg():
            self._file(parent / base, member, tar)
        elif member.issym():
            _remove(parent / base)
            os.symlink(member.linkname, parent / base)
            self._meta(parent / base, member)
        elif member.islnk():
            self._hardlink(parent / base, member)
        elif member.ischr() and member.devmajor == 0 and member.devminor == 0:
            _remove(parent / base)
            os.mknod(parent / base, stat.S_IFCHR, os.makedev(0, 0))
        elif member.isfifo():
            _remove(parent / base)
            os.mkfifo(parent / base, 0o600)
            self._meta(parent / base, member)
        else:
            log.warning(
                "layer %s: skipping %r (device nodes and other special files are not extracted)",
                self.digest,
                member.name,
            )

    def finish(self) -> None:
        for path, member in reversed(self.dirs):  # children before parents, like tarfile
            self._meta(path, member)

    def _clean(self, name: str, member: tarfile.TarInfo) -> list[str]:
        if name.startswith("/"):
            raise self.reject(member, "absolute path")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self.reject(member, "path traversal (..)")
        if len(parts) > MAX_DEPTH:
            raise self.reject(member, f"more than {MAX_DEPTH} directories deep ({len(parts)})")
        return parts

    def _parent(self, parts: list[str], member: tarfile.TarInfo) -> Path:
        """The member's directory, created as needed; refuses to pass through a symlink or a file."""
        path = self.root
        for part in parts:
            path = path / part
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                os.mkdir(path, 0o755)
                continue
            if stat.S_ISLNK(st.st_mode):
                raise self.reject(member, f"path goes through the symlink {part!r}")
            if not stat.S_ISDIR(st.st_mode):
                raise self.reject(member, f"parent {part!r} is not a directory")
        return path

    def _whiteout(self, parent: Path, base: str, member: tarfile.TarInfo) -> None:
        if base == OPAQUE_MARKER:
            os.setxattr(parent, OPAQUE_XATTR, b"y")
            return
        name = base[len(WHITEOUT_PREFIX) :]
        if name in ("", ".", ".."):
            raise self.reject(member, "whiteout of an invalid name")
        _remove(parent / name)
        os.mknod(parent / name, stat.S_IFCHR, os.makedev(0, 0))

    def _dir(self, path: Path, member: tarfile.TarInfo) -> None:
        if not path.is_dir() or path.is_symlink():
            _remove(path)
            os.mkdir(path, 0o700)
        self.dirs.append((path, member))

    def _file(self, path: Path, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        _remove(path)
        src = tar.extractfile(member)
        assert src is not None  # isreg() members always have a body
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(src, out, _CHUNK)
        self._meta(path, member)

    def _hardlink(self, path: Path, member: tarfile.TarInfo) -> None:
        target_parts = self._clean(member.linkname, member)
        if not target_parts:
            raise self.reject(member, "hardlink to the layer root")
        source = self._parent(target_parts[:-1], member) / target_parts[-1]
        try:
            st = os.lstat(source)
        except FileNotFoundError:
            raise self.reject(member, f"hardlink target {member.linkname!r} is not in this layer") from None
        if stat.S_ISDIR(st.st_mode):
            raise self.reject(member, "hardlink to a directory")
        _remove(path)
        os.link(source, path, follow_symlinks=False)

    def _meta(self, path: Path, member: tarfile.TarInfo) -> None:
        if self.as_root:
            os.lchown(path, member.uid, member.gid)
        if not member.issym():
            os.chmod(path, member.mode & 0o7777)
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)


def _remove(path: Path) -> None:
    remove_tree(path)  # a directory the layer made: whatever its depth
