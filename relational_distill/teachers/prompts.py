"""Text prompts of the 16 classes for an open_clip teacher: every template x every synonym of a prompts YAML
(configs/prompts.yaml), embedded by the teacher's text tower and averaged per class (docs/teachers.md)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from ..classes import CLASS_NAMES
from ..errors import UserError


def load_prompts(path: Path) -> tuple[list[list[str]], str]:
    """Prompts per class (template x synonym) from a prompts YAML, and the file's content hash."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
        templates, classes = data["templates"], data["classes"]
        prompts = [[t.format(name) for name in classes[c] for t in templates] for c in CLASS_NAMES]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as err:
        raise UserError(f"{path}: not a valid prompts file ({err}); it needs 'templates' and 'classes' for all "
                        f"16 classes") from None
    digest = hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()
    return prompts, digest
