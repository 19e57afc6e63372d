"""Unit tests of the lag exporter (``lag --serve``): the metrics it makes of a lag report, what
it keeps when Kafka cannot be read, its readiness; and the members table of ``lag --members``.
No network: the report comes from a function; the real broker is in the integration tests."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from consumer.ops.exporter import LagExporter
from consumer.ops.lag import LagReport, PartitionLag
from consumer.ops.ledger import LastBatch
from consumer.ops.offsets import GroupInfo, Member, OffsetsError, PartitionOffsets

NOW = 1_800_000_000.0
GROUP = GroupInfo("g", "STABLE", ("a@10.0.0.1", "b@10.0.0.2"), (
    Member("a-1f", "a", "10.0.0.1", (0, 2)), Member("b-2e", "b", "10.0.0.2", (1,)),
))
REPORT = LagReport(
    "audit", "g",
    (PartitionLag(PartitionOffsets(0, 100, 0, 100)),
     PartitionLag(PartitionOffsets(1, 40, 0, 50), int((NOW - 120) * 1000)),
     PartitionLag(PartitionOffsets(2, None, 0, 3), None)),
    int(NOW * 1000), LastBatch("b1", datetime(2027, 1, 15, 8, 0, 0), None, 3), None,
    group_info=GROUP,
)


def scrape(exporter: LagExporter) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(exporter.registry).decode()
    return {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("topic", "group")))):
        s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def test_the_report_becomes_per_partition_and_group_series() -> None:
    clock = [NOW + 30]
    exporter = LagExporter("audit", "g", lambda: REPORT, clock=lambda: clock[0])
    assert exporter.refresh()

    found = scrape(exporter)

    p = "partition"
    assert found[("kyc_sync_group_committed_offset", ((p, "0"),))] == 100
    assert ("kyc_sync_group_committed_offset", ((p, "2"),)) not in found  # none committed
    assert found[("kyc_sync_group_log_end_offset", ((p, "1"),))] == 50
    assert found[("kyc_sync_group_lag_messages", ((p, "2"),))] == 3
    assert found[("kyc_sync_group_lag_seconds", ((p, "0"),))] == 0
    assert found[("kyc_sync_group_lag_seconds", ((p, "1"),))] == 150  # grows until scraped
    assert ("kyc_sync_group_lag_seconds", ((p, "2"),)) not in found  # no timestamp read
    assert found[("kyc_sync_group_freshness_seconds", ())] == 150
    assert found[("kyc_sync_group_members", ())] == 2
    assert found[("kyc_sync_group_state", (("state", "STABLE"),))] == 1
    assert found[("kyc_sync_group_last_batch_timestamp_seconds", ())] == datetime(
        2027, 1, 15, 8, 0, tzinfo=UTC).timestamp()  # the ledger's naive UTC
    assert found[("kyc_sync_exporter_last_success_timestamp_seconds", ())] == NOW + 30
    assert exporter.readiness() == (True, "ready (group g, 3 partitions)")


def test_a_failed_refresh_keeps_the_last_report_and_says_so() -> None:
    answers: list[LagReport | Exception] = [REPORT, OffsetsError("broker down")]

    def gather() -> LagReport:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    exporter = LagExporter("audit", "g", gather, clock=lambda: NOW)
    assert exporter.readiness() == (False, "no refresh yet")
    assert exporter.refresh()
    assert not exporter.refresh()

    found = scrape(exporter)
    assert found[("kyc_sync_exporter_refresh_failures_total", ())] == 1
    assert found[("kyc_sync_group_lag_messages", (("partition", "1"),))] == 10
    assert exporter.readiness() == (False, "the last refresh failed: broker down")


def test_lag_members_table() -> None:
    text = LagReport("audit", "g", REPORT.partitions, REPORT.now_ms, group_info=GROUP,
                     show_members=True).render()
    assert "group state STABLE, 2 member(s)" in text
    assert "consumer id  host      client id  partitions" in text
    assert "a-1f         10.0.0.1  a          0,2" in text
    data = REPORT.to_json()
    assert data["group_state"] == "STABLE"
    assert data["members"][0] == {"consumer_id": "a-1f", "client_id": "a",
                                  "host": "10.0.0.1", "partitions": [0, 2]}
