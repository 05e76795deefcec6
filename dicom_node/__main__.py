"""``python -m dicom_node`` is ``cxr-node``."""

import sys

from dicom_node.cli import main

sys.exit(main())
