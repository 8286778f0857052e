"""mountinfo parsing: octal escapes, optional fields before the separator, bad lines."""

from pathlib import Path

from hoody.mountinfo import Mount, mounts, parse

TEXT = (
    "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
    "40 22 0:35 / /var/lib/hoody/with\\040space rw master:3 shared:9 - btrfs /dev/loop\\0401 rw\n"
    "41 22 0:36 / /run/tab\\011and\\134slash rw - tmpfs tmpfs rw\n"
    "garbage\n"
    "42 22 0:37 / /no/separator rw\n"
)


def test_parse_unescapes_and_skips_what_is_not_a_mount() -> None:
    assert parse(TEXT) == [
        Mount(Path("/"), "ext4", "/dev/vda"),
        Mount(Path("/var/lib/hoody/with space"), "btrfs", "/dev/loop 1"),
        Mount(Path("/run/tab\tand\\slash"), "tmpfs", "tmpfs"),
    ]


def test_this_process_sees_its_root_and_proc() -> None:
    targets = {m.target for m in mounts()}
    assert Path("/") in targets and Path("/proc") in targets
