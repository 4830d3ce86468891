"""A local worker takes its controller's multiprocessing authkey.

Imported by the worker at start, so it stays light.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from typing import Any

log = logging.getLogger(__name__)

# The controller's multiprocessing authkey, for its local workers only:
# with it, proxies of the controller's multiprocessing.Manager (a dict, an
# event, a lock handed to an app) work in them as in multiprocessing's own
# children. Daemons never get it: a manager listens on this host only.
MP_AUTHKEY_ENV = "ZMQWORKERS_MP_AUTHKEY"


def adopt_controller_authkey() -> bool:
    """In a local worker: take the controller's authkey (and forget the variable).

    Shared memory the controller's app made is the controller's to unlink,
    so this worker does not track the segments it attaches: otherwise its
    resource tracker would unlink them when it exits (Python < 3.13), under
    a controller that may be reusing their names for its next run.
    """
    value = os.environ.pop(MP_AUTHKEY_ENV, None)
    if not value:
        return False
    try:
        authkey = bytes.fromhex(value)
    except ValueError:
        log.warning("ignoring a malformed %s", MP_AUTHKEY_ENV)
        return False
    multiprocessing.current_process().authkey = authkey
    from multiprocessing import resource_tracker

    register = resource_tracker.register

    def register_unless_shared_memory(name: Any, rtype: str) -> None:
        if rtype != "shared_memory":
            register(name, rtype)

    resource_tracker.register = register_unless_shared_memory
    return True
