"""What the three command-line tools share: one-line user errors, argument types, ``--out``.

Every CLI (``lpg-meta-train``, ``lpg-apply``, ``lpg-report``) reports bad input the same
way: one line ``PROG: error: WHAT; HOW TO FIX`` on stderr, exit status 2, no traceback,
nothing written.  ``run_cli`` is the single place that turns exceptions into that line.

    def main(argv=None):
      return cli.run_cli("lpg-apply", lambda: _run(argv), debug="--debug" in (argv or []))
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import traceback
from typing import Callable

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USER_ERROR = 2


class UserError(ValueError):
  """Bad input from the user: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
  """An ``ArgumentParser`` whose errors are ``UserError`` (one line, no usage block)."""

  def error(self, message):
    raise UserError(message)


def one_line(e: BaseException) -> str:
  """The exception's message on a single line (its type name if it has none)."""
  return " ".join(str(e).split()) or type(e).__name__


# ----------------------------------------------------------------- argument types
def _number(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
  if not math.isfinite(value):
    raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
  return value


def _at_least(value, text: str, low, strict: bool):
  if value < low or (strict and value == low):
    raise argparse.ArgumentTypeError(f"{text!r} must be {'>' if strict else '>='} {low}")
  return value


def finite_float(text: str) -> float:
  """A finite float (refuses nan and inf)."""
  return _number(text)


def positive_float(text: str) -> float:
  """A finite float > 0."""
  return _at_least(_number(text), text, 0, strict=True)


def nonnegative_float(text: str) -> float:
  """A finite float >= 0."""
  return _at_least(_number(text), text, 0, strict=False)


def _integer(text: str) -> int:
  """An integer; ``1e6`` and ``1_000_000`` are accepted when they are whole numbers."""
  try:
    return int(text)
  except ValueError:
    pass
  value = _number(text)
  if value != int(value):
    raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
  return int(value)


def integer(text: str) -> int:
  """Any whole number (a seed, say)."""
  return _integer(text)


def positive_int(text: str) -> int:
  """A whole number >= 1 (counts, steps; ``1e6`` accepted)."""
  return _at_least(_integer(text), text, 1, strict=False)


def nonnegative_int(text: str) -> int:
  """A whole number >= 0."""
  return _at_least(_integer(text), text, 0, strict=False)


def widths(text: str) -> tuple[int, ...]:
  """A comma list of layer widths, each a whole number >= 1 (``64,64``)."""
  parts = [p.strip() for p in text.split(",")]
  if not all(parts):
    raise argparse.ArgumentTypeError(f"expected widths like 64,64, got {text!r}")
  return tuple(positive_int(p) for p in parts)


# ----------------------------------------------------------------------- --out
def prepare_out_dir(path: str, *, flag: str = "--out") -> str:
  """Creates ``path`` (and parents) and proves it writable, before any work is done.

  Raises ``UserError`` if ``path`` (or a parent) is a file, or if it cannot be created
  or written.  Returns the absolute path.
  """
  path = os.path.abspath(path)
  probe_dir = path
  while not os.path.exists(probe_dir):
    probe_dir = os.path.dirname(probe_dir)
  if not os.path.isdir(probe_dir):
    raise UserError(f"{flag} {path}: {probe_dir} is a file, not a directory; choose another path")
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".write-test-{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UserError(f"{flag} {path} is not writable ({e.strerror or one_line(e)}); choose "
                    "a directory you can write to") from None
  return path


def is_empty_dir(path: str) -> bool:
  """True if ``path`` does not exist or is a directory with no entries."""
  return not os.path.exists(path) or (os.path.isdir(path) and not os.listdir(path))


# -------------------------------------------------------------------- the runner
def user_error_types() -> tuple[type[BaseException], ...]:
  """Exceptions that mean bad input (and print as one line) in every CLI."""
  from lpg.artifact import ArtifactError
  types: list[type[BaseException]] = [UserError, ArtifactError]
  try:
    from meta_test.host import MissingExtraError
    types.append(MissingExtraError)
  except ImportError:  # pragma: no cover
    pass
  return tuple(types)


def run_cli(prog: str, fn: Callable[[], int], *, debug: bool = False,
            extra_errors: tuple[type[BaseException], ...] = ()) -> int:
  """Runs ``fn`` and returns its exit status; a user error prints one line and returns 2.

  ``debug`` additionally prints the traceback (for a user's own failing factory, say).
  """
  try:
    return fn()
  except user_error_types() + tuple(extra_errors) as e:
    if debug:
      traceback.print_exc()
    print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
    return EXIT_USER_ERROR
