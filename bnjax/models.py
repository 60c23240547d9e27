"""flax.linen models of the study, each with a choice of normalization.

``norm`` (every model): ``batch``, ``population``, ``mean_only``,
``variance_only``, ``ghost``, ``layer``, ``group``, ``weight`` or ``none``.
``mean_only`` and ``variance_only`` are Luo et al.'s (2019) ablations, so
they weight-normalize the kernel too (WN + mean-only BN with WN's gain;
WN without gain + variance-only BN with scale and bias). Layers followed by
no shift (``none``, ``weight``) get a bias; all others are bias-free, the
norm's beta taking its place.

Scale-invariant kernels (per unit) are the convolution/hidden kernels under
``batch``, ``ghost``, ``mean_only``, ``variance_only`` and ``weight``
(for the last three, the raw kernel ``v`` inside ``WeightNorm``); the
classifier ``head`` is never scale-invariant.
"""

from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
import optax

from bnjax import layers

NORMS = ('batch', 'population', 'mean_only', 'variance_only', 'ghost', 'layer', 'group',
         'weight', 'none')
PER_UNIT_INVARIANT = ('batch', 'ghost', 'mean_only', 'variance_only', 'weight')
MODELS = ('convnet', 'resnet20', 'perceptron')


def _check_norm(norm):
  if norm not in NORMS:
    raise ValueError(f'norm must be one of {NORMS}, got {norm!r}.')


def normalized(x, make_layer: Callable[..., nn.Module], norm: str, *, train: bool,
               name: str, axis_name: Optional[str] = None, virtual_batch_size: int = 32,
               num_groups: int = 8, spatial: bool = True, epsilon: Optional[float] = None):
  r"""``norm(layer(x))`` for a Dense/Conv built by ``make_layer(use_bias=...)``.

  .. math::
    y = \mathrm{norm}(x W + b)

  Call from inside a compact method; submodules are named ``name`` (the
  layer, or its WeightNorm wrapper) and ``name + '_norm'``.

  Args:
    x: the input.
    make_layer: ``make_layer(use_bias=..., name=...)`` builds the Dense/Conv.
    norm: the normalization (one of ``bnjax.models.NORMS``).
    train: batch statistics (True) or running statistics (False).
    name: the layer's name.
    axis_name, virtual_batch_size, num_groups: as the models' attributes.
    spatial: whether ``x`` has spatial axes (instance-style norms need them).
    epsilon: added to the variance by the norm (``None``: the layer's default,
      flax's).

  Returns:
    The normalized output.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import flax.linen as nn
    >>> from bnjax import models
    >>> class Block(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     return models.normalized(x, lambda **k: nn.Dense(2, **k), 'batch',
    ...                              train=True, name='fc', spatial=False)
    >>> variables = Block().init(jax.random.key(0), jnp.ones((4, 3)))
    >>> sorted(variables['params'])
    ['fc', 'fc_norm']

  References:
    Ioffe & Szegedy, "Batch Normalization", ICML 2015, arXiv 1502.03167,
    section 3.2 (normalizing ``x W``, the bias subsumed by beta).
  """
  _check_norm(norm)
  use_bias = norm in ('none', 'weight')
  if norm in ('weight', 'mean_only', 'variance_only'):
    # Unbound, so that the WeightNorm wrapper adopts it as `layer_instance`.
    inner = make_layer(use_bias=use_bias, parent=None)
    x = layers.WeightNorm(inner, use_scale=norm != 'variance_only', name=name)(x)
  else:
    x = make_layer(use_bias=use_bias, name=name)(x)
  ra = not train
  norm_name = name + '_norm'
  eps = {} if epsilon is None else dict(epsilon=epsilon)
  batch_kw = dict(use_running_average=ra, axis_name=axis_name, name=norm_name, **eps)
  if norm == 'batch':  # bnjax's statistics and analytic backward (the studies')
    x = layers.BatchNorm(use_fast_variance=None, **batch_kw)(x)
  elif norm == 'population':
    x = layers.PopulationNorm(**batch_kw)(x)
  elif norm == 'mean_only':
    x = layers.MeanOnlyBatchNorm(use_scale=False, **batch_kw)(x)
  elif norm == 'variance_only':
    x = layers.VarianceOnlyBatchNorm(**batch_kw)(x)
  elif norm == 'ghost':
    x = layers.GhostBatchNorm(virtual_batch_size=virtual_batch_size, **batch_kw)(x)
  elif norm == 'layer':
    axes = tuple(range(1, x.ndim)) if spatial else -1
    x = layers.LayerNorm(reduction_axes=axes, name=norm_name, **eps)(x)
  elif norm == 'group':
    x = layers.GroupNorm(num_groups=min(num_groups, x.shape[-1]), name=norm_name, **eps)(x)
  return x


