"""bnjax.train.sweep.train_many: worker processes and vectorized groups against one-by-one runs."""

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import pathlib
import re
import tempfile

import numpy as np
import pytest

from _helpers import TIMING, TS, fake_fashion_mnist
from bnjax.train import programs, sweep, trainer, vectorized
from bnjax.train import workdir as workdirs
from bnjax.train.config import Config

# Short runs (24 steps, a line every 4, a checkpoint every 8, a test evaluation every 8).
BASE = dataclasses.replace(TS, num_train=192, num_test=64, input_dim=8, num_epochs=4,
                           batch_size=32, eval_every=8)

# Every optimizer and regularizer, projection and gamma decay; members of a row differ
# only in what a vectorized group vmaps over (learning rate, momentum, decay, seed).
FAMILIES = {
    'sgd_l2': [dict(optimizer='sgd', momentum=0.0, learning_rate=0.1, weight_decay=1e-2),
               dict(optimizer='sgd', momentum=0.0, learning_rate=0.02, weight_decay=1e-3,
                    seed=1)],
    'momentum_decoupled': [
        dict(optimizer='sgd', momentum=0.9, regularizer='decoupled', weight_decay=1e-2),
        dict(optimizer='sgd', momentum=0.5, regularizer='decoupled', weight_decay=0.1,
             learning_rate=0.01, seed=2)],
    'adam_l2_gamma': [
        dict(optimizer='adam', learning_rate=1e-2, weight_decay=1e-3, gamma_decay=1e-2),
        dict(optimizer='adam', learning_rate=3e-3, weight_decay=1e-2, gamma_decay=0.1,
             seed=3)],
    'adam_none_projection': [
        dict(optimizer='adam', learning_rate=1e-2, regularizer='none', weight_decay=0.0,
             projection=True),
        dict(optimizer='adam', learning_rate=1e-3, regularizer='none', weight_decay=0.0,
             projection=True, seed=1)],
    # Schedules (traced peak values inside the vmapped step) and BN evaluation
    # statistics (per member, from its own weights and data).
    'adamw_cosine_warmup_debiased': [
        dict(optimizer='adam', regularizer='decoupled', weight_decay=1e-2,
             learning_rate=1e-2, schedule='cosine', warmup_steps=4, bn_eval='debiased'),
        dict(optimizer='adam', regularizer='decoupled', weight_decay=1e-1,
             learning_rate=3e-3, schedule='cosine', warmup_steps=4, bn_eval='debiased',
             seed=1)],
    'momentum_step_precise': [
        dict(schedule='step', bn_eval='precise', bn_eval_batches=3),
        dict(schedule='step', bn_eval='precise', bn_eval_batches=3, learning_rate=0.02,
             seed=2)],
    'sgd_projection': [
        dict(regularizer='projection', weight_decay=0.0, learning_rate=0.1),
        dict(regularizer='projection', weight_decay=0.0, learning_rate=0.3, momentum=0.5,
             seed=4)],
}


def _configs(family):
  return [dataclasses.replace(BASE, **fields) for fields in FAMILIES[family]]


def _assert_same_runs(reference, other):
  """Final params to 1e-4 relative (of each leaf's largest entry), every logged
  metric to 1e-3, the same files."""
  reference, other = pathlib.Path(reference), pathlib.Path(other)
  a, b = trainer.load_params(reference), trainer.load_params(other)
  flat_a = dict(_flat(a))
  for path, leaf in _flat(b):
    scale = max(float(np.max(np.abs(flat_a[path]))), 1e-12)
    err = float(np.max(np.abs(np.asarray(leaf) - flat_a[path]))) / scale
    assert err <= 1e-4, (other, path, err)
  lines_a, lines_b = workdirs.read_metrics(reference), workdirs.read_metrics(other)
  assert [l['step'] for l in lines_a] == [l['step'] for l in lines_b]
  for la, lb in zip(lines_a, lines_b):
    assert sorted(la) == sorted(lb)
    for key, va in la.items():
      if key in TIMING:
        continue
      np.testing.assert_allclose(lb[key], va, rtol=1e-3, atol=1e-7, err_msg=f'{other} {key}')
  sa, sb = (json.loads((d / workdirs.SUMMARY).read_text()) for d in (reference, other))
  for key in ('status', 'steps', 'fan_in'):
    assert sa[key] == sb[key]
  ignore = Config.NON_RESULT_FIELDS
  assert workdirs.config_differences(sa['config'], sb['config'], ignore) == {}
  np.testing.assert_allclose(sb['test_loss'], sa['test_loss'], rtol=1e-3)
  # The same files; one TensorBoard event file each (its name holds the time).
  names = lambda d: sorted(re.sub(r'^(events\.out\.tfevents)\..*', r'\1', p.name)
                           for p in d.iterdir())
  assert names(reference) == names(other)
  assert names(other).count('events.out.tfevents') == 1


