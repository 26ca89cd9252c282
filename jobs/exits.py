"""How a job ends: one exit status per outcome, and domain errors as one clear line.

    Exit            the exit statuses of every job (README, docs/reliability.md)
    run_main(fn)    runs a job body; errors of the taxonomy (unet_core/errors.py) become their status
"""
from __future__ import annotations

import logging
from enum import IntEnum

from unet_core.errors import ConfigError, InputError, InternalError, StorageError

log = logging.getLogger("unet")


class Exit(IntEnum):
    """The exit status of every job (README, docs/reliability.md)."""

    OK = 0  # everything succeeded
    INTERNAL = 1  # a bug: an unexpected exception (with its traceback)
    USAGE = 2  # a usage or configuration error
    SOME_FAILED = 3  # some items failed; every other item is written
    STOPPED = 4  # the job was stopped (`unet submit --stop`)
    STORAGE = 5  # the object store is unavailable or refuses the output
    UNAVAILABLE = 5  # a service the job needs is not there: the store, or within --max-wait a training's workers
    INTERRUPTED = 130  # Ctrl-C; completed work is kept


def run_main(fn, argv) -> int:
    """Run a job body; domain errors become one clear line and their exit status, not a traceback."""
    try:
        return int(fn(argv) or 0)
    except StorageError as exc:
        log.error("%s", exc)
        return Exit.STORAGE
    except (ConfigError, InputError) as exc:  # an input that cannot be used as a whole is a usage error
        log.error("%s", exc)
        return Exit.USAGE
    except InternalError as exc:
        log.error("%s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
        return Exit.INTERNAL
    except KeyboardInterrupt:
        log.error("interrupted; completed work is kept, re-run the same command to resume")
        return Exit.INTERRUPTED
