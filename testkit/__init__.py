"""Test support for the suite under ``tests/`` and for ``scripts/``: peers, data builders, checks.

Not part of the installed distribution (``[tool.setuptools.packages.find]`` lists only
``dicom_node*`` and ``monai_app*``). Nothing here imports ``tests``; modules that scripts
import (``testkit.orthanc``, ``testkit.peers``) do not import pytest at module level.

* :mod:`testkit.shared_data`: ``REPO_ROOT`` and where the shared data set lies.
* :mod:`testkit.peers`: free ports, DCMTK tools, C-ECHO, the node as a subprocess.
* :mod:`testkit.orthanc`: a real Orthanc on free loopback ports.
* :mod:`testkit.dicom_factory`: small synthetic DX instances.
* :mod:`testkit.bundle`: the bundle's configs, workflows and tiny data sets.
* :mod:`testkit.corpus`: the generated DICOM corpora (from ``scripts.dicom_corpus``).
* :mod:`testkit.sr`: sample AI reports and outbox jobs.
* :mod:`testkit.images`: checks on written figures.
"""
