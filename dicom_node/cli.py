"""Command line: ``cxr-node serve | status | resend | purge | pacs-index | pacs-export | config-example``."""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from dicom_node import __version__
from dicom_node.config import NodeConfig, default_config_text, load_config
from dicom_node.errors import NodeError
from dicom_node.spool import JobState, Spool

logger = logging.getLogger("dicom_node")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr-node", description="DICOM-native chest X-ray AI node.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the node in the foreground (SIGTERM / Ctrl-C stop it cleanly)")
    _add_config_flags(serve)
    serve.add_argument("--ae-title", help="AE title the node answers to (default CXR_AI)")
    serve.add_argument("--port", type=int, help="TCP port (default 11112)")
    serve.add_argument("--bind", help="address to listen on (default 0.0.0.0)")
    serve.add_argument("--log-level", type=str.upper, help="DEBUG, INFO, WARNING or ERROR")
    serve.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where the models run (default auto)")
    serve.add_argument("--bundle", type=Path, help="MONAI bundle folder (default: the repository's bundle/)")
    serve.add_argument("--batch-size", type=int, help="images analysed together (default 4)")
    serve.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics, /healthz, /readyz on this port (loopback)")
    serve.add_argument(
        "--analysis", action=argparse.BooleanOptionalAction, default=None,
        help="analyse received images (default); --no-analysis only receives and spools",
    )

    status = sub.add_parser("status", help="print the number of jobs per state in the spool")
    _add_config_flags(status)
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")

    resend = sub.add_parser("resend", help="queue failed reports for delivery again")
    _add_config_flags(resend)
    which = resend.add_mutually_exclusive_group(required=True)
    which.add_argument("job_ids", nargs="*", default=[], metavar="SOP_INSTANCE_UID", help="jobs to requeue")
    which.add_argument("--all", action="store_true", help="every failed job that has a report")

    purge = sub.add_parser(
        "purge", help="apply the retention policy now (safe beside a running serve)",
        description="Delete what the [retention] policy lets go: finished jobs' instances, results and records "
        "past their periods, and the oldest finished ones' files while the disk is above the high-water mark. "
        "Undelivered results and their images are never deleted.",
    )
    _add_config_flags(purge)
    purge.add_argument("--dry-run", action="store_true", help="only print what would be deleted")
    purge.add_argument("--json", action="store_true", help="print JSON instead of text")

    from dicom_node.pacs import cli as pacs_cli  # flags only: nothing heavy is imported

    pacs_cli.add_parsers(sub, _add_config_flags)
    sub.add_parser("config-example", help="print the commented default configuration file")
    return parser


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML configuration file (see `cxr-node config-example`)")
    parser.add_argument("--spool", type=Path, help="spool directory (default ./spool)")


def _config_from_args(args: argparse.Namespace) -> NodeConfig:
    config = load_config(args.config)
    return config.with_overrides(
        spool=args.spool,
        ae_title=getattr(args, "ae_title", None),
        port=getattr(args, "port", None),
        bind=getattr(args, "bind", None),
        log_level=getattr(args, "log_level", None),
        device=getattr(args, "device", None),
        bundle=getattr(args, "bundle", None),
        batch_size=getattr(args, "batch_size", None),
        analysis=getattr(args, "analysis", None),
        metrics_port=getattr(args, "metrics_port", None),
    )


def setup_logging(level: str) -> None:
    from dicom_node.log_safety import SafeFormatter

    handler = logging.StreamHandler(sys.stderr)
    # Every record, pynetdicom's included, passes this formatter: control characters escaped
    # (no forged lines), exception texts withheld (they may quote data set values).
    handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    # pynetdicom's own INFO lines are per-PDU chatter, highdicom's list every module it copies;
    # our handlers and worker log what matters.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    # Python warnings (pydicom's, highdicom's) may quote attribute values (a name): they reach
    # the log as their category and origin only, never their text.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").addFilter(WarningTextWithheld())
    logging.getLogger("pydicom").setLevel(logging.ERROR)  # its validation warnings quote values


