"""Test setup: 4 virtual CPU devices for the multi-device tests.

XLA reads the flag when the backend starts, so it is set before jax is used.
"""
import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=4').strip()
