"""The fused analytic backward equals autodiff through the plain operations."""

import chex
import jax
import jax.numpy as jnp
from absl.testing import parameterized

from bnjax import norms

X = 2.0 * jax.random.normal(jax.random.key(0), (8, 5, 5, 16)) + 0.7
R = jax.random.normal(jax.random.key(1), X.shape)
SCALE = 1.0 + 0.3 * jax.random.normal(jax.random.key(2), (16,))
BIAS = jax.random.normal(jax.random.key(3), (16,))
TOL = dict(atol=1e-4, rtol=1e-4)

FUSABLE = {
    'batch': lambda x, s, b, fused: norms.batch_norm(
        x, s, b, training=True, fused_backward=fused)[0],
    'batch_nchw': lambda x, s, b, fused: norms.batch_norm(
        jnp.moveaxis(x, -1, 1), s, b, training=True, axis=1, fused_backward=fused)[0],
    'ghost': lambda x, s, b, fused: norms.ghost_batch_norm(
        x, s, b, training=True, virtual_batch_size=2, fused_backward=fused)[0],
    'no_affine': lambda x, s, b, fused: norms.batch_norm(
        x, training=True, fused_backward=fused)[0] * s,
}


def _loss(fn, fused):
  def loss(x, s, b):
    y = fn(x, s, b, fused)
    return jnp.sum(jnp.sin(y) * R.reshape(y.shape))
  return loss


class FusedBackwardTest(chex.TestCase):

  @parameterized.named_parameters(*[(k, k) for k in FUSABLE])
  def test_grad_equals_autodiff(self, name):
    fn = FUSABLE[name]
    grads = [jax.jit(jax.grad(_loss(fn, fused), argnums=(0, 1, 2)))(X, SCALE, BIAS)
             for fused in (True, False)]
    chex.assert_trees_all_close(grads[0], grads[1], **TOL)

  def test_cotangents_on_returned_statistics(self):
    # Loss through y and through the returned mean and variance.
    red = (0, 1, 2)

    def loss(fused):
      def f(x, s, b):
        y, mean, var = norms._standardize(x, s, b, reduction_axes=red,
                                          feature_axes=(3,), epsilon=1e-5,
                                          fused_backward=fused)
        return jnp.sum(jnp.sin(y) * R) + jnp.sum(mean * BIAS) + jnp.sum(jnp.sqrt(var))
      return f

    chex.assert_trees_all_close(jax.grad(loss(True), (0, 1, 2))(X, SCALE, BIAS),
                                jax.grad(loss(False), (0, 1, 2))(X, SCALE, BIAS), **TOL)

  def test_bfloat16_gradients(self):
    xb = X.astype(jnp.bfloat16)
    loss = lambda fused: lambda x: jnp.sum(
        norms.batch_norm(x, SCALE, BIAS, training=True, fused_backward=fused)[0] * R)
    g_fused, g_plain = jax.grad(loss(True))(xb), jax.grad(loss(False))(xb)
    self.assertEqual(g_fused.dtype, jnp.bfloat16)
    chex.assert_trees_all_close(g_fused.astype(jnp.float32), g_plain.astype(jnp.float32),
                                atol=2e-2, rtol=2e-2)

  def test_second_order_reverse_mode(self):
    # Hessian-vector products by reverse-over-reverse work on the fused path.
    v = jax.random.normal(jax.random.key(4), X.shape)

    def hvp(fused):
      f = _loss(FUSABLE['batch'], fused)
      g = lambda x: jnp.vdot(jax.grad(f)(x, SCALE, BIAS), v)
      return jax.grad(g)(X)

    chex.assert_trees_all_close(hvp(True), hvp(False), atol=1e-3, rtol=1e-3)

  def test_forward_mode_needs_plain_autodiff(self):
    f = lambda fused: lambda x: norms.batch_norm(x, training=True,
                                                 fused_backward=fused)[0]
    t = jax.random.normal(jax.random.key(5), X.shape)
    _, jvp_out = jax.jvp(f(False), (X,), (t,))
    # The JVP against central finite differences.
    eps = 1e-3
    fd = (f(False)(X + eps * t) - f(False)(X - eps * t)) / (2 * eps)
    chex.assert_trees_all_close(jvp_out, fd, atol=2e-2, rtol=2e-2)
    with self.assertRaises(TypeError):
      jax.jvp(f(True), (X,), (t,))
