"""The engine loop (one, shared: ``loop.py``) and its backends: real (JAX, wall clock) and sim
(virtual time); ``build.py`` makes an arm's loop from the config, ``devices.py`` says which
device each executor runs on and each device's budget."""
