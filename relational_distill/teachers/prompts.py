"""Text prompts of the 16 classes for an open_clip teacher: every template x every synonym of a prompts YAML
(configs/prompts.yaml), embedded by the teacher's text tower and averaged per class (docs/teachers.md)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..classes import CLASS_NAMES
from ..config import read_yaml
from ..errors import UserError


def load_prompts(path: Path) -> tuple[list[list[str]], str]:
    """Prompts per class (template x synonym) from a prompts YAML, and the file's content hash."""
    path = Path(path)
    data = read_yaml(path, "prompts file")
    try:
        templates, classes = data["templates"], data["classes"]
        prompts = [[t.format(name) for name in classes[c] for t in templates] for c in CLASS_NAMES]
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as err:
        raise UserError(f"{path}: not a valid prompts file ({type(err).__name__}: {str(err)[:120]}); it needs "
                        f"'templates' and 'classes' for all 16 classes") from None
    digest = hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()
    return prompts, digest
