"""File-tree work on a rootfs: shifting ownership into a user namespace's range, and
applying an overlayfs upper layer onto a copy of its lower layer.

Plain file-system calls, no btrfs: extents are shared (FICLONE) when the filesystem
can, copied otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import struct
from pathlib import Path

__all__ = ["apply_upper", "shift_ownership"]

_FICLONE = 0x40049409  # _IOW(0x94, 9, int) from linux/fs.h

_CAPS = "security.capability"
_CAPS_V2, _CAPS_V3 = 0x02000000, 0x03000000


def _shift_caps(value: bytes, shift: int) -> bytes:
    """Rewrite a file-capability xattr as v3 owned by the shifted root.

    chown drops security.capability; a v2 value set back as-is would only be honoured
    for host root, so it is rewritten as v3 with rootid = shift (the uid tenant root
    has on the host), which the kernel honours inside the tenant's user namespace.
    """
    magic = struct.unpack_from("<I", value)[0]
    body = value[4:20]
    rootid = struct.unpack_from("<I", value, 20)[0] if magic & 0xFF000000 == _CAPS_V3 else 0
    return (
        struct.pack("<I", _CAPS_V3 | (magic & 0x00FFFFFF))
        + body
        + struct.pack("<I", max(0, rootid + shift))
    )


def _shift_one(path: str, st: os.stat_result, shift: int) -> None:
    caps = None
    if stat.S_ISREG(st.st_mode):
        with contextlib.suppress(OSError):
            caps = os.getxattr(path, _CAPS, follow_symlinks=False)
    os.lchown(path, st.st_uid + shift, st.st_gid + shift)
    if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        # chown cleared setuid/setgid (for root too); put them back.
        os.chmod(path, stat.S_IMODE(st.st_mode))
    if caps is not None and len(caps) >= 20:
        os.setxattr(path, _CAPS, _shift_caps(caps, shift), follow_symlinks=False)


def shift_ownership(root: Path, shift: int) -> None:
    """Add `shift` to the uid and gid of every entry under `root`, `root` included.

    Symlinks are changed themselves (lchown), never followed; hard links are shifted
    once; setuid/setgid bits and file capabilities survive the chown.
    """
    if shift == 0:
        return
    seen: set[tuple[int, int]] = set()

    def one(path: str) -> None:
        st = os.lstat(path)
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            if (st.st_dev, st.st_ino) in seen:
                return
            seen.add((st.st_dev, st.st_ino))
        _shift_one(path, st, shift)

    # os.walk lists symlinks to directories (/bin -> usr/bin) in `dirs`: both lists
    # are shifted, and the walk does not follow them.
    for dirpath, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            one(os.path.join(dirpath, name))
    one(str(root))


_OVERLAY_XATTR = "trusted.overlay."


def _remove(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _shifted(host_id: int, shift: int) -> int:
    # An id outside the tenant's range (none should be) becomes "nobody", never root.
    new = host_id + shift
    return new if new >= 0 else 65534


def _copy_meta(src: str, dst: str, st: os.stat_result, shift: int = 0) -> None:
    """Owner (plus `shift`), mode, xattrs (not overlayfs' own) and times of `src`
    onto `dst`."""
    link = stat.S_ISLNK(st.st_mode)
    os.lchown(dst, _shifted(st.st_uid, shift), _shifted(st.st_gid, shift))
    if not link:
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    for name in os.listxattr(src, follow_symlinks=False):
        if name.startswith(_OVERLAY_XATTR):
            continue
        try:
            value = os.getxattr(src, name, follow_symlinks=False)
            if name == _CAPS and shift and len(value) >= 24:
                value = _shift_caps(value, shift)
            os.setxattr(dst, name, value, follow_symlinks=False)
        except OSError:
            if not link:  # user.* xattrs cannot exist on symlinks; nothing lost
                raise
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _copy_file(src: str, dst: str) -> None:
    """Copy a regular file, sharing its extents (reflink) when the filesystem can."""
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOTTY):
                raise
            shutil.copyfileobj(fin, fout, 1 << 20)


def apply_upper(upper: Path, target: Path, shift: int = 0) -> None:
    """Make `target` (a copy of the lower layer) look like the overlay `upper` over it,
    adding `shift` to the owner of everything copied (an upper written through a user
    namespace holds host ids; the lower holds the ids its tenants see).

    Whiteouts (0:0 character devices) delete the path; opaque directories replace
    the directory's contents; everything else is copied over with its owner, mode,
    xattrs and times. Assumes the overlay was mounted with metacopy=off and
    redirect_dir=off, so every upper file holds its full data and no directory was
    renamed by redirect.
    """
    links: dict[tuple[int, int], str] = {}

    def walk(src_dir: str, dst_dir: str) -> None:
        with os.scandir(src_dir) as it:
            entries = list(it)
        for entry in entries:
            src, dst = entry.path, os.path.join(dst_dir, entry.name)
            st = entry.stat(follow_symlinks=False)
            mode = st.st_mode
            if stat.S_ISCHR(mode) and st.st_rdev == 0:
                _remove(dst)
            elif stat.S_ISDIR(mode):
                opaque = _xattr(src, _OVERLAY_XATTR + "opaque") == b"y"
                if opaque or not _is_dir(dst):
                    _remove(dst)
                    os.mkdir(dst)
                walk(src, dst)
                _copy_meta(src, dst, st, shift)
            else:
                _remove(dst)
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in links:
                    os.link(links[key], dst)
                    continue
                if stat.S_ISREG(mode):
                    _copy_file(src, dst)
                elif stat.S_ISLNK(mode):
                    os.symlink(os.readlink(src), dst)
                else:
                    os.mknod(dst, mode, st.st_rdev)
                links[key] = dst
                _copy_meta(src, dst, st, shift)

    walk(str(upper), str(target))
    _copy_meta(str(upper), str(target), os.lstat(upper), shift)


def _xattr(path: str, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


def _is_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False
