"""Test setup: 4 virtual CPU devices for the multi-device tests, float32 matmuls.

XLA reads the flag when the backend starts, so it is set before jax is used.
The tests compare with references to ~1e-5, which GPU TF32 convolutions
(JAX's default precision there) do not reach; on CPU this changes nothing.
"""
import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=4').strip()
os.environ.setdefault('JAX_DEFAULT_MATMUL_PRECISION', 'highest')
