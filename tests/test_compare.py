"""benchmarks/compare_losses.py: a cached student counts only if it was made as asked; comparisons run with other
epochs are merged teacher by teacher, each block with its own protocol; a refusal is one line, exit code 2."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import compare_losses  # noqa: E402

from relational_distill.errors import UserError  # noqa: E402


def _args(epochs: int) -> argparse.Namespace:
    return argparse.Namespace(epochs=epochs, preset="small", workers=1)


def test_a_student_distilled_for_other_epochs_is_not_reused(tmp_path):
    made = tmp_path / "distill.json"
    compare_losses.check_made_as_asked(made, compare_losses.distill_config(_args(64), "relational", 0))  # none yet
    cfg = compare_losses.distill_config(_args(32), "relational", 0)
    made.write_text(json.dumps({"config": {"loss": cfg.loss, "epochs": cfg.epochs, "seed": cfg.seed,
                                           "preset": cfg.preset}}))
    compare_losses.check_made_as_asked(made, cfg)
    with pytest.raises(UserError, match=r"distill\.json: made with epochs 32, this comparison asks epochs 64"):
        compare_losses.check_made_as_asked(made, compare_losses.distill_config(_args(64), "relational", 0))
    with pytest.raises(UserError, match="loss relational, .*asks loss contrastive"):
        compare_losses.check_made_as_asked(made, compare_losses.distill_config(_args(32), "contrastive", 0))
    # random-init is the relational student with 0 epochs, whatever --epochs says
    assert compare_losses.distill_config(_args(64), "random-init", 0).epochs == 0


def test_one_comparison_has_one_schedule():
    rows = [{"variant": "contrastive", "seed": 0, "distill_epochs": 32},
            {"variant": "contrastive", "seed": 1, "distill_epochs": 64}]
    with pytest.raises(UserError, match=r"distilled for \[32, 64\] epochs"):
        compare_losses.summarise(rows, [0.5, 0.5], [{"teacher": "sim-clip"}], "2026-12-01", "cmd")


def _results(path: Path, epochs: int, teachers: tuple[str, ...], protocol: bool = True) -> str:
    blocks = {t: {"teacher": t, "distill_epochs": epochs, "claims": [{"claim": f"{t} at {epochs}"}],
                  "command": f"compare --epochs {epochs}", "date": "2026-12-01",
                  **({"protocol": f"3 seeds, {epochs} distillation epochs"} if protocol else {})} for t in teachers}
    path.write_text(json.dumps({"by_teacher": blocks, "seconds_total": 1.0}))
    return str(path)


def test_merge_takes_each_named_teacher_from_its_own_comparison(tmp_path):
    long = _results(tmp_path / "long.json", 64, ("sim-clip",))
    short = _results(tmp_path / "short.json", 32, ("sim-clip", "sim-clip:clean"))
    parser = argparse.ArgumentParser()
    out = compare_losses.merged([f"sim-clip={long}", f"sim-clip:clean={short}"], parser)
    assert list(out["by_teacher"]) == ["sim-clip", "sim-clip:clean"]
    assert out["by_teacher"]["sim-clip"]["distill_epochs"] == 64
    assert out["by_teacher"]["sim-clip:clean"]["distill_epochs"] == 32
    assert out["claims"]["sim-clip"] == [{"claim": "sim-clip at 64"}]
    assert [s["results"] for s in out["sources"]] == [long, short]
    with pytest.raises(UserError, match="no teacher sim-clip:clean with its protocol"):
        compare_losses.merged([f"sim-clip:clean={long}"], parser)
    old = _results(tmp_path / "old.json", 32, ("sim-clip",), protocol=False)
    with pytest.raises(UserError, match="rerun the command that made it"):
        compare_losses.merged([f"sim-clip={old}"], parser)
    with pytest.raises(SystemExit) as named_twice:  # argparse's usage error
        compare_losses.merged([f"sim-clip={long}", f"sim-clip={short}"], parser)
    assert named_twice.value.code == 2


def test_a_refusal_is_one_line_and_exit_code_2(tmp_path):
    missing = tmp_path / "missing.json"
    script = Path(compare_losses.__file__)
    done = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "out"), "--merge",
                           f"sim-clip={missing}"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {missing}: not a readable results.json")
    assert len(done.stderr.strip().splitlines()) == 1