class _Normalized(nn.Module):
  """The normalization settings every model shares, and a helper that applies them."""
  norm: str = 'batch'
  axis_name: Optional[str] = None
  virtual_batch_size: int = 32
  num_groups: int = 8
  epsilon: Optional[float] = None

  def _normalized(self, x, make_layer, *, train: bool, name: str, spatial: bool = True):
    return normalized(x, make_layer, self.norm, train=train, name=name,
                      axis_name=self.axis_name, virtual_batch_size=self.virtual_batch_size,
                      num_groups=self.num_groups, spatial=spatial, epsilon=self.epsilon)

  def _settings(self) -> dict:
    return dict(norm=self.norm, axis_name=self.axis_name,
                virtual_batch_size=self.virtual_batch_size, num_groups=self.num_groups,
                epsilon=self.epsilon)


class ConvNet(_Normalized):
  r"""The seed's simple 4-layer ConvNet (van Laarhoven 2017).

  .. math::
    f(x) = W_{\text{head}}\, \phi_3(\phi_2(\phi_1(x))), \qquad
    \phi_i(h) = \operatorname{maxpool}(\operatorname{relu}(\mathrm{norm}(h * K_i)))

  Three 3x3 convolutions (widths ``widths``), each followed by the
  normalization, ReLU and 2x2 max-pooling, then a dense classifier ``head``.

  Attributes:
    widths: the three convolutions' widths.
    num_classes: outputs of the head.
    norm: the normalization (one of ``bnjax.models.NORMS``).
    axis_name: mapped axis for cross-device batch statistics.
    virtual_batch_size: ghost batch norm's virtual batch.
    num_groups: group norm's groups.
    epsilon: the norms' epsilon (None: each layer's default, flax's).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from bnjax import models
    >>> net, x = models.ConvNet(widths=(4, 8, 8)), jnp.ones((2, 28, 28, 1))
    >>> variables = jax.eval_shape(lambda k: net.init(k, x, train=False), jax.random.key(0))
    >>> jax.eval_shape(lambda v: net.apply(v, x, train=False), variables).shape
    (2, 10)

  References:
    van Laarhoven, "L2 Regularization versus Batch and Weight
    Normalization", 2017, arXiv 1706.05350, section 5.
  """
  widths: Sequence[int] = (32, 64, 128)
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = True):
    for i, width in enumerate(self.widths):
      x = self._normalized(x, lambda **k: nn.Conv(width, (3, 3), **k), train=train,
                           name=f'conv{i + 1}')
      x = nn.max_pool(nn.relu(x), (2, 2), (2, 2))
    return nn.Dense(self.num_classes, name='head')(x.reshape(x.shape[0], -1))


class _BasicBlock(_Normalized):
  width: int = 16
  stride: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    s = (self.stride, self.stride)
    y = self._normalized(x, lambda **k: nn.Conv(self.width, (3, 3), s, **k), train=train,
                         name='conv1')
    y = self._normalized(nn.relu(y), lambda **k: nn.Conv(self.width, (3, 3), **k),
                         train=train, name='conv2')
    if x.shape != y.shape:
      x = self._normalized(x, lambda **k: nn.Conv(self.width, (1, 1), s, **k),
                           train=train, name='shortcut')
    return nn.relu(x + y)


class ResNet20(_Normalized):
  r"""ResNet-20 for CIFAR (He et al. 2016): 3 stages x 3 basic blocks, widths 16/32/64.

  .. math::
    h_{l+1} = \operatorname{relu}\big(s(h_l) + \mathrm{norm}(\operatorname{relu}(\mathrm{norm}(h_l * K_1)) * K_2)\big)

  Shortcuts ``s`` that change shape are 1x1 convolutions with the
  normalization; the others are the identity.

  Attributes:
    num_classes: outputs of the head.
    norm: the normalization (one of ``bnjax.models.NORMS``).
    axis_name: mapped axis for cross-device batch statistics.
    virtual_batch_size: ghost batch norm's virtual batch.
    num_groups: group norm's groups.
    epsilon: the norms' epsilon (None: each layer's default, flax's).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from bnjax import models
    >>> variables = jax.eval_shape(
    ...     lambda k: models.ResNet20().init(k, jnp.ones((1, 8, 8, 3)), train=False),
    ...     jax.random.key(0))
    >>> sorted(variables['params'])[:3]
    ['head', 'stage1_block1', 'stage1_block2']

  References:
    He et al., "Deep Residual Learning for Image Recognition", CVPR 2016,
    arXiv 1512.03385, section 4.2.
  """
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.relu(self._normalized(x, lambda **k: nn.Conv(16, (3, 3), **k), train=train,
                                 name='stem'))
    for stage, width in enumerate((16, 32, 64)):
      for block in range(3):
        stride = 2 if stage > 0 and block == 0 else 1
        x = _BasicBlock(width=width, stride=stride, **self._settings(),
                        name=f'stage{stage + 1}_block{block + 1}')(x, train)
    return nn.Dense(self.num_classes, name='head')(jnp.mean(x, axis=(1, 2)))