def _flat(tree, prefix=''):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _flat(v, f'{prefix}{k}/')
    else:
      yield f'{prefix}{k}', np.asarray(v)


@pytest.fixture(scope='module')
def one_by_one(tmp_path_factory):
  """Every family's members trained one after another in this process."""
  root = tmp_path_factory.mktemp('one_by_one')
  dirs = {}
  for family in FAMILIES:
    dirs[family] = [root / f'{family}_{i}' for i in range(len(FAMILIES[family]))]
    sweep.train_many(_configs(family), dirs[family], workers=1)
  return dirs


@pytest.mark.parametrize('family', list(FAMILIES))
def test_vectorized_group_equals_one_by_one(family, one_by_one, tmp_path):
  configs = _configs(family)
  assert len({vectorized.group_key(c) for c in configs}) == 1  # one vmapped program
  dirs = [tmp_path / f'm{i}' for i in range(len(configs))]
  summaries = sweep.train_many(configs, dirs, vectorize=True)
  for reference, d, s in zip(one_by_one[family], dirs, summaries):
    assert s == json.loads((d / workdirs.SUMMARY).read_text())
    _assert_same_runs(reference, d)


def test_workers_equal_one_by_one(one_by_one, tmp_path):
  configs = _configs('sgd_l2') + _configs('adam_l2_gamma')
  reference = one_by_one['sgd_l2'] + one_by_one['adam_l2_gamma']
  dirs = [tmp_path / f'w{i}' for i in range(len(configs))]
  summaries = sweep.train_many(configs, dirs, workers=2)
  assert [s['config']['seed'] for s in summaries] == [c.seed for c in configs]
  for ref, d in zip(reference, dirs):
    _assert_same_runs(ref, d)



def test_vectorized_groups_in_workers_equal_one_by_one(one_by_one, tmp_path):
  configs = _configs('sgd_l2') + _configs('adam_l2_gamma')
  reference = one_by_one['sgd_l2'] + one_by_one['adam_l2_gamma']
  assert len(vectorized.plan(configs, [tmp_path / f'p{i}' for i in range(4)])[1]) == 2
  dirs = [tmp_path / f'w{i}' for i in range(len(configs))]
  # Member 3 was interrupted after its step-8 checkpoint: its worker resumes it.
  assert trainer.train(configs[3], dirs[3], progress=False, stop_after=10) == {}
  summaries = sweep.train_many(configs, dirs, vectorize=True, workers=2)
  for ref, d, s in zip(reference, dirs, summaries):
    assert s == json.loads((d / workdirs.SUMMARY).read_text())
    _assert_same_runs(ref, d)


def test_plan_answers_finished_members_and_puts_the_longest_group_first(one_by_one,
                                                                      tmp_path):
  short = _configs('sgd_l2')  # 24 steps each, one program
  long = [dataclasses.replace(c, num_epochs=8) for c in _configs('adam_l2_gamma')]
  configs = short + long + [dataclasses.replace(short[0], seed=5)]
  dirs = one_by_one['sgd_l2'] + [tmp_path / f'm{i}' for i in range(3)]
  summaries, groups = vectorized.plan(configs, dirs)
  assert [s is not None for s in summaries] == [True, True, False, False, False]
  assert summaries[0] == json.loads((dirs[0] / workdirs.SUMMARY).read_text())
  assert groups == [[2, 3], [4]]  # 48 steps x 2 members before 24 x 1
  assert vectorized.plan(configs, dirs, max_group=1)[1] == [[2], [3], [4]]

