"""Text queries in the teacher's embedding space, for ``rdistill query`` (docs/teachers.md, "Open-vocabulary
queries").

A query is a name and its synonyms (a YAML of name -> synonyms, or one text per ``--text``, its own only synonym).
An open_clip teacher embeds each with its own text tower: every template of a prompts YAML x every synonym,
each prompt embedded and normalised, averaged and re-normalised (the recipe of the class embeddings,
teachers/maskclip.py ``text_embeddings``). The simulated teacher has no language: it answers its 16 class names
(the store's class embeddings) and the semantic groups of classes.py (the normalised mean of their classes'
embeddings), and refuses any other text.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..classes import CLASS_NAMES, SEMANTIC_GROUPS
from ..config import CONFIG_DIR, read_yaml
from ..errors import UserError
from .store import FeatureStore


def read_queries(texts: list[str], classes: Path | None) -> dict[str, list[str]]:
    """{query name: synonyms} from ``--text`` values (each its own synonym) and a YAML of name -> synonym(s)."""
    queries: dict[str, list[str]] = {}
    if classes is not None:
        data = read_yaml(classes, "query file")
        if not isinstance(data, dict) or not data:
            raise UserError(f"{classes}: not a query file; it needs a mapping of name -> synonym or list of synonyms, "
                            f"e.g. 'cone: [a traffic cone, a pylon]'")
        for name, synonyms in data.items():
            synonyms = [synonyms] if isinstance(synonyms, str) else synonyms
            if not isinstance(name, str) or not isinstance(synonyms, list) or not synonyms \
                    or not all(isinstance(s, str) and s.strip() for s in synonyms):
                raise UserError(f"{classes}: entry {name!r} needs a non-empty text or list of texts as synonyms")
            queries[name] = [s.strip() for s in synonyms]
    for text in texts:
        if not text.strip():
            raise UserError("--text '': an empty query; pass some words, e.g. --text 'a traffic cone'")
        queries.setdefault(text.strip(), [text.strip()])
    if not queries:
        raise UserError("query: no text; pass --text 'WORDS' (repeatable) or --classes FILE.yaml of name -> synonyms")
    return queries


def _sim_name(text: str) -> str:
    return text.strip().lower().replace(" ", "_").replace("-", "_")


def embed_queries(queries: dict[str, list[str]], store: FeatureStore, prompts: Path | None = None,
                  device: str = "cpu") -> tuple[torch.Tensor, dict]:
    """(Q, D) L2-normalised embeddings of ``queries`` by the teacher that made ``store``, and a record of how."""
    teacher = store.manifest.teacher_id
    if teacher.startswith("sim-clip"):
        names, text = store.text_embeddings()
        by_name = dict(zip(names, text.float()))
        groups = {g: F.normalize(torch.stack([by_name[c] for c in members]).mean(0), dim=0)
                  for g, members in SEMANTIC_GROUPS.items()}
        out = []
        for synonyms in queries.values():
            embedded = []
            for s in synonyms:
                key = _sim_name(s)
                if key not in by_name and key not in groups:
                    raise UserError(f"'{s}': the simulated teacher {teacher} has no language; it answers only its class "
                                    f"names ({', '.join(CLASS_NAMES)}) and groups ({', '.join(SEMANTIC_GROUPS)})")
                embedded.append(by_name.get(key, groups.get(key)))
            out.append(F.normalize(torch.stack(embedded).mean(0), dim=0))
        return torch.stack(out), {"teacher": teacher, "text_tower": "the store's class embeddings (simulated)"}
    if not teacher.startswith("openclip:"):
        raise UserError(f"{store.root / 'manifest.json'}: teacher '{teacher}' has no text tower this tool can load; "
                        f"query a store or checkpoint made with an openclip: or sim-clip teacher")
    from .maskclip import load_openclip, text_embeddings

    prompts = Path(prompts or CONFIG_DIR / "prompts.yaml")
    templates = _templates(prompts)
    clip = load_openclip(teacher, device, store.manifest.activation)
    if clip.weights_hash != store.manifest.weights_hash:
        raise UserError(f"{store.root / 'manifest.json'}: features of weights {store.manifest.weights_hash[:12]}, but "
                        f"'{teacher}' now loads weights {clip.weights_hash[:12]}; restore those weights or precompute "
                        f"the store again")
    prompt_lists = [[t.format(s) for s in synonyms for t in templates] for synonyms in queries.values()]
    return text_embeddings(clip.model, clip.tokenizer, prompt_lists).cpu().float(), {
        "teacher": teacher, "text_tower": f"{teacher} ({clip.activation})", "prompts": str(prompts),
        "templates": len(templates)}


def _templates(path: Path) -> list[str]:
    data = read_yaml(path, "prompts file")
    templates = data.get("templates") if isinstance(data, dict) else None
    if not isinstance(templates, list) or not templates or not all(isinstance(t, str) and "{}" in t for t in templates):
        raise UserError(f"{path}: not a prompts file; it needs 'templates', a list of texts with '{{}}' for the name")
    return templates

