"""What the serving process refuses to load: evaluation and plotting packages.

MONAI imports matplotlib and scikit-learn eagerly when they are installed (e.g.
``monai.utils.jupyter_utils``), though the node's inference needs neither. Marking them absent
before MONAI is first imported makes MONAI take its own fallbacks (it treats both as optional),
so a serving node maps neither into its memory. Training and evaluation processes are not
affected: only ``cxr-node serve`` calls this.
"""

from __future__ import annotations

import sys

EVALUATION_ONLY_PACKAGES = ("matplotlib", "sklearn")


def keep_evaluation_packages_out() -> None:
    """Make ``import matplotlib`` / ``import sklearn`` fail in this process (unless already loaded)."""
    for name in EVALUATION_ONLY_PACKAGES:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # None = "absent" to the import system
