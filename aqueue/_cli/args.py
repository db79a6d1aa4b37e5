"""Argument types of the ``aqueue`` command: each checks one value and names it in the
usage error (exit 2) when it is bad."""

from __future__ import annotations

import argparse
import logging

from .._task import check_queue_name
from ..errors import InvalidQueueName


def queue_name(text: str) -> str:
    try:
        return check_queue_name(text)
    except InvalidQueueName as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def queue_weight(text: str) -> tuple[str, float]:
    """``NAME=WEIGHT`` or ``NAME`` (weight 1); the name is checked by the Worker."""
    name, sep, weight = text.partition("=")
    try:
        value = float(weight) if sep else 1.0
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"weight of queue {name!r} must be a number, got {weight!r}"
        ) from None
    return name, value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


def log_level(text: str) -> str:
    if not isinstance(logging.getLevelName(text.upper()), int):
        raise argparse.ArgumentTypeError(
            f"unknown log level {text!r}: use DEBUG, INFO, WARNING or ERROR"
        )
    return text.upper()
