"""The zero-config demonstration: the service on embedded defaults, fed by the device simulators."""
