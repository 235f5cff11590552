"""rdistill: image-to-lidar relational distillation (Mahmoud, Harakeh, Waslander, ECCV 2024)."""

__version__ = "0.1.0"
