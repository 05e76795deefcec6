"""The shipped Prometheus alert rules: valid for promtool, firing as meant, on metrics the node exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from dicom_node.metrics import NodeMetrics
from dicom_node.spool import Spool
from testkit.shared_data import REPO_ROOT

RULES = REPO_ROOT / "deploy" / "prometheus" / "cxr-node-alerts.yml"


def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run(["/usr/bin/promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_the_rules_use_is_one_the_node_exports(tmp_path: Path) -> None:
    exported = {family.name for family in NodeMetrics(Spool(tmp_path)).registry.collect()}  # names without _total
    used = {re.sub(r"_(bucket|total|count|sum)$", "", name) for name in re.findall(r"\bcxr_\w+", RULES.read_text())}
    used -= {"cxr_node"}  # the scrape job's name
    assert used and used <= exported, used - exported


def test_an_undelivered_result_older_than_an_hour_alerts(tmp_path: Path) -> None:
    tests = tmp_path / "rules_test.yml"
    tests.write_text(f"""
rule_files: ["{RULES}"]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'cxr_oldest_undelivered_seconds{{instance="node:9108", job="cxr_node"}}'
        values: '0 600 3700 3760 3820 3880 3940 4000 4060 4120'
    alert_rule_test:
      - eval_time: 1m
        alertname: CxrNodeResultsNotDelivered
        exp_alerts: []
      - eval_time: 9m
        alertname: CxrNodeResultsNotDelivered
        exp_alerts:
          - exp_labels: {{severity: warning, instance: "node:9108", job: cxr_node}}
            exp_annotations:
              summary: "A result has waited over an hour for the PACS (1h 8m 40s)"
""")
    result = subprocess.run(["/usr/bin/promtool", "test", "rules", str(tests)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
