"""The bundle's networks as a Ray Serve application (``[inference] backend = "ray"``).

:mod:`~monai_app.serve.wire` is the HTTP wire format both sides share (numpy only);
:mod:`~monai_app.serve.deployment` is the Serve deployment (imports Ray);
``python -m monai_app.serve`` deploys it on a running cluster. Importing this package loads
neither Ray nor torch, so the node's client (:mod:`dicom_node.analyse.remote`) can use the wire format.
"""