def test_vectorized_convnet_equals_one_by_one(tmp_path, monkeypatch):
  """The ConvNet (vmapped convolutions and batch norm) on an image dataset.

  The vmapped convolution is another XLA program (a grouped convolution), so it
  rounds differently; over a few steps the runs agree to rounding. Over longer
  runs on these coarse synthetic images, with 4 host devices, a member drifted
  to 3e-4 in loss after 6 steps, the same for any partner member, so the check
  that members do not leak into each other is that a member's run is bitwise the
  same whatever the other members of its group are.
  """
  source = tmp_path / 'idx'
  source.mkdir()
  fake_fashion_mnist(source)
  monkeypatch.setenv('BNJAX_FASHION_MNIST_DIR', str(source))
  base = Config(model='convnet', width=4, batch_size=16, num_epochs=1, log_every=1,
                checkpoint_every=2, eval_every=2, eval_batch_size=20, train_subset=32)
  member = dataclasses.replace(base, learning_rate=0.1, weight_decay=1e-3, seed=1)
  partners = [base, dataclasses.replace(base, learning_rate=0.5, momentum=0.5, seed=7)]
  data_dir = str(tmp_path / 'tfds')
  sweep.train_many([member], [tmp_path / 'ref'], data_dir=data_dir, workers=1)
  for k, partner in enumerate(partners):
    sweep.train_many([member, partner], [tmp_path / f'vec{k}', tmp_path / f'p{k}'],
                     data_dir=data_dir, vectorize=True)
  _assert_same_runs(tmp_path / 'ref', tmp_path / 'vec0')
  lines = [workdirs.read_metrics(tmp_path / f'vec{k}') for k in range(2)]
  for a, b in zip(*lines):
    assert {k: v for k, v in a.items() if k not in TIMING} == {
        k: v for k, v in b.items() if k not in TIMING}


def test_diverging_member_is_recorded_and_the_others_finish(tmp_path):
  good = dataclasses.replace(BASE, optimizer='sgd', learning_rate=0.05)
  configs = [good, dataclasses.replace(good, learning_rate=1e38, seed=1),
             dataclasses.replace(good, seed=2)]
  for tag, how in (('vec', dict(vectorize=True)), ('workers', dict(workers=2))):
    dirs = [tmp_path / f'{tag}{i}' for i in range(3)]
    summaries = sweep.train_many(configs, dirs, **how)
    assert [s['status'] for s in summaries] == ['finished', 'diverged', 'finished'], tag
    assert summaries[1] == json.loads((dirs[1] / workdirs.SUMMARY).read_text())
    assert 'stopped without saving it' in summaries[1]['error']
    assert summaries[1]['last_checkpoint'] is None
    assert not (dirs[1] / 'checkpoints').exists() or not any(
        (dirs[1] / 'checkpoints').iterdir())


def test_vectorized_member_resumes_from_its_own_checkpoint(one_by_one, tmp_path):
  configs = _configs('sgd_l2')
  dirs = [tmp_path / 'a', tmp_path / 'b']
  # Member 1 was interrupted after step 8 (its checkpoint); member 0 never started.
  assert trainer.train(configs[1], dirs[1], progress=False, stop_after=10) == {}
  sweep.train_many(configs, dirs, vectorize=True)
  for reference, d in zip(one_by_one['sgd_l2'], dirs):
    _assert_same_runs(reference, d)



def test_a_vectorized_group_evaluates_its_last_step_once(one_by_one, tmp_path, monkeypatch):
  calls = []
  evaluate = vectorized._VmappedRun.evaluate  # pylint: disable=protected-access

  def counted(self, state, members):
    calls.append(int(np.asarray(state.step).max()))
    return evaluate(self, state, members)

  monkeypatch.setattr(vectorized._VmappedRun, "evaluate", counted)  # pylint: disable=protected-access
  dirs = [tmp_path / 'a', tmp_path / 'b']
  sweep.train_many(_configs('sgd_l2'), dirs, vectorize=True)
  assert calls == [8, 16, 24]  # the loop's evaluation of step 24 is the summaries'
  for reference, d in zip(one_by_one['sgd_l2'], dirs):
    _assert_same_runs(reference, d)

