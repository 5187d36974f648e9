"""Heads on top of an encoder, and ``TaskModel`` = encoder + head."""

from robustssl.heads.task_model import TASKS, TaskModel

__all__ = ["TASKS", "TaskModel"]
