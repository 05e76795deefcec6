"""Command line: ``cxr-node serve | status | config-example``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from dicom_node import __version__
from dicom_node.config import NodeConfig, default_config_text, load_config
from dicom_node.errors import NodeError
from dicom_node.spool import Spool

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

    status = sub.add_parser("status", help="print the number of jobs per state in the spool")
    _add_config_flags(status)
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")

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
    )


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # pynetdicom's own INFO lines are per-PDU chatter; our handlers log what matters.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def _serve(config: NodeConfig) -> int:
    from dicom_node.node import ReceiverNode  # imports pynetdicom: keep `status` fast

    _setup_logging(config.log_level)
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
    if not config.spool.is_dir():
        print(f"cxr-node: no spool at {config.spool}", file=sys.stderr)
        return 1
    counts = Spool(config.spool, fsync=False).counts()
    if as_json:
        print(json.dumps({"spool": str(config.spool.resolve()), "jobs": counts}, indent=1))
    else:
        print(f"spool: {config.spool.resolve()}")
        for state, n in counts.items():
            print(f"  {state:<12}{n:>8}")
    return 0


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
        return _status(config, args.json)
    except NodeError as exc:
        print(f"cxr-node: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cxr-node: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
