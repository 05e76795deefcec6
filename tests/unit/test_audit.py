"""The audit trail: record format, rotation by day and size, keep_days, threads, what never gets in, config."""

from __future__ import annotations

import json
import threading
import tomllib
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from dicom_node.audit import EVENTS, AuditLog, audit_file_name, open_audit_log, parse_audit_file_name
from dicom_node.config import NodeConfig, config_from_mapping, default_config_text
from dicom_node.errors import ConfigError, UnreadableDatasetError
from dicom_node.log_safety import describe_exception

DAY = datetime(2026, 12, 1, 23, 59, 58, 123456, tzinfo=UTC)


class Clock:
    """A clock the test moves."""

    def __init__(self, now: datetime = DAY) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _records(directory: Path) -> list[dict]:
    lines = []
    for path in sorted(directory.glob("audit-*.jsonl"), key=lambda p: parse_audit_file_name(p.name) or (DAY.date(), 0)):
        text = path.read_text(encoding="utf-8")
        assert text.endswith("\n")
        lines += text.splitlines()
    return [json.loads(line) for line in lines]


def test_a_record_is_one_json_line_with_time_event_atna_codes_and_its_fields(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path, clock=Clock())
    audit.record(
        "instance", "stored", calling_ae="PORTABLE_DX1", called_ae="CXR_AI", peer="10.1.2.3:40112",
        sop_instance_uid="1.2.3.4", status="0x0000", bytes=1234,
    )
    path = tmp_path / "audit-2026-12-01.jsonl"
    assert audit.path == path
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    record = json.loads(raw)
    assert list(record) == [
        "time", "event", "result", "outcome", "outcome_text", "atna_event", "atna_action",
        "calling_ae", "called_ae", "peer", "sop_instance_uid", "status", "bytes",
    ]
    assert record["time"] == "2026-12-01T23:59:58.123Z"
    assert (record["event"], record["result"], record["outcome"], record["outcome_text"]) == (
        "instance", "stored", 0, "success")
    assert record["atna_event"] == {"code": "110104", "scheme": "DCM", "meaning": "DICOM Instances Transferred"}
    assert record["atna_action"] == "C"
    assert (record["peer"], record["status"], record["bytes"]) == ("10.1.2.3:40112", "0x0000", 1234)


def test_association_events_carry_their_atna_event_type(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path, clock=Clock())
    audit.record("association", "accepted", calling_ae="DX1")
    audit.record("association", "rejected", calling_ae="INTRUDER", detail="calling AE title not recognised")
    accepted, rejected = _records(tmp_path)
    assert accepted["atna_event"]["code"] == "110114" and accepted["atna_event_type"]["meaning"] == "Login"
    assert rejected["atna_event"] == {"code": "110113", "scheme": "DCM", "meaning": "Security Alert"}
    assert rejected["atna_event_type"]["code"] == "110126" and rejected["outcome"] == 4
    assert rejected["outcome_text"] == "minor failure" and rejected["detail"] == "calling AE title not recognised"


@pytest.mark.parametrize(("event", "result"), sorted(EVENTS))
def test_every_event_writes_a_record_with_an_atna_event_id(tmp_path: Path, event: str, result: str) -> None:
    AuditLog(tmp_path, clock=Clock()).record(event, result)
    [record] = _records(tmp_path)
    assert record["atna_event"]["scheme"] == "DCM" and record["atna_event"]["code"].startswith("1101")
    assert record["outcome"] in (0, 4, 8, 12) and record["atna_action"] in "CRUDE"


def test_the_outcome_can_be_given_and_unknown_events_or_bad_counts_are_refused(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path, clock=Clock())
    audit.record("instance", "refused", outcome=4, status="0xA700", detail="node storage full")
    assert _records(tmp_path)[0]["outcome"] == 4
    with pytest.raises(ValueError, match="unknown audit event"):
        audit.record("instance", "lost")
    with pytest.raises(ValueError):
        audit.record("instance", "stored", outcome=3)
    with pytest.raises(TypeError, match="must be an integer"):
        audit.record("instance", "stored", patient_name="DOE^JANE")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lower-case word"):
        audit.record("instance", "stored", time=1)
    assert len(_records(tmp_path)) == 1


