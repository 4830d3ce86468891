"""What a worker says while no controller answers it, and how it exits then.

Nothing on the wire tells a worker why it is not served: a controller drops
a hello it cannot verify without a word (answering would help whoever forges
them), and nothing listening looks like a slow network. So a worker waiting
for an answer reports it, at WARNING, after a first bound and then at every
doubling of it, naming the likely causes:

- no connection at all: a wrong address, no controller there yet, a firewall;
- connected but no answer to the hello: most likely a wrong key.
"""

from __future__ import annotations

# Exit status of a daemon whose --death-timeout ran out with no controller:
# it did not finish its job, and a supervisor or batch script should know.
EXIT_NO_CONTROLLER = 4


class SilenceReport:
    """When, and what, to warn while a hello goes unanswered.

    A pure function of the times it is given: ``due(now)`` is the warning to
    log now, or None. The first comes ``first`` seconds after ``since``, the
    next at twice that, then four times, and so on.
    """

    def __init__(self, address: str, since: float, first: float) -> None:
        self.address = address
        self.since = since
        self.next_at = since + max(first, 0.1)
        self.step = max(first, 0.1)
        self.connected = False

    def due(self, now: float) -> str | None:
        if now < self.next_at:
            return None
        waited = now - self.since
        self.step *= 2
        self.next_at = self.since + self.step
        if self.connected:
            return (
                f"connected to {self.address}, but no answer to the hello in {waited:.0f} s: "
                "most likely a wrong key (the controller drops hellos it cannot verify; "
                "check --key-file or $ZMQWORKERS_KEY), or a controller that is overloaded"
            )
        return (
            f"no connection to {self.address} in {waited:.0f} s: a wrong address or port, "
            "no controller running there (yet), or a firewall in between"
        )
