"""recipe/report.py: the run's report.md from stage records written here."""
from nanoseek.cost import utilisation
from nanoseek.recipe.report import write_report
from nanoseek.recipe.stages import recipe


def record(name: str, folder, mfu: float) -> dict:
    return {"name": name, "init": None, "accuracy": 0.5, "format_rate": 1.0, "mean_length": 20, "seconds": 60.0,
            "eval_seconds": 1.0, "tokens": 1000, "flops": 1e12, "mfu": mfu, "device_hours": 60 / 3600,
            "eval_prompt": "1-shot", "checkpoint": str(folder), "peak_flops": 2e10}


def test_an_mfu_above_the_measured_peak_is_not_shown_as_a_percentage(tmp_path):
    assert utilisation(0.25) == "25.0%" and utilisation(1.3) == "above the measured peak (busy machine)"
    plan = recipe("smoke")
    (tmp_path / "pretrain").mkdir()
    write_report(tmp_path, plan, {"pretrain": record("pretrain", tmp_path / "pretrain", 1.3)}, 2e10, "this CPU")
    report = (tmp_path / "report.md").read_text()
    assert "above the measured peak (busy machine)" in report and "130.0%" not in report
    assert "(20.0 GFLOP/s)" in report


def test_every_plot_of_a_stage_is_linked(tmp_path):
    folder = tmp_path / "pretrain"
    folder.mkdir()
    names = ["loss.png", "lr.png", "expert_load.png", "throughput.png", "policy.png", "other.png"]
    for name in names:
        (folder / name).write_bytes(b"")
    write_report(tmp_path, recipe("smoke"), {"pretrain": record("pretrain", folder, 0.2)}, 2e10, "this CPU")
    report = (tmp_path / "report.md").read_text()
    for name in names:
        assert f"](pretrain/{name})" in report, name
