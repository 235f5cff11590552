"""Typed results: what the engine's commands return and the CLI prints, each written as the JSON file its command
names in its ``--help`` (README, "Commands"). A result is a dataclass; ``to_json()`` is the file's content, with the
same keys for every run, and ``from_json`` reads such a file back."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(kw_only=True)
class Result:
    """Base of the typed results: ``to_json`` turns nested results into dicts, and leaves out the fields named in
    ``OPTIONAL`` while they are None (a reason that only exists when its value is missing)."""
    OPTIONAL = ()

    def to_json(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in self.OPTIONAL:
                continue
            out[f.name] = value.to_json() if isinstance(value, Result) else value
        return out

    @classmethod
    def from_json(cls, data: dict):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(kw_only=True)
class Score(Result):
    """A segmentation score (metrics/segmentation.py): mIoU by the dataset's convention, per-class IoU (None for a
    class that convention leaves out), the classes absent from prediction and ground truth, and the (C+1, C+1)
    confusion matrix. ``miou`` is None with ``miou_null_reason`` when nothing could be scored."""
    OPTIONAL = ("miou_null_reason",)
    miou: float | None
    per_class_iou: dict[str, float | None] | None
    absent_classes: list[str] | None
    confusion: list[list[int]] | None
    miou_null_reason: str | None = None

    @classmethod
    def unscored(cls, reason: str | None = None) -> "Score":
        """Nothing scored: a split without labels (no reason: predictions only), or ``reason`` why not."""
        return cls(miou=None, miou_null_reason=reason, per_class_iou=None, absent_classes=None, confusion=None)

    @property
    def scored(self) -> bool:
        """False for a split without labels (predictions only); True, with a reason for a missing mIoU, otherwise."""
        return self.miou is not None or self.miou_null_reason is not None


@dataclass(kw_only=True)
class Evaluation(Score):
    """``rdistill evaluate``'s result (OUT/<mode>_<split>.json): a student's or the teacher's score on a split.
    ``checkpoint`` names the student, ``features`` and ``teacher`` the teacher (evaluate --teacher-ceiling)."""
    OPTIONAL = ("miou_null_reason", "checkpoint", "features", "teacher", "class_names", "predictions")
    mode: str
    split: str
    dataset: str
    dataroot: str
    samples: int
    miou_convention: str
    synthetic: bool
    checkpoint: str | None = None
    features: str | None = None
    teacher: str | None = None
    class_names: list[str] | None = None
    predictions: dict | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class TrainingRun(Result):
    """What the training loop (engine/training.py) reports of a run: per-epoch mean losses, steps, time, the
    checkpoint, and what a resume changed."""
    epochs: list[dict]
    steps: int
    seconds: float
    samples_per_second: float | None
    checkpoint: str
    world_size: int
    resume_changes: dict
    rank_checksums: list[str] | None


@dataclass(kw_only=True)
class Distillation(TrainingRun):
    """``rdistill distill``'s result (OUT/distill.json)."""
    loss: str
    teacher: str
    train_samples: int
    synthetic: bool
    config: dict


@dataclass(kw_only=True)
class Finetuning(TrainingRun):
    """``rdistill finetune``'s result (OUT/finetune.json): the few-shot selection (scenes, or frames for
    SemanticKITTI, and the rule that picked them) and the evaluation on val."""
    OPTIONAL = ("train_scenes", "train_frames", "evaluation")
    train_samples: int
    few_shot_rule: str
    fraction: float
    mode: str
    from_scratch: bool
    dataset: str
    notes: list[str]
    config: dict
    train_scenes: list[str] | None = None
    train_frames: list[str] | None = None
    evaluation: Evaluation | None = None

    @property
    def trained_on(self) -> str:
        return (f"{len(self.train_frames)} frames" if self.train_frames is not None
                else f"{len(self.train_scenes)} scenes")


@dataclass(kw_only=True)
class TeacherSummary(Result):
    """What ``precompute`` measures of a complete feature store (its summary.json beside the run counters): the
    teacher's structure (U, T, the mean cosine between classes) and 2D zero-shot accuracy at the lidar-paired
    pixels, how its errors fall (metrics/teacher_errors.py), its zero-shot mIoU at the val points (the teacher
    ceiling; None with ``teacher_zero_shot_note`` when val has no labels), and the store's size."""
    OPTIONAL = ("teacher_zero_shot_split", "teacher_zero_shot_per_class_iou", "teacher_zero_shot_note")
    uniformity: float
    tolerance: float
    mean_cosine_between_classes: float
    zero_shot_pixel_accuracy: float
    near_class_error_share: float | None
    accuracy_small_classes: float | None
    accuracy_large_classes: float | None
    summary_features: int
    samples: int
    bytes_on_disk: int
    bytes_per_sample: float
    min_depth: float
    synthetic: bool
    teacher_zero_shot_miou: float | None
    teacher_zero_shot_split: str | None = None
    teacher_zero_shot_per_class_iou: dict[str, float | None] | None = None
    teacher_zero_shot_note: str | None = None


