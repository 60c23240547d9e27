"""Test setup: 4 virtual CPU devices for the multi-device tests, float32 matmuls,
one XLA compilation cache for the whole run.

XLA reads the flag when the backend starts, so it is set before jax is used.
The tests compare with references to ~1e-5, which GPU TF32 convolutions
(JAX's default precision there) do not reach; on CPU this changes nothing.

Many tests train the same small configurations, in the pytest-xdist workers
and in the binaries they start: the first process to compile a program
writes it to a persistent compilation cache in a temporary folder that the
process which made it (the xdist controller, or pytest alone) removes at the
end; the workers and binaries inherit its path through the environment. A
cached executable is the one that would have been compiled: the same numbers.
"""
import os
import shutil
import tempfile

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=4').strip()
os.environ.setdefault('JAX_DEFAULT_MATMUL_PRECISION', 'highest')

_CACHE_VARIABLE = 'BNJAX_TEST_XLA_CACHE'
_OWN_CACHE = _CACHE_VARIABLE not in os.environ
if _OWN_CACHE:
  os.environ[_CACHE_VARIABLE] = tempfile.mkdtemp(prefix='bnjax-test-xla-cache-')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.environ[_CACHE_VARIABLE])
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE:
    shutil.rmtree(os.environ[_CACHE_VARIABLE], ignore_errors=True)
