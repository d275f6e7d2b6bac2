"""A quiet start for the command: TensorFlow's, CUDA's and DALI's start-up messages hidden, while
Python warnings (dalidw's SlowPathWarning among them) and errors still show."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator

#: What TensorFlow's native libraries print while they load, before any log level applies: absl's
#: notice "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
#: and its I/W/E lines such as "I0000 00:00:1795701859.082770 17904 cudart_stub.cc:31] Could not
#: find cuda drivers on your machine, GPU will not be used."
NATIVE_LOG_LINE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)"
                             r"|[IWE]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w.\-]+:\d+\] )")


def drop_native_log_lines(text: str) -> str:
    """``text`` without :data:`NATIVE_LOG_LINE` lines and the tab-indented or "To enable" lines that
    continue them; every other line (Python warnings, errors) is kept."""
    kept, dropping = [], False
    for line in text.splitlines(keepends=True):
        continues = line.startswith(("\t", "To enable the following instructions"))
        dropping = bool(NATIVE_LOG_LINE.match(line)) or (dropping and continues)
        if not dropping:
            kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def native_stderr_filtered() -> Iterator[None]:
    """Hold what is written to file descriptor 2 (native libraries and Python alike) until the block
    ends, then write it back without the native start-up log lines."""
    import faulthandler

    sys.stderr.flush()
    saved = os.dup(2)
    crash_report = faulthandler.is_enabled()
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        if crash_report:  # a crash meanwhile is still reported on the real stderr
            faulthandler.enable(file=saved)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if crash_report:
                faulthandler.enable()
            held.seek(0)
            sys.stderr.write(drop_native_log_lines(held.read().decode(errors="replace")))
            sys.stderr.flush()


def quiet_startup(args: argparse.Namespace) -> None:
    """Hide TensorFlow's, CUDA's and DALI's start-up messages: TF_CPP_MIN_LOG_LEVEL=3 unless already
    set, and TensorFlow, where the command uses it, imported with its native start-up lines
    dropped. Python warnings (dalidw's SlowPathWarning among them) and errors still show."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # training imports TensorFlow where it is installed, on every backend: Keras's set_random_seed
    # seeds it too (for tf.data shuffles)
    uses_tf = args.command in ("train", "demo")
    if uses_tf and importlib.util.find_spec("tensorflow") is not None:
        with native_stderr_filtered():
            import tensorflow  # noqa: F401