def test_members_differing_in_non_result_fields_train_as_their_configs_say(one_by_one,
                                                                            tmp_path):
  # Evaluation batches and checkpoint spacing are the group's: members that differ
  # in them are not grouped; each evaluates and checkpoints as its own config says.
  a, b = _configs('sgd_l2')
  b = dataclasses.replace(b, eval_batch_size=48, checkpoint_every=12)
  assert vectorized.group_key(a) != vectorized.group_key(b)
  dirs = [tmp_path / 'a', tmp_path / 'b']
  summaries = sweep.train_many([a, b], dirs, vectorize=True)
  assert [s['status'] for s in summaries] == ['finished', 'finished']
  assert sorted(int(p.name) for p in (dirs[1] / workdirs.CHECKPOINTS).iterdir()
                if p.name.isdigit()) == [12, 24]
  for reference, d in zip(one_by_one['sgd_l2'], dirs):
    _assert_same_runs(reference, d)


def test_finished_members_answer_without_training(one_by_one):
  configs = _configs('sgd_l2')
  before = [(d / workdirs.SUMMARY).stat().st_mtime_ns for d in one_by_one['sgd_l2']]
  for how in (dict(vectorize=True), dict(workers=1)):
    summaries = sweep.train_many(configs, one_by_one['sgd_l2'], **how)
    assert all(s['status'] == 'finished' for s in summaries)
  assert before == [(d / workdirs.SUMMARY).stat().st_mtime_ns for d in one_by_one['sgd_l2']]


@pytest.mark.parametrize('args, kwargs, error, match', [
    ((BASE, ['a']), {}, TypeError, 'configs must be a list of Config'),
    (([BASE], 'a'), {}, TypeError, 'workdirs must be a list'),
    (([BASE, BASE], ['a']), {}, ValueError, 'differ in length: 2 configs, 1 workdirs'),
    (([], []), {}, ValueError, 'configs is empty'),
    (([BASE, 'x'], ['a', 'b']), {}, TypeError, r'configs\[1\] must be a Config'),
    (([BASE, BASE], ['a', 'b/../a']), {}, ValueError, 'same folder'),
    (([BASE], ['']), {}, ValueError, r'workdirs\[0\] is empty'),
    (([BASE, BASE], ['a', 3]), {}, TypeError, r'workdirs\[1\] must be a folder'),
    (([dataclasses.replace(BASE, learning_rate=-1.0)], ['a']), {}, ValueError,
     'member 0 .*--learning_rate: must be > 0'),
    (([BASE], ['a']), dict(workers=0), ValueError, 'workers must be a positive int'),
    (([BASE], ['a']), dict(max_group=True), ValueError, 'max_group must be a positive int'),
    (([BASE], ['a']), dict(vectorize='yes'), TypeError, 'vectorize must be True, False'),
    (([dataclasses.replace(BASE, parallel='pmap')], ['a']), dict(vectorize=True),
     ValueError, "parallel must be 'none'"),
])
def test_refusals_before_any_file(tmp_path, monkeypatch, args, kwargs, error, match):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(error, match=match):
    sweep.train_many(*args, **kwargs)
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize('same_config', [True, False])
def test_a_symlink_to_another_members_workdir_is_the_same_folder(tmp_path, same_config):
  (tmp_path / 'real').mkdir()
  (tmp_path / 'link').symlink_to(tmp_path / 'real')
  other = BASE if same_config else dataclasses.replace(BASE, seed=1)
  with pytest.raises(ValueError, match=r'workdirs\[0\] and workdirs\[1\] are the same folder'):
    sweep.train_many([BASE, other], [tmp_path / 'real', tmp_path / 'link'])
  assert not list((tmp_path / 'real').iterdir())


def test_a_workdir_of_another_config_is_refused_before_training(one_by_one, tmp_path):
  configs = [dataclasses.replace(BASE, seed=7), _configs('sgd_l2')[1]]
  dirs = [tmp_path / 'fresh', one_by_one['sgd_l2'][0]]
  for how in (dict(vectorize=True), dict(workers=2)):
    with pytest.raises(workdirs.ConfigMismatchError, match='member 1 .*another config'):
      sweep.train_many(configs, dirs, **how)
    assert not (tmp_path / 'fresh').exists()


