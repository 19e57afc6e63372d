"""Unit tests of the offsets files of ``replay --export`` / ``--from-file`` and of the undo file
every ``replay --execute`` writes: the CSV layout of kafka-consumer-groups both ways, every
malformed line named, owner-only files. No network."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from consumer.ops.offsets_file import (
    OffsetsFileError,
    backup_path,
    parse_csv,
    read_offsets,
    render_csv,
    write_private,
)
from schemas.errors import UsageError


def test_render_is_kafka_consumer_groups_export_layout() -> None:
    assert render_csv("kyc_profile_audit", {2: 4, 0: 9, 1: 3}) == (
        "kyc_profile_audit,0,9\nkyc_profile_audit,1,3\nkyc_profile_audit,2,4\n")


def test_parse_round_trips_and_reads_the_all_groups_layout() -> None:
    offsets = {0: 9, 1: 3, 2: 4}
    assert parse_csv(render_csv("t", offsets), "t", "g", "f") == offsets
    assert parse_csv("g,t,0,7\n\ng,t,1,8\n", "t", "g", "f") == {0: 7, 1: 8}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("t,0\n", "f line 1: expected topic,partition,offset"),
        ("t,0,1\nother,1,2\n", "f line 2: offsets of topic 'other'; this group reads 't'"),
        ("h,t,0,1\n", "f line 1: offsets of group 'h', not 'g'"),
        ("t,zero,1\n", "f line 1: partition and offset must be integers"),
        ("t,0,-1\n", "f line 1: partition and offset must be >= 0"),
        ("t,0,1\nt,0,2\n", "f line 2: partition 0 appears twice"),
        ("\n", "f: no offsets of topic 't'"),
    ],
)
def test_parse_refuses_anything_else(text: str, message: str) -> None:
    with pytest.raises(UsageError) as raised:
        parse_csv(text, "t", "g", "f")
    assert str(raised.value).startswith(message)


def test_write_private_is_owner_only_and_replaces_at_once(tmp_path: Path) -> None:
    path = tmp_path / "offsets.csv"
    write_private(path, "t,0,1\n")
    write_private(path, "t,0,2\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_offsets(path, "t", "g") == {0: 2}
    assert [p.name for p in tmp_path.iterdir()] == ["offsets.csv"]  # no temporary left


def test_unwritable_and_unreadable_files_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(OffsetsFileError, match="cannot write the offsets file"):
        write_private(tmp_path / "absent" / "x.csv", "t,0,1\n")
    with pytest.raises(UsageError, match="cannot read the offsets file"):
        read_offsets(tmp_path / "absent.csv", "t", "g")


def test_backup_path_names_group_and_time() -> None:
    moment = datetime(2027, 1, 15, 8, 30, 5, 123456, tzinfo=UTC)
    assert backup_path(Path("/var/lib/kyc"), "kyc sync/a", moment) == Path(
        "/var/lib/kyc/kyc_sync_a.offsets.20270115T083005.123456Z.csv")