@dataclass(kw_only=True)
class Precomputation(Result):
    """``rdistill precompute``'s result: what this run computed and kept, the superpixels when asked, whether the
    store is complete (else how many samples other shards still owe) and, once it is, the :class:`TeacherSummary`
    (written flat into STORE/summary.json)."""
    OPTIONAL = ("superpixels", "missing", "summary")
    teacher: str
    computed: int
    skipped: int
    store: str
    complete: bool
    seconds: float
    superpixels: dict | None = None
    missing: int | None = None
    summary: TeacherSummary | None = None

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        return {**out.pop("summary", {}), **out}


@dataclass(kw_only=True)
class Rendering(Score):
    """``rdistill render``'s result (OUT/render.json): the drawn sample, what labelled it (a ``checkpoint``, or the
    teacher's ``features``) and, for a labelled sample, its score; the figures in ``files``."""
    OPTIONAL = ("miou_null_reason", "checkpoint", "features")
    mode: str
    dataset: str
    dataroot: str
    split: str
    sample: str
    scene: str
    points: int
    pairs: int
    min_depth: float
    labelled: bool
    class_names: list[str]
    synthetic: bool
    checkpoint: str | None = None
    features: str | None = None
    files: dict = field(default_factory=dict)


@dataclass(kw_only=True)
class QueryAnswer(Result):
    """``rdistill query``'s result (OUT/query.json): per query its synonyms, mean and max score over the scored
    points and how many points it answers best; how the queries were embedded (``text_tower``, and the prompts
    file and template count of an open_clip teacher); the scores and figures in ``files``."""
    OPTIONAL = ("checkpoint", "prompts", "templates")
    mode: str
    features: str
    teacher: str
    text_tower: str
    dataset: str
    dataroot: str
    split: str
    sample: str
    scene: str
    points: int
    points_scored: int
    min_depth: float
    synthetic: bool
    queries: dict[str, dict]
    checkpoint: str | None = None
    prompts: str | None = None
    templates: int | None = None
    files: dict = field(default_factory=dict)


@dataclass(kw_only=True)
class Analysis(Result):
    """``rdistill analyze``'s result (OUT/analysis.json): uniformity, tolerance and modality gap of the student's
    3D features against the teacher's 2D features of the same pairs (docs/method.md). A metric that was not asked
    for, or is undefined on these features, is None with its reason in ``null_reasons``."""
    OPTIONAL = ("plot",)
    checkpoint: str
    features: str
    split: str
    teacher: str
    synthetic: bool
    metrics: list[str]
    pairs_per_class: int
    pairs: int
    class_counts: dict[str, int]
    uniformity_3d: float | None = None
    uniformity_2d: float | None = None
    tolerance_3d: float | None = None
    tolerance_2d: float | None = None
    modality_gap: float | None = None
    null_reasons: dict[str, str] = field(default_factory=dict)
    plot: str | None = None


@dataclass(kw_only=True)
class Inspection(Result):
    """``rdistill inspect``'s result (OUT/inspect.json): scenes, samples per split, points per class, point-pixel
    pairs per camera and the share of points paired with at least one pixel."""
    dataroot: str
    dataset: str
    version: str
    scenes: int
    samples: int
    samples_per_split: dict[str, int]
    points: int
    paired_points: int
    paired_fraction: float
    points_per_class: dict[str, int]
    pairs_per_camera: dict[str, int]
    notes: list[str]


@dataclass(kw_only=True)
class TownWritten(Result):
    """What ``rdistill make-sim`` wrote: scenes, samples and the folder (and, in SemanticKITTI format, the frames
    of each sequence)."""
    OPTIONAL = ("sequences",)
    scenes: int
    samples: int
    root: str
    sequences: dict[str, int] | None = None


@dataclass(kw_only=True)
class ToyResult(Result):
    """``rdistill toy``'s result (OUT/toy.json): per setup (1 and 3 clusters) the source space's U and T and, per
    loss, the final U and T of the learnt space and its uniformity curve; the plots."""
    config: dict
    plots: list[str]
    setups: dict[str, dict]