def test_a_new_file_starts_each_utc_day_and_the_old_one_is_left_as_it_was(tmp_path: Path) -> None:
    clock = Clock()
    audit = AuditLog(tmp_path, clock=clock)
    audit.record("application", "start")
    first = tmp_path / "audit-2026-12-01.jsonl"
    before = first.read_bytes()
    clock.now += timedelta(seconds=3)  # past midnight UTC
    audit.record("application", "stop")
    assert first.read_bytes() == before
    second = tmp_path / "audit-2026-12-02.jsonl"
    assert audit.path == second and json.loads(second.read_text())["time"] == "2026-12-02T00:00:01.123Z"
    # A clock in another zone gives the same UTC day.
    clock.now = datetime(2026, 12, 2, 0, 30, tzinfo=UTC).astimezone(timezone(timedelta(hours=-5)))
    audit.record("application", "start")
    assert len(second.read_text().splitlines()) == 2


def test_a_file_that_would_pass_max_bytes_is_followed_by_the_next_numbered_one(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path, max_bytes=1000, clock=Clock())
    for n in range(40):
        audit.record("instance", "stored", sop_instance_uid=f"1.2.3.{n}", status="0x0000")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0] == "audit-2026-12-01.1.jsonl" and "audit-2026-12-01.jsonl" in names
    assert all((tmp_path / n).stat().st_size <= 1000 for n in names)
    assert [r["sop_instance_uid"] for r in _records(tmp_path)] == [f"1.2.3.{n}" for n in range(40)]
    assert audit.path == tmp_path / audit_file_name(DAY.date(), len(names) - 1)


def test_after_a_restart_records_go_on_in_the_last_file_unless_it_ends_in_a_cut_line(tmp_path: Path) -> None:
    AuditLog(tmp_path, clock=Clock()).record("application", "start")
    again = AuditLog(tmp_path, clock=Clock())
    again.record("application", "stop")
    assert again.path == tmp_path / "audit-2026-12-01.jsonl" and len(_records(tmp_path)) == 2
    again.close()
    with open(tmp_path / "audit-2026-12-01.jsonl", "ab") as f:
        f.write(b'{"time":"2026-12-01T23:59:59')  # a crash in the middle of a write
    third = AuditLog(tmp_path, clock=Clock())
    third.record("application", "start")
    assert third.path == tmp_path / "audit-2026-12-01.1.jsonl"
    assert json.loads((tmp_path / "audit-2026-12-01.1.jsonl").read_text())["result"] == "start"


def test_keep_days_deletes_whole_files_of_older_days_when_a_day_begins(tmp_path: Path) -> None:
    for day, index in (("2026-11-20", 0), ("2026-11-28", 0), ("2026-11-28", 1), ("2026-11-29", 0), ("2026-11-30", 0)):
        (tmp_path / audit_file_name(datetime.fromisoformat(day).date(), index)).write_text("{}\n")
    (tmp_path / "notes.txt").write_text("not ours")
    clock = Clock()
    audit = AuditLog(tmp_path, keep_days=3, clock=clock)  # 2026-11-29, -30 and 12-01
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "audit-2026-11-29.jsonl", "audit-2026-11-30.jsonl", "audit-2026-12-01.jsonl", "notes.txt"]
    clock.now += timedelta(days=1)
    audit.record("application", "start")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "audit-2026-11-30.jsonl", "audit-2026-12-01.jsonl", "audit-2026-12-02.jsonl", "notes.txt"]


def test_keep_days_zero_keeps_every_file(tmp_path: Path) -> None:
    old = tmp_path / "audit-2001-01-01.jsonl"
    old.write_text("{}\n")
    AuditLog(tmp_path, keep_days=0, clock=Clock()).record("application", "start")
    assert old.read_text() == "{}\n"


def test_records_from_many_threads_stay_whole_lines_across_rotations(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path, max_bytes=20_000, clock=Clock())

    def write(t: int) -> None:
        for n in range(300):
            audit.record("delivery", "delivered", destination=f"pacs{t}", sop_instance_uid=f"1.2.{t}.{n}", attempt=n)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = _records(tmp_path)
    assert len(records) == 8 * 300
    for t in range(8):
        mine = [r["attempt"] for r in records if r["destination"] == f"pacs{t}"]
        assert mine == list(range(300)), "one thread's records in the order it wrote them"
    assert len(list(tmp_path.glob("audit-*.jsonl"))) > 1


def test_network_text_stays_on_one_line_and_is_cut(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path, clock=Clock())
    audit.record("association", "rejected", calling_ae="EVIL\nFAKE LINE\u2028", detail="x" * 1000)
    raw = (tmp_path / "audit-2026-12-01.jsonl").read_text(encoding="utf-8")
    assert raw.count("\n") == 1 and "\u2028" not in raw
    [record] = _records(tmp_path)
    assert record["calling_ae"] == "EVIL\\x0aFAKE LINE\\u2028"
    assert len(record["detail"]) == 300 and record["detail"].endswith("...")


