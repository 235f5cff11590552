"""What every store of precomputed files shares (the teacher's features, teachers/store.py; the superpixel maps,
data/superpixels.py): a folder with a ``manifest.json``, each file written atomically with its sha256 beside it
(``<file>.sha256``, written right after it: a file without its hash counts as missing), and reads that verify the
hash, so a file whose bytes changed is refused in one line, never used (docs/reliability.md)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import UserError
from .io import atomic_write, atomic_write_json, atomic_write_text, is_scratch_file

MANIFEST = "manifest.json"


class HashedStore:
    """A store folder at ``root``; ``files`` maps relative paths to the sha256 the manifest recorded for them
    (a complete feature store records every file there, so a lost ``.sha256`` file is not a lost sample)."""

    what = "store"  # named in errors

    def __init__(self, root: Path, files: dict[str, str] | None = None) -> None:
        self.root = Path(root)
        self.files = files or {}

    def rerun(self) -> str:
        """The command that mends a missing or changed file (the store's own precompute, resumed)."""
        return f"run 'rdistill precompute' again with --out {self.root} (it redoes only what is missing or changed)"

    @staticmethod
    def make_folder(root: Path, manifest: dict, what: str) -> None:
        """Start a new store at ``root``: an absent or empty folder (lock files and a killed writer's temporary
        files do not count) gets ``manifest``; a folder with other files is refused in one line."""
        root = Path(root)
        if root.exists() and any(not is_scratch_file(p) for p in root.iterdir()):
            raise UserError(f"{root}: a folder that is not a {what} (no {MANIFEST}); pass a new or empty --out folder")
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(root / MANIFEST, manifest)

    @staticmethod
    def read_manifest(root: Path, store_format: int, what: str, fix: str) -> dict:
        """The manifest of the store at ``root`` as a dict, of format ``store_format``; anything else (absent is
        the caller's business) is a one-line error ending with ``fix``."""
        path = Path(root) / MANIFEST
        try:
            data = json.loads(path.read_text())
        except (ValueError, RecursionError) as err:
            raise UserError(f"{path}: unreadable manifest ({type(err).__name__}: {str(err)[:120]}); {fix}") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: unreadable manifest (not a JSON object); {fix}")
        if data.get("format") != store_format:
            raise UserError(f"{path}: {what} format {str(data.get('format'))[:20]!s}, this rdistill reads "
                            f"{store_format}; {fix}")
        return data

    def write_hashed(self, rel: str, data: bytes) -> None:
        """Write ``data`` at ``rel`` and then its sha256 beside it."""
        atomic_write(self.root / rel, lambda f: f.write(data))
        atomic_write_text(self.root / f"{rel}.sha256", hashlib.sha256(data).hexdigest() + "\n")

    def recorded_hash(self, rel: str) -> str | None:
        """The sha256 written with ``rel`` (its .sha256 file), else the one in the manifest, else None."""
        try:
            return (self.root / f"{rel}.sha256").read_text().strip()
        except (OSError, UnicodeDecodeError):
            return self.files.get(rel)

    def read_verified(self, rel: str) -> tuple[bytes | None, str | None]:
        """(content, None) when ``rel`` exists and matches its recorded sha256, else (None, what is wrong)."""
        try:
            data = (self.root / rel).read_bytes()
        except FileNotFoundError:
            return None, "missing"
        expected = self.recorded_hash(rel)
        if expected is None:
            return None, "no recorded sha256 (its write was interrupted)"
        if hashlib.sha256(data).hexdigest() != expected:
            return None, "content changed since precompute wrote it (sha256 mismatch)"
        return data, None

    def refuse(self, rel: str, problem: str) -> UserError:
        """The one-line error for a bad file of this store."""
        return UserError(f"{self.root / rel}: {problem}; {self.rerun()}")
