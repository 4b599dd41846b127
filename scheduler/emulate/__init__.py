"""Beside the pipeline, emulate: the adversary emulation lab that drives podman and stand-in services and checks each detection layer."""
