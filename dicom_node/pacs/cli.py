"""The ``pacs-index`` and ``pacs-export`` subcommands of ``cxr-node`` (their flags and how they run).

Building the parser imports nothing heavy (no pynetdicom, numpy or torch), so ``cxr-node status`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dicom_node.config import NodeConfig

COMMANDS = ("pacs-index", "pacs-export")
RETRIEVE_METHODS = ("get", "move")  # dicom_node.pacs.retrieve.RETRIEVE_METHODS, without importing pynetdicom here
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)  # dicom_node.pacs.export.DEFAULT_FRACTIONS, idem


def _peer(text: str) -> Any:
    from dicom_node.pacs.peer import PacsPeer

    try:
        return PacsPeer.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _key_value(text: str) -> tuple[str, str]:
    keyword, sep, value = text.partition("=")
    if not sep or not keyword:
        raise argparse.ArgumentTypeError(f"expected KEYWORD=VALUE, got {text!r}")
    return keyword.strip(), value


def _fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers such as 0.7,0.15,0.15, got {text!r}") from None


def _add_source_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pacs", required=True, type=_peer, metavar="AE@HOST:PORT", help="the PACS to query")
    parser.add_argument("--calling-ae", help="the node's AE title as the PACS knows it (default: the node's [node] ae_title)")
    parser.add_argument("--from", dest="date_from", metavar="YYYYMMDD", help="first study date (inclusive)")
    parser.add_argument("--to", dest="date_to", metavar="YYYYMMDD", help="last study date (inclusive)")
    parser.add_argument("--modality", action="append", choices=("CR", "DX"), help="modalities to take (default CR and DX)")
    parser.add_argument(
        "--key", action="append", type=_key_value, default=[], metavar="KEYWORD=VALUE",
        help="another study-level matching key, e.g. StudyDescription=*THORAX* (repeatable)",
    )
    parser.add_argument("--retrieve", choices=RETRIEVE_METHODS, default="get", help="C-GET (default) or C-MOVE")
    parser.add_argument("--move-ae", help="C-MOVE: AE title of the temporary Storage SCP (known to the PACS)")
    parser.add_argument("--move-port", type=int, help="C-MOVE: its port (known to the PACS with this host)")
    parser.add_argument("--labels", type=Path, help="labels CSV: label + accession_number or study_instance_uid")
    parser.add_argument("--site", default="site", help="the site's name: the source of every item or row (default 'site')")
    parser.add_argument("--salt", help="secret of the pseudonymous patient keys (default $CXR_INDEX_SALT)")
    parser.add_argument("--max-instances", type=int, help="take only the first N images the query finds (trials)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def add_parsers(sub: argparse._SubParsersAction, add_config_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``pacs-index`` and ``pacs-export`` to the ``cxr-node`` parser."""
    index = sub.add_parser(
        "pacs-index", help="build or extend the similar-study index from the PACS's prior studies",
        description="C-FIND frontal chest radiographs, retrieve them (C-GET or C-MOVE), embed them as the node "
        "does and write the index (Annoy + items.csv + embeddings.npy). Resumable: run it again after an interruption.",
    )
    add_config_flags(index)
    _add_source_flags(index)
    index.add_argument("--index-dir", type=Path, required=True, help="the index folder to write (or extend)")
    index.add_argument("--work", type=Path, help="retrieved files and embedding cache (default <index-dir>.work)")
    index.add_argument("--extend", action="store_true", help="add to the index already in --index-dir")
    index.add_argument("--keep-images", action="store_true", help="keep the retrieved files in --work once embedded")
    index.add_argument("--bundle", type=Path, help="MONAI bundle (default: the node's)")
    index.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where the models run (default: the node's)")
    index.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4)")

    export = sub.add_parser(
        "pacs-export", help="export a training set (images + manifest.csv in the bundle's format) from the PACS",
        description="C-FIND frontal chest radiographs, retrieve them into OUT/images and write OUT/manifest.csv "
        "(patient-level split, salted patient keys, labels from --labels, unknown otherwise). Resumable.",
    )
    add_config_flags(export)
    _add_source_flags(export)
    export.add_argument("--out", type=Path, required=True, help="output folder (the bundle's --dataset_dir)")
    export.add_argument(
        "--split", type=_fractions, default=DEFAULT_FRACTIONS, metavar="TRAIN,VAL,TEST",
        help="shares of patients per split (default 0.7,0.15,0.15)",
    )


def run(args: argparse.Namespace, config: NodeConfig) -> int:
    """Run ``pacs-index`` or ``pacs-export``; print the summary as JSON on stdout."""
    from dicom_node.pacs.commands import PacsSource, build_index_from_pacs, export_training_set
    from dicom_node.pacs.query import StudyQuery

    try:
        query = StudyQuery(args.date_from, args.date_to, tuple(args.modality or ("CR", "DX")), dict(args.key))
        source = PacsSource(
            args.pacs, args.calling_ae or config.ae_title, query, args.retrieve, args.move_ae, args.move_port,
        )
    except ValueError as exc:
        print(f"cxr-node: {exc}", file=sys.stderr)
        return 2
    common = {"labels_csv": args.labels, "site": args.site, "salt": args.salt, "max_instances": args.max_instances,
              "progress": not args.no_progress}
    if args.command == "pacs-index":
        summary = build_index_from_pacs(
            source, args.index_dir, args.work or args.index_dir.with_name(args.index_dir.name + ".work"),
            args.bundle or config.bundle, extend=args.extend, device=args.device or config.device,
            batch_size=args.batch_size, keep_images=args.keep_images, **common,
        )
    else:
        summary = export_training_set(source, args.out, fractions=args.split, **common)
    print(json.dumps(summary, indent=1))
    return 0
