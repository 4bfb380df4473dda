"""Where metrics go: ``metrics.jsonl``, TensorBoard event files and the console.

Only process 0 writes. Each JSON line holds ``step`` and flat keys such as ``train/loss``,
``eval/accuracy``, ``lr``, ``img_per_sec``.
"""
import datetime
import json
import os
import time

import jax


class MetricWriter:

  def __init__(self, workdir: str, resume_step: int = 0):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.tb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    _truncate_after(self.path, resume_step)
    try:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(os.path.join(workdir, 'tensorboard'), flush_secs=30)
    except ImportError:
      print('mcj: tensorboardX is not installed; writing metrics.jsonl only.', flush=True)

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), **{k: _py(v) for k, v in metrics.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    if self.tb is not None:
      for k, v in record.items():
        if k != 'step' and isinstance(v, (int, float)):
          self.tb.add_scalar(k, v, step)

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()


def _py(v):
  try:
    return v.item()
  except AttributeError:
    return v


def _truncate_after(path: str, step: int) -> None:
  """On resume, drops lines of steps the restored checkpoint had not reached."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    keep = [line for line in f if line.strip() and json.loads(line)['step'] <= step]
  with open(path, 'w') as f:
    f.writelines(keep)


class Progress:
  """Throughput and ETA between log points (excludes time spent in evals and saves)."""

  def __init__(self, total_steps: int, start_step: int, global_batch_size: int):
    self.total, self.batch = total_steps, global_batch_size
    self.last_step, self.last_time = start_step, time.perf_counter()
    self.paused = 0.0

  def pause(self, seconds: float) -> None:
    self.paused += seconds

  def tick(self, step: int) -> dict:
    now = time.perf_counter()
    seconds = max(now - self.last_time - self.paused, 1e-9)
    steps_per_sec = (step - self.last_step) / seconds
    self.last_step, self.last_time, self.paused = step, now, 0.0
    eta = (self.total - step) / steps_per_sec if steps_per_sec > 0 else 0.0
    return {'img_per_sec': steps_per_sec * self.batch,
            'img_per_sec_per_device': steps_per_sec * self.batch / jax.device_count(),
            'eta_seconds': eta}


def console_line(step, total, metrics) -> str:
  eta = datetime.timedelta(seconds=round(metrics.get('eta_seconds', 0)))
  accuracy = (f"acc {metrics['train/accuracy']:.4f} | " if 'train/accuracy' in metrics
              else '')  # a regression task has none
  return (f"step {step:>7}/{total} | loss {metrics['train/loss']:.4f} | {accuracy}"
          f"lr {metrics['lr']:.3g} | {metrics['img_per_sec']:,.0f} img/s | ETA {eta}")


def headline(results: dict) -> tuple:
  """``(name, value)`` of a run's main eval metric: ``results['metric']`` (its task's
  first: eval/f1 for MRPC, eval/pearson for STS-B), else eval/accuracy."""
  name = results.get('metric') or 'eval/accuracy'
  return name, results.get(name, float('nan'))
