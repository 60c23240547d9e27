"""Synthetic data: Luo et al. (2019)'s teacher-student regression."""

import numpy as np

from bnjax._validation import check_positive_int
from bnjax.train.data.pipeline import Arrays


def teacher_student(num_train: int, num_test: int, input_dim: int, *,
                    activation: str = 'linear', noise_std: float = 0.1,
                    seed: int = 0) -> dict:
  r"""Luo et al. (2019)'s teacher-student regression data.

  .. math::
    x \sim \mathcal{N}(0, I/N), \quad w^* \sim \mathcal{N}(0, I), \quad
    y = g(w^{*\top} x) + \sigma_\text{noise}\,\varepsilon

  with ``g`` identity (``'linear'``) or ReLU, so ``w*.x ~ N(0, 1)``.

  Args:
    num_train, num_test: examples per split.
    input_dim: ``N``.
    activation: ``'linear'`` or ``'relu'``.
    noise_std: label noise standard deviation.
    seed: seed of the teacher, inputs and noise.

  Returns:
    ``{'train': Arrays, 'test': Arrays, 'teacher': w*}``, float32.

  Example:
    >>> from bnjax.train import data
    >>> d = data.teacher_student(8, 4, 3, noise_std=0.0)
    >>> d['train'].x.shape, d['test'].y.shape, d['teacher'].shape
    ((8, 3), (4,), (3,))

  References:
    Luo et al., "Towards Understanding Regularization in Batch
    Normalization", ICLR 2019, arXiv 1809.00846, section 3.
  """
  if activation not in ('linear', 'relu'):
    raise ValueError(f"activation must be 'linear' or 'relu', got {activation!r}.")
  for name, value in (('num_train', num_train), ('num_test', num_test),
                      ('input_dim', input_dim)):
    check_positive_int(name, value)
  if not noise_std >= 0:
    raise ValueError(f'noise_std must be >= 0, got {noise_std}.')
  rng = np.random.default_rng(seed)
  teacher = rng.standard_normal(input_dim).astype(np.float32)

  def split(n):
    x = (rng.standard_normal((n, input_dim)) / np.sqrt(input_dim)).astype(np.float32)
    h = x @ teacher
    y = np.maximum(h, 0.0) if activation == 'relu' else h
    return Arrays(x, (y + noise_std * rng.standard_normal(n)).astype(np.float32))

  return {'train': split(num_train), 'test': split(num_test), 'teacher': teacher}
