"""``python -m zmqworkers.pydidas``: pydidas's GUI with zmqworkers' runners installed.

Daemons instead of local workers: set ``ZMQWORKERS_PYDIDAS_BIND`` and
``ZMQWORKERS_PYDIDAS_KEY_FILE`` first (see :func:`zmqworkers.pydidas.install`).
"""

from zmqworkers.pydidas import install


def main() -> None:
    install()
    from pydidas_scripts.pydidas_gui import open_gui

    open_gui()


if __name__ == "__main__":
    main()
