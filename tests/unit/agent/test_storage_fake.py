from __future__ import annotations

from pathlib import Path

import pytest

from hoody.agent.storage import TemplateVersionRef
from hoody.agent.storage.fake import FakeStorage
from tests.contract.storage import SHIFT, Owner, StorageContract, Userns, populate


class TestFakeStorage(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> FakeStorage:
        return FakeStorage(tmp_path / "storage")

    @pytest.fixture
    def owner(self, storage: FakeStorage) -> Owner:
        return storage.owner

    @pytest.fixture
    def userns(self) -> Userns:
        return lambda base: -1  # the fake records ranges; it makes no namespaces


def test_usage_counts_bytes_that_differ_from_the_template(tmp_path: Path) -> None:
    storage = FakeStorage(tmp_path)
    ref = TemplateVersionRef("base", 1)
    storage.create_template_version(ref, populate, SHIFT)
    storage.create_tenant("t1", ref, "overlay", 64, SHIFT)
    rootfs = storage.mount_tenant("t1", -1)
    assert storage.tenant_usage("t1") == 0
    (rootfs / "blob").write_bytes(b"x" * 5000)
    (rootfs / "etc" / "hostname").write_text("longer hostname\n")
    assert storage.tenant_usage("t1") == 5000 + len("longer hostname\n")