class Perceptron(_Normalized):
  r"""Luo et al.'s (2019) building block: kernel layer, normalization, activation.

  .. math::
    y = g\big(\mathrm{norm}(w^\top x)\big)

  with one unit; ``activation`` ``g`` is ``'linear'`` or ``'relu'``. Returns
  shape ``(batch,)``. Layer and group norm over a single unit are constant,
  so they are refused.

  Attributes:
    activation: ``'linear'`` or ``'relu'``.
    norm: the normalization (one of ``bnjax.models.NORMS``).
    axis_name: mapped axis for cross-device batch statistics.
    virtual_batch_size: ghost batch norm's virtual batch.
    num_groups: group norm's groups.
    epsilon: the norms' epsilon (None: each layer's default, flax's).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from bnjax import models
    >>> net = models.Perceptron(activation='relu')
    >>> variables = net.init(jax.random.key(0), jnp.ones((4, 3)))
    >>> net.apply(variables, jnp.ones((4, 3)), train=False).shape
    (4,)

  References:
    Luo et al., "Towards Understanding Regularization in Batch
    Normalization", ICLR 2019, arXiv 1809.00846, section 2 (eq. 1).
  """
  activation: str = 'linear'

  @nn.compact
  def __call__(self, x, train: bool = True):
    if self.norm in ('layer', 'group'):
      raise ValueError(f"norm='{self.norm}' normalizes over the perceptron's single "
                       'unit, which makes its output constant.')
    if self.activation not in ('linear', 'relu'):
      raise ValueError(f"activation must be 'linear' or 'relu', got {self.activation!r}.")
    h = self._normalized(x, lambda **k: nn.Dense(1, **k), train=train, name='dense',
                         spatial=False)
    h = nn.relu(h) if self.activation == 'relu' else h
    return h[:, 0]


def build(name: str, norm: str, *, num_classes: int = 10, axis_name: Optional[str] = None,
          virtual_batch_size: int = 32, activation: str = 'linear', width: int = 32,
          epsilon: Optional[float] = None) -> nn.Module:
  r"""The model ``name`` (``convnet``, ``resnet20`` or ``perceptron``).

  .. math::
    \text{build}(\text{name}, \text{norm}) = \text{Model}_{\text{name}}(\text{norm})

  Args:
    name: one of ``bnjax.models.MODELS``.
    norm: one of ``bnjax.models.NORMS``.
    num_classes: outputs of the classifier head.
    axis_name: mapped axis for cross-device batch statistics.
    virtual_batch_size: ghost batch norm's virtual batch.
    activation: the perceptron's activation.
    width: the ConvNet's first width (then ``2 * width`` and ``4 * width``).
    epsilon: the norms' epsilon (``None``: each layer's default).

  Returns:
    An unbound flax.linen module.

  Example:
    >>> from bnjax import models
    >>> models.build('convnet', 'batch', width=8).widths
    (8, 16, 32)

  References:
    van Laarhoven 2017, arXiv 1706.05350 (ConvNet); He et al. 2016, arXiv
    1512.03385 (ResNet-20); Luo et al. 2019, arXiv 1809.00846 (perceptron).
  """
  _check_norm(norm)
  settings = dict(norm=norm, axis_name=axis_name, virtual_batch_size=virtual_batch_size,
                  epsilon=epsilon)
  if name == 'convnet':
    return ConvNet(widths=(width, 2 * width, 4 * width), num_classes=num_classes, **settings)
  if name == 'resnet20':
    return ResNet20(num_classes=num_classes, **settings)
  if name == 'perceptron':
    return Perceptron(activation=activation, **settings)
  raise ValueError(f'model must be one of {MODELS}, got {name!r}.')


def objective(outputs, targets, regression: bool):
  r"""Mean loss and metrics: cross-entropy and accuracy, or squared error.

  .. math::
    L = -\frac{1}{B}\sum_b \log \operatorname{softmax}(o_b)_{y_b}
    \quad\text{or}\quad L = \frac{1}{B}\sum_b (o_b - y_b)^2

  Args:
    outputs: model outputs, logits ``(B, classes)`` or predictions ``(B,)``.
    targets: integer labels or regression targets, ``(B,)``.
    regression: squared error (True) or cross-entropy (False).

  Returns:
    ``(loss, metrics)``; metrics hold ``loss`` and, for classification,
    ``accuracy``.

  Example:
    >>> import jax.numpy as jnp
    >>> from bnjax import models
    >>> loss, m = models.objective(jnp.array([1.0, 3.0]), jnp.array([0.0, 1.0]), True)
    >>> float(loss)  # (1 + 4) / 2
    2.5

  References:
    Luo et al. 2019, arXiv 1809.00846, section 2 (squared error of the
    teacher-student task).
  """
  if regression:
    loss = jnp.mean(jnp.square(outputs - targets))
    return loss, {'loss': loss}
  loss = optax.softmax_cross_entropy_with_integer_labels(outputs, targets).mean()
  return loss, {'loss': loss, 'accuracy': jnp.mean(jnp.argmax(outputs, -1) == targets)}