class WarningTextWithheld(logging.Filter):
    r"""Rewrites a captured Python warning to its category and origin, dropping its text.

    >>> text = "/x/pydicom/valuerep.py:12: UserWarning: Invalid value 'DOE^JANE'\n"
    >>> record = logging.LogRecord("py.warnings", logging.WARNING, "", 0, "%s", (text,), None)
    >>> WarningTextWithheld().filter(record), record.getMessage()
    (True, 'UserWarning from valuerep.py:12 (text withheld: it may quote attribute values)')
    """

    _ORIGIN = re.compile(r"(?P<path>[^\n]*?):(?P<line>\d+): (?P<category>\w+):")

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.args[0]) if isinstance(record.args, tuple) and record.args else str(record.msg)
        match = self._ORIGIN.match(text)
        origin = f"{match['category']} from {Path(match['path']).name}:{match['line']}" if match else "warning"
        record.msg, record.args = "%s (text withheld: it may quote attribute values)", (origin,)
        return True


def _serve(config: NodeConfig) -> int:
    from dicom_node.serving_process import keep_evaluation_packages_out

    keep_evaluation_packages_out()  # before anything imports MONAI
    from dicom_node.app import ReceiverNode  # imports pynetdicom: keep `status` fast

    setup_logging(config.log_level)
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        logger.info("received %s: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    node = ReceiverNode(config)
    node.serve_until(stop)
    return 0


def _status(config: NodeConfig, as_json: bool) -> int:
    from dicom_node.spool.retention import disk_usage, policy_from_config, purge

    if not _spool_exists(config):
        return 1
    spool = Spool(config.spool, fsync=False)
    counts = spool.counts()
    failed = [{"job": j.job_id, "detail": j.detail} for j in spool.jobs(JobState.FAILED)]
    not_analysed = Counter(j.detail.split(":", 1)[0] for j in spool.jobs(JobState.NOT_ANALYSED))
    # [inference] backend = "ray": jobs the analysis backend could not answer yet, waiting or being tried again.
    backend_waiting = [j.backend_attempts for state in (JobState.RECEIVED, JobState.PROCESSING)
                       for j in spool.jobs(state) if j.backend_attempts]
    waiting: list[dict[str, Any]] = [
        {"job": j.job_id, "report": str(spool.result_path(j)), "destinations": [d.destination for d in j.deliveries]}
        for j in spool.jobs(JobState.OUTBOX)
    ]
    disk = disk_usage(config.spool)
    storage: dict[str, Any] = {
        "spool_bytes": spool.size_bytes(), "free_bytes": disk.free, "used_bytes": disk.used,
        "used_percent": round(disk.used_percent, 1),
    }
    policy = policy_from_config(config)
    would_free = purge(spool, policy, now=time.time(), dry_run=True).plan.counts()
    retention = {
        "enabled": config.retention_enabled, "instances_days": policy.instances_days,
        "results_days": policy.results_days, "records_days": policy.records_days,
        "high_water_percent": policy.high_water_percent, "purge_would_delete": would_free,
    }
    if as_json:
        print(json.dumps({
            "spool": str(config.spool.resolve()), "jobs": counts, "failed": failed,
            "not_analysed": dict(sorted(not_analysed.items())), "outbox": waiting,
            "backend_waiting": {"jobs": len(backend_waiting), "most_tries": max(backend_waiting, default=0)},
            "storage": storage, "retention": retention,
        }, indent=1))
    else:
        print(f"spool: {config.spool.resolve()}")
        for state, n in counts.items():
            print(f"  {state:<14}{n:>8}")
        print(
            f"storage: spool {_size(storage['spool_bytes'])}, free {_size(storage['free_bytes'])} "
            f"({storage['used_percent']:g} % used)"
        )
        print(
            f"retention ({'on' if config.retention_enabled else 'off in serve'}): instances {policy.instances_days:g} d, "
            f"results {policy.results_days:g} d, records {policy.records_days:g} d after delivery, "
            f"high-water {policy.high_water_percent:g} %; a purge now would delete {_plan_text(would_free)}"
        )
        if backend_waiting:
            print(f"waiting for the analysis backend: {len(backend_waiting)} job(s), up to {max(backend_waiting)} tries")
        for reason, n in sorted(not_analysed.items()):
            print(f"not analysed ({reason}): {n}")
        for item in failed:
            print(f"failed {item['job']}: {item['detail']}")
        for item in waiting:
            where = ", ".join(item["destinations"]) or "no destination configured"
            print(f"outbox {item['job']}: {item['report']} ({where})")
    return 0


def _spool_exists(config: NodeConfig) -> bool:
    """Whether the configured spool is there (else say so): read-only commands never create one."""
    if config.spool.is_dir():
        return True
    print(f"cxr-node: no spool at {config.spool}", file=sys.stderr)
    return False


def _size(n: int) -> str:
    """Bytes for people: ``1.5 GB``."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def _plan_text(counts: dict[str, int]) -> str:
    return (
        f"{counts['instances']} instances, {counts['results']} result files, {counts['records']} job records "
        f"({_size(counts['bytes'])}; jobs by age {counts['jobs_by_age']}, by disk {counts['jobs_by_disk']})"
    )


def _purge(config: NodeConfig, dry_run: bool, as_json: bool) -> int:
    from dicom_node.audit import open_audit_log, record_purge
    from dicom_node.spool.retention import policy_from_config, purge

    if not _spool_exists(config):
        return 1
    audit = None if dry_run else open_audit_log(config)  # before any deletion: a bad audit directory stops it
    try:
        outcome = purge(
            Spool(config.spool, fsync=config.fsync), policy_from_config(config), now=time.time(), dry_run=dry_run
        )
        counts = outcome.plan.counts()
        if audit is not None and counts["bytes"]:
            record_purge(audit, counts, "cxr-node purge")
    finally:
        if audit is not None:
            audit.close()
    if as_json:
        print(json.dumps({"dry_run": dry_run, **counts, "already_gone": outcome.missing}, indent=1))
    else:
        print(f"{'would delete' if dry_run else 'deleted'} {_plan_text(counts)}")
    return 0


def _resend(config: NodeConfig, job_ids: list[str], all_failed: bool) -> int:
    from dicom_node.audit import open_audit_log
    from dicom_node.send.outbox import requeue_failed

    audit = open_audit_log(config)  # first: an unwritable audit directory stops it before any change
    try:
        requeued = requeue_failed(Spool(config.spool, fsync=config.fsync), None if all_failed else job_ids)
        for job in requeued:
            print(f"requeued {job.job_id}")
            if audit is not None:
                audit.record("resend", "requeued", sop_instance_uid=job.job_id, detail="cxr-node resend")
    finally:
        if audit is not None:
            audit.close()
    missing = set(job_ids) - {j.job_id for j in requeued}
    for job_id in sorted(missing):
        print(f"cxr-node: {job_id} is not a failed job with a report", file=sys.stderr)
    return 1 if missing else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cxr-node`` console script."""
    args = _build_parser().parse_args(argv)
    if args.command == "config-example":
        print(default_config_text(), end="")
        return 0
    try:
        config = _config_from_args(args)
        if args.command == "serve":
            return _serve(config)
        if args.command == "resend":
            return _resend(config, args.job_ids, args.all)
        if args.command == "purge":
            return _purge(config, args.dry_run, args.json)
        if args.command in ("pacs-index", "pacs-export"):
            from dicom_node.pacs import cli as pacs_cli

            setup_logging(config.log_level)
            return pacs_cli.run(args, config)
        return _status(config, args.json)
    except NodeError as exc:
        print(f"cxr-node: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cxr-node: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
