"""The faces' Qt-free side: ``Cluster`` (the executor), the task drivers and apps.

Nothing here imports Qt; :mod:`zmqworkers.qt` turns the drivers' callbacks
into signals.
"""
