"""Tests for the local Schema Registry launcher's pure parts (the real registry is exercised by
tests/integration/test_registry.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tools.localregistry import (
    CCOMPAT_PATH,
    LocalRegistry,
    RegistryDistError,
    RegistryStartError,
    ensure_dist,
    find_java,
    java_candidates,
    parse_java_version,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('IMPLEMENTOR="Eclipse Adoptium"\nJAVA_VERSION="25.0.3"\n', 25),
        ('JAVA_VERSION="17.0.15"\n', 17),
        ('JAVA_VERSION="21"\n', 21),
        ('JAVA_VERSION="1.8.0_412"\n', 8),
        ("    java.specification.version = 21\n    java.vendor = x\n", 21),
        ("    java.specification.version = 1.8\n", 8),
        ("no version here", None),
    ],
)
def test_parse_java_version(text: str, expected: int | None) -> None:
    assert parse_java_version(text) == expected


def fake_jdk(home: Path, version: str) -> Path:
    """A JDK directory whose ``release`` file names ``version`` (the java binary never runs)."""
    java = home / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text("#!/bin/sh\nexit 1\n")
    java.chmod(java.stat().st_mode | stat.S_IXUSR)
    (home / "release").write_text(f'JAVA_VERSION="{version}"\n')
    return java


def test_find_java_takes_an_explicit_home_first(tmp_path: Path) -> None:
    jvm = tmp_path / "jvm"
    fake_jdk(jvm / "newest", "25.0.1")
    chosen = fake_jdk(tmp_path / "chosen", "21.0.4")

    env = {"REGISTRY_JAVA_HOME": str(tmp_path / "chosen"), "PATH": ""}

    assert find_java(env=env, jvm_dirs=[jvm]) == str(chosen)


def test_find_java_skips_an_old_java_home_for_the_newest_jdk(tmp_path: Path) -> None:
    jvm = tmp_path / "jvm"
    fake_jdk(jvm / "java-17", "17.0.15")
    newest = fake_jdk(jvm / "temurin-25", "25.0.3")
    fake_jdk(jvm / "temurin-21", "21.0.2")

    env = {"JAVA_HOME": str(jvm / "java-17"), "PATH": ""}

    assert find_java(env=env, jvm_dirs=[jvm]) == str(newest)


def test_find_java_names_what_it_found_when_none_is_new_enough(tmp_path: Path) -> None:
    jvm = tmp_path / "jvm"
    fake_jdk(jvm / "java-17", "17.0.15")

    with pytest.raises(RegistryStartError, match=r"Java 21\+.*java-17/bin/java \(17\)"):
        find_java(env={"PATH": ""}, jvm_dirs=[jvm])


def test_java_candidates_are_unique(tmp_path: Path) -> None:
    jvm = tmp_path / "jvm"
    java = fake_jdk(jvm / "a", "21")

    env = {"JAVA_HOME": str(jvm / "a"), "PATH": str(java.parent)}

    assert java_candidates(env, [jvm]) == [java]


def test_missing_distribution_outside_the_repo_is_not_fetched(tmp_path: Path) -> None:
    with pytest.raises(RegistryDistError, match=r"no quarkus-run\.jar"):
        ensure_dist(tmp_path)


def test_command_binds_loopback_with_in_memory_storage(tmp_path: Path) -> None:
    registry = LocalRegistry(work_dir=tmp_path, java="/opt/jdk/bin/java", dist_dir=tmp_path)
    registry.assign_ports()

    command = registry.java_command()

    assert command[0] == "/opt/jdk/bin/java"
    assert command[-2:] == ["-jar", str(tmp_path / "quarkus-run.jar")]
    assert "-Xmx256m" in command
    assert f"-Dquarkus.http.port={registry.port}" in command
    assert f"-Dquarkus.management.port={registry.management_port}" in command
    assert "-Dquarkus.http.host=127.0.0.1" in command
    assert "-Dquarkus.management.host=127.0.0.1" in command
    assert "-Dapicurio.storage.sql.kind=h2" in command
    assert "-Dapicurio.datasource.url=jdbc:h2:mem:registry" in command
    assert any(c.startswith("-XX:SharedArchiveFile=") for c in command)
    assert registry.port != registry.management_port
    assert registry.ccompat_url == f"http://127.0.0.1:{registry.port}{CCOMPAT_PATH}"


def test_url_needs_ports(tmp_path: Path) -> None:
    with pytest.raises(RegistryStartError, match="start"):
        _ = LocalRegistry(work_dir=tmp_path).url


def test_a_registry_that_exits_fails_with_its_log(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "quarkus-run.jar").write_text("not a jar")
    java = fake_jdk(tmp_path / "jdk", "21")
    java.write_text("#!/bin/sh\necho 'registry boot failed' >&2\nexit 3\n")
    registry = LocalRegistry(work_dir=tmp_path / "work", dist_dir=dist, java=str(java),
                             startup_timeout=30)

    with pytest.raises(RegistryStartError, match=r"(?s)exited with code 3.*registry boot failed"):
        registry.start()

    assert not registry.running
    assert os.path.exists(registry.log_path)
