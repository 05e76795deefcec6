"""The PACS as a source of prior studies: query, retrieve, label, then index or export them.

One module per step, in the order the data passes: :mod:`~dicom_node.pacs.peer` (who the PACS
is), :mod:`~dicom_node.pacs.query` (C-FIND, study -> series -> image, and the frontal-chest
selection), :mod:`~dicom_node.pacs.retrieve` (C-GET or C-MOVE into a folder, one file per SOP
Instance UID, resumable), :mod:`~dicom_node.pacs.labels` (a site's labels CSV),
:mod:`~dicom_node.pacs.prior_index` (embedding through the bundle as the node does, and the
similar-study index) and :mod:`~dicom_node.pacs.export` (a training set in the bundle's
manifest format). :mod:`~dicom_node.pacs.commands` wires them into ``cxr-node pacs-index`` and
``cxr-node pacs-export``. Logs carry counts and UIDs, never patient names, IDs or birth dates.
"""
