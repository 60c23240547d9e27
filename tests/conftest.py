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

The longest test files run first (``make test`` passes xdist
``--no-loadscope-reorder``, which keeps this order rather than sorting files
by their number of tests), so that the two workers finish together instead of
one waiting on a long file handed out last.
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


# Test files by total time, longest first (measured 2026-12-05 on the 2-core CI
# machine: 120 s down to 20 s), the two real-data files apart so that they do
# not start together (the suite: 655 s and 666 s apart, 669 s together, within
# run-to-run noise); the others follow in collection order.
LONGEST_FIRST = (
    'test_sweep.py', 'test_real_data.py', 'test_faults.py', 'test_train.py',
    'test_real_data_studies.py', 'test_studies.py', 'test_stops.py', 'test_models.py',
    'test_teacher_student.py', 'test_readme.py', 'test_norms.py', 'test_dropin.py',
    'test_theory.py', 'test_fit.py', 'test_transforms.py', 'test_graph.py',
    'test_rotational.py', 'test_nnx.py', 'test_distributed.py', 'test_batch_renorm.py',
    'test_adamp.py', 'test_layers.py')


def pytest_collection_modifyitems(config, items):
  del config
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable otherwise


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE:
    shutil.rmtree(os.environ[_CACHE_VARIABLE], ignore_errors=True)
