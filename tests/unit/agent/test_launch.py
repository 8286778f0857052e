"""Which mounts the runtime's launch namespace keeps (pure: mountinfo text in)."""

from __future__ import annotations

from pathlib import Path

from hoody.agent.runtime.launch import mounts_to_drop

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
24 23 0:25 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
25 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw
26 25 0:24 / /dev/pts rw,relatime - devpts devpts rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 0:30 / /run rw - tmpfs tmpfs rw
41 40 0:4 net:[4026532301] /run/netns/t1 rw - nsfs nsfs rw
42 27 7:0 / /var/lib/hoody/pool rw - btrfs /dev/loop0 rw
43 40 0:44 / /run/hoody/n1/tenants/t1/rootfs rw - overlay overlay rw
44 40 0:45 / /run/hoody/n1/lxcfs rw - fuse.lxcfs lxcfs rw
45 27 0:46 / /var/tmp/other\\040node/pool rw - btrfs /dev/loop1 rw
46 27 0:47 / /usr rw - ext4 /dev/vdb rw
47 46 0:48 / /usr/local/share rw - tmpfs tmpfs rw
48 27 0:49 / /mnt rw - tmpfs tmpfs rw
49 27 0:50 / /mnt rw - tmpfs tmpfs rw
"""

REACH = (Path("/run/hoody/n1/runc"), Path("/run/hoody/n1/bundles"), Path("/run/hoody/n1/lxcfs"))


def test_keeps_root_proc_sys_dev_and_what_the_runtime_reaches() -> None:
    drop = mounts_to_drop(MOUNTINFO, REACH)
    kept = {"/", "/proc", "/sys", "/sys/fs/cgroup/memory", "/dev", "/dev/pts", "/run"}
    kept |= {"/run/hoody/n1/lxcfs", "/usr"}
    assert not kept & {str(p) for p in drop}


def test_drops_tenants_netns_pins_pools_and_the_rest_deepest_first() -> None:
    drop = [str(p) for p in mounts_to_drop(MOUNTINFO, REACH)]
    assert sorted(drop) == sorted(
        [
            "/run/netns/t1",
            "/var/lib/hoody/pool",
            "/run/hoody/n1/tenants/t1/rootfs",
            "/var/tmp/other node/pool",  # octal escapes undone
            "/usr/local/share",
            "/mnt",
            "/mnt",  # mounted over twice: unmounted twice
        ]
    )
    depths = [len(Path(p).parts) for p in drop]
    assert depths == sorted(depths, reverse=True)