def test_default_workers_follow_the_affinity():
  cores = os.sched_getaffinity(0)
  try:
    os.sched_setaffinity(0, {min(cores)})  # as under taskset or a one-core cgroup
    assert sweep.default_workers() == 1
  finally:
    os.sched_setaffinity(0, cores)
  assert sweep.default_workers() == len(cores)


def test_shards_partition_the_runs():
  from bnjax.train.studies import study
  names = [f'run{k}' for k in range(11)]
  parts = [study.shard_of(names, (i, 3)) for i in range(3)]
  assert sorted(sum(parts, [])) == sorted(names)
  assert sum(len(p) for p in parts) == len(names)
  assert study.shard_of(names, None) == sorted(names)
  for bad in ('3/3', '1', 'a/b', '-1/2', '1/0'):
    with pytest.raises(ValueError, match='--shard: expected i/n'):
      study.parse_shard(bad)


def test_shard_processes_run_the_study_once(tmp_path):
  """Two processes with --shard=i/2 into one workdir at once (as a Slurm array
  would), then --report_only: every run finished, each by exactly one shard."""
  import subprocess
  import sys
  from _helpers import ROOT
  from bnjax.train.studies import study, teacher_student
  workdir = tmp_path / 'study'
  command = [sys.executable, '-m', 'experiments.teacher_student', '--preset=smoke',
             f'--workdir={workdir}', '--workers=1']
  procs = [subprocess.Popen(command + [f'--shard={i}/2'], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
           for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs
  wanted = sorted(teacher_student.configs('smoke'))
  trained = [re.findall(r'\] (\S+) finished \(', err) for _, err in outputs]
  assert sorted(pathlib.Path(t).name for part in trained for t in part) == wanted
  assert all(part for part in trained)  # every shard had runs of its own
  report = subprocess.run(command + ['--report_only'], cwd=ROOT, text=True,
                          capture_output=True, timeout=300)
  assert report.returncode == 0, report.stderr
  assert f'{len(wanted)} of {len(wanted)} runs finished' in report.stdout
  assert len(study.load_runs(workdir)) == len(wanted)


def test_report_only_lists_the_missing_runs(tmp_path):
  from bnjax.train.studies import study
  meta = {'study': 'x', 'preset': 'smoke', 'runs': ['a', 'b', 'c']}
  line = study.finished_line(meta, {'b': None})
  assert line.startswith('Preset `smoke`: 1 of 3 runs finished.')
  assert 'Missing (unfinished, diverged or not yet run): `a`, `c`' in line


def test_members_go_out_round_robin_over_programs():
  a, b = _configs('sgd_l2'), _configs('adam_l2_gamma')
  configs = a + b
  order = sweep.interleaved(configs)
  assert sorted(order) == list(range(len(configs)))  # every member once
  keys = [programs.program_key(configs[i]) for i in order]
  assert keys[0] != keys[1]  # the two first workers start on different programs
  assert order[:2] == [0, len(a)]


def _cache_dir_of_a_worker(cache_dir):
  sweep._init_worker(sweep.SINGLE_THREAD_XLA_FLAGS, cache_dir)
  import jax  # pylint: disable=g-import-not-at-top
  return jax.config.jax_compilation_cache_dir, os.environ['XLA_FLAGS']


def test_workers_share_a_compilation_cache_that_is_removed_after(tmp_path, monkeypatch):
  ctx = multiprocessing.get_context('spawn')
  with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
    cache, flags = pool.submit(_cache_dir_of_a_worker, str(tmp_path)).result()
  assert cache == str(tmp_path) and 'intra_op_parallelism_threads=1' in flags
  made = []

  class Recorded(tempfile.TemporaryDirectory):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      made.append(self.name)

  monkeypatch.setattr(sweep.tempfile, 'TemporaryDirectory', Recorded)
  configs = _configs('sgd_l2')[:2]
  sweep.train_many(configs, [tmp_path / 'a', tmp_path / 'b'], workers=2)
  assert len(made) == 1 and not os.path.exists(made[0])
