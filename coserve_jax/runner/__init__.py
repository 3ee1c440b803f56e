"""What every job needs to run arms: the model (``model.py``), JAX's devices (``devices.py``), a
frozen heap while serving (``heap.py``) and the ArmRunner (``arms.py``), which builds each arm's
engine over the real or the simulated backend and runs it on a trace."""
