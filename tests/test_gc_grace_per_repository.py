"""gc's grace period per repository: a repository replicated by a stratum 1 keeps superseded
objects longer than the stratum 1's snapshot interval, without changing the others."""

from __future__ import annotations

from runtime.maintenance.housekeeping import run_gc
from runtime.repository import Repository
from runtime.settings import RepositoryConfig, Settings


def test_repository_grace_overrides_the_global_one(tmp_path):
    settings = Settings(
        data_dir=tmp_path / "data", keys_dir=tmp_path / "keys", gc_grace_s=900,
        repositories='[{"fqrn": "replicated.example.org", "gc_grace_s": 7200},'
                     ' {"fqrn": "local.example.org"}]',
    )
    assert settings.repository("replicated.example.org").gc_grace_s == 7200
    for fqrn, expected in (("replicated.example.org", 7200), ("local.example.org", 900)):
        repo = Repository(settings.data_dir, settings.keys_dir, settings.repository(fqrn))
        repo.init()
        try:
            assert run_gc(repo, settings).grace_s == expected
        finally:
            repo.close()


def test_without_any_grace_configured_the_runtime_default_applies(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", keys_dir=tmp_path / "keys",
                        repositories="plain.example.org")
    repo = Repository(settings.data_dir, settings.keys_dir,
                      RepositoryConfig(fqrn="plain.example.org", ttl_s=60))
    repo.init()
    try:
        assert run_gc(repo, settings).grace_s == 2 * 60 + 300
    finally:
        repo.close()


def test_negative_grace_is_refused():
    import pydantic
    import pytest

    with pytest.raises(pydantic.ValidationError):
        RepositoryConfig(fqrn="x.example.org", gc_grace_s=-1)
