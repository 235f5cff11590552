"""What the tests of one-line errors and untouched results share (docs/reliability.md)."""
from __future__ import annotations

from pathlib import Path
import shutil

import typer

from relational_distill.cli import user_errors

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(preset="small", epochs=1, batch_size=2, num_pairs=256, pairs_per_sample=512, lr=0.003, workers=0)


def one_line(result, code: int = 2, *fragments: str) -> str:
    """The single error line of a CLI result with exit code ``code``, containing every fragment (a resumed run's
    note of the settings it applies may come before it)."""
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip() and not ln.startswith("resuming ")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of ``folder`` but TensorBoard's event files, which (like log.jsonl) each run only adds to."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
            if p.is_file() and "tensorboard" not in p.relative_to(folder).parts}


def run_api(fn, capsys) -> tuple[int, str]:
    """Call ``fn`` behind the CLI's error handling: (exit code, stderr)."""
    try:
        user_errors(fn)()
        code = 0
    except typer.Exit as exit_:
        code = exit_.exit_code
    return code, capsys.readouterr().err


def copy_run(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


