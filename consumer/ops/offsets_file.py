"""Files of committed offsets, in the CSV layout of ``kafka-consumer-groups --export`` and
``--from-file``: one ``topic,partition,offset`` line per partition, no header (files with several
groups put the group first: ``group,topic,partition,offset``). A file written by either tool is
read by the other.

Every ``replay --execute`` first saves the group's committed offsets into such a file, which
``replay --from-file FILE --execute`` restores. Files are created readable by their owner only:
offsets say where a consumer stands, which is nobody else's business.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from schemas.errors import TerminalError, UsageError


class OffsetsFileError(TerminalError):
    """The offsets file could not be written."""


def render_csv(topic: str, offsets: Mapping[int, int]) -> str:
    """``topic,partition,offset`` lines, by partition."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for partition, offset in sorted(offsets.items()):
        writer.writerow((topic, partition, offset))
    return out.getvalue()


def parse_csv(text: str, topic: str, group: str, source: str) -> dict[int, int]:
    """The offsets of ``topic`` in a file; ``UsageError`` naming the line for anything else:
    a malformed line, another topic or group, a partition twice, a negative offset."""
    found: dict[int, int] = {}
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [c.strip() for c in row]
        if not cells or cells == [""]:
            continue
        where = f"{source} line {number}"
        if len(cells) == 4:
            if cells[0] != group:
                raise UsageError(f"{where}: offsets of group {cells[0]!r}, not {group!r}")
            cells = cells[1:]
        if len(cells) != 3:
            raise UsageError(f"{where}: expected topic,partition,offset (or "
                             f"group,topic,partition,offset), got {','.join(row)!r}")
        name, partition_text, offset_text = cells
        if name != topic:
            raise UsageError(f"{where}: offsets of topic {name!r}; this group reads {topic!r}")
        try:
            partition, offset = int(partition_text), int(offset_text)
        except ValueError:
            raise UsageError(f"{where}: partition and offset must be integers") from None
        if partition < 0 or offset < 0:
            raise UsageError(f"{where}: partition and offset must be >= 0")
        if partition in found:
            raise UsageError(f"{where}: partition {partition} appears twice")
        found[partition] = offset
    if not found:
        raise UsageError(f"{source}: no offsets of topic {topic!r}")
    return found


def read_offsets(path: Path, topic: str, group: str) -> dict[int, int]:
    try:
        text = path.read_text("utf-8")
    except OSError as err:
        raise UsageError(f"cannot read the offsets file {path}: {err.strerror or err}") from None
    return parse_csv(text, topic, group, str(path))


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600), replacing it at once."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as err:
        temporary.unlink(missing_ok=True)
        raise OffsetsFileError(
            f"cannot write the offsets file {path}: {err.strerror or err}"
        ) from None


def backup_path(directory: Path, group: str, now: datetime) -> Path:
    """``<directory>/<group>.offsets.<UTC time>.csv``, the group made safe for a file name."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in group)
    return directory / f"{safe}.offsets.{now.strftime('%Y%m%dT%H%M%S.%fZ')}.csv"
