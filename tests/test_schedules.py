"""--schedule / --warmup_steps: optax schedules, through tracking, logging and resume."""

import dataclasses
import json
import math

import pytest

from bnjax.train import programs, trainer
from bnjax.train.config import Config
from _helpers import TS, TIMING

# 16 steps per epoch x 3 epochs = 48 steps.
COSINE = dataclasses.replace(TS, schedule='cosine', warmup_steps=8)


def _lines(workdir):
  return [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]


@pytest.mark.parametrize('schedule, warmup, expected', [
    # hand values: lr 0.05, T = 48 steps
    ('constant', 8, {0: 0.0, 4: 0.025, 8: 0.05, 47: 0.05}),
    ('cosine', 8, {4: 0.025, 8: 0.05, 28: 0.025, 47: 0.05 * 0.5 * (1 + math.cos(math.pi * 39 / 40))}),
    ('step', 0, {0: 0.05, 23: 0.05, 24: 0.005, 35: 0.005, 36: 0.0005, 47: 0.0005}),
])
def test_schedule_values_against_hand_formulas(schedule, warmup, expected):
  config = dataclasses.replace(TS, schedule=schedule, warmup_steps=warmup)
  assert config.total_steps() == 48
  lr = programs.learning_rate_schedule(config)
  for t, value in expected.items():
    assert float(lr(t)) == pytest.approx(value, rel=1e-5, abs=1e-9), t


def test_constant_without_warmup_is_the_plain_value():
  assert programs.learning_rate_schedule(TS) == TS.learning_rate


def test_lines_log_the_scheduled_rate_and_tracking_uses_it(tmp_path):
  trainer.train(COSINE, tmp_path, progress=False)
  lr = programs.learning_rate_schedule(COSINE)
  for line in _lines(tmp_path):
    current = float(lr(line['step'] - 1))
    assert line['learning_rate'] == pytest.approx(current, rel=1e-6)
    # SGD's effective LR is the current lr over the squared weight norm.
    if current > 0:
      assert line['effective_lr/dense'] == pytest.approx(
          current / line['weight_norm/dense'] ** 2, rel=1e-4)


def test_resume_restores_the_schedule_position_exactly(tmp_path):
  whole = trainer.train(COSINE, tmp_path / 'whole', progress=False)
  trainer.train(COSINE, tmp_path / 'split', progress=False, stop_after=8)
  resumed = trainer.train(COSINE, tmp_path / 'split', progress=False)
  assert resumed['test_loss'] == whole['test_loss']
  strip = lambda lines: [{k: v for k, v in l.items() if k not in TIMING} for l in lines]
  assert strip(_lines(tmp_path / 'split')) == strip(_lines(tmp_path / 'whole'))
  constant = trainer.train(TS, tmp_path / 'constant', progress=False)
  assert constant['test_loss'] != whole['test_loss']  # the schedule did act


@pytest.mark.parametrize('change, match', [
    (dict(schedule='linear'), '--schedule: must be one of'),
    (dict(warmup_steps=-1), '--warmup_steps: must be >= 0'),
    (dict(warmup_steps=48), "--warmup_steps: 48 must be below the run's 48 steps"),
])
def test_bad_schedules_are_refused(change, match):
  with pytest.raises(ValueError, match=match):
    dataclasses.replace(TS, **change).validate()


def test_decoupled_decay_follows_the_schedule():
  # AdamW's decay per step is lr_t * lambda: zero during the first warmup step.
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  config = dataclasses.replace(TS, optimizer='adam', regularizer='decoupled',
                               weight_decay=0.1, momentum=0.0, warmup_steps=4)
  tx = programs.build_optimizer(config)
  params = {'dense': {'kernel': jnp.ones((3, 1))}}
  zero = {'dense': {'kernel': jnp.zeros((3, 1))}}
  u, state = tx.update(zero, tx.init(params), params)
  assert float(jnp.max(jnp.abs(u['dense']['kernel']))) == 0.0
  u, _ = tx.update(zero, state, params)  # lr_1 = lr / 4
  assert float(u['dense']['kernel'][0, 0]) == pytest.approx(-0.05 / 4 * 0.1, rel=1e-5)
