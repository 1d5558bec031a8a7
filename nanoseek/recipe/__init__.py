"""The R1 recipe (`nanoseek run`): its stages as typed data (stages.py), the runner (runner.py), the report
(report.py)."""