def test_a_reason_built_from_an_exception_never_carries_the_patient_name_it_quoted(tmp_path: Path) -> None:
    # How the worker builds its reasons: describe_exception, never the library's text.
    try:
        try:
            raise ValueError("Invalid value for PatientName: 'DOE^JANE' born 19400305")
        except ValueError as exc:
            raise UnreadableDatasetError("data set is truncated") from exc
    except UnreadableDatasetError as error:
        reason = describe_exception(error)
    audit = AuditLog(tmp_path, clock=Clock())
    audit.record("analysis", "retry", sop_instance_uid="1.2.3", detail=f"attempt 1 failed: {reason}")
    raw = (tmp_path / "audit-2026-12-01.jsonl").read_text()
    assert "DOE" not in raw and "JANE" not in raw and "19400305" not in raw
    assert "UnreadableDatasetError" in raw


def test_a_record_that_cannot_be_written_is_counted_and_the_log_goes_on(tmp_path: Path) -> None:
    directory = tmp_path / "audit"
    audit = AuditLog(directory, clock=Clock())
    audit.record("application", "start")
    audit.close()
    (directory / "audit-2026-12-01.jsonl").unlink()
    directory.rmdir()
    audit.record("instance", "stored")  # the directory is gone: no exception
    assert audit.lost == 1
    directory.mkdir()
    audit.record("instance", "stored", sop_instance_uid="1.2")
    assert [r["sop_instance_uid"] for r in _records(directory)] == ["1.2"]


def test_the_clock_must_tell_the_time_zone(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="aware"):
        AuditLog(tmp_path, clock=lambda: datetime(2026, 1, 1))


def test_the_audit_config_keys_and_their_defaults(tmp_path: Path) -> None:
    shipped = tomllib.loads(default_config_text())["audit"]
    assert shipped == {"enabled": True, "directory": "", "max_file_bytes": 64 * 1024**2, "keep_days": 0}
    default = NodeConfig(spool=tmp_path / "spool")
    assert default.audit_enabled and default.audit_path == tmp_path / "spool" / "audit"
    config = config_from_mapping({"audit": {"directory": str(tmp_path / "elsewhere"), "keep_days": 30,
                                            "max_file_bytes": 2 * 1024**2}})
    assert (config.audit_path, config.audit_keep_days, config.audit_max_file_bytes) == (
        tmp_path / "elsewhere", 30, 2 * 1024**2)
    for key, value in (("enabled", "yes"), ("max_file_bytes", 1000), ("keep_days", -1), ("directory", 3)):
        with pytest.raises(ConfigError, match=f'"audit.{key}"'):
            config_from_mapping({"audit": {key: value}})
    with pytest.raises(ConfigError, match='unknown key "audit.rotate"'):
        config_from_mapping({"audit": {"rotate": "daily"}})


def test_open_audit_log_follows_the_config(tmp_path: Path) -> None:
    assert open_audit_log(NodeConfig(spool=tmp_path / "off", audit_enabled=False)) is None
    assert not (tmp_path / "off").exists(), "a disabled audit creates nothing"
    audit = open_audit_log(NodeConfig(spool=tmp_path / "spool", audit_keep_days=7), clock=Clock())
    assert audit is not None and audit.keep_days == 7
    assert audit.path == tmp_path / "spool" / "audit" / "audit-2026-12-01.jsonl"
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match=r"\(audit.directory\)"):
        open_audit_log(NodeConfig(spool=tmp_path / "spool", audit_directory=tmp_path / "a-file" / "audit"))


def test_cxr_node_resend_records_each_job_it_requeues(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dicom_node.cli import main
    from dicom_node.spool import JobState, Spool
    from testkit.sr import job_in_outbox

    spool = Spool(tmp_path / "spool")
    job = spool.transition(job_in_outbox(spool, ["main"]), JobState.FAILED, detail="main: gave up after 20 attempts")
    assert main(["resend", "--all", "--spool", str(tmp_path / "spool")]) == 0
    assert capsys.readouterr().out == f"requeued {job.job_id}\n"
    [record] = _records(tmp_path / "spool" / "audit")
    assert (record["event"], record["result"], record["sop_instance_uid"]) == ("resend", "requeued", job.job_id)
    assert (record["atna_event"]["code"], record["atna_action"]) == ("110103", "U")
