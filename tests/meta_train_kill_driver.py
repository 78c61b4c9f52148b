"""Runs ``lpg-meta-train`` and kills itself with SIGKILL at a chosen moment.

    python tests/meta_train_kill_driver.py after-call K ARGS...       # after the K-th compiled call
    python tests/meta_train_kill_driver.py checkpoint-write K ARGS... # half-way through writing
                                                                      # the K-th checkpoint

Used by ``test_meta_train_kill.py``; the kill comes from outside the job's code.
"""
import os
import signal
import sys
import tempfile


def kill_after_call(k: int) -> None:
  import jax
  from meta_train import job, metagenrl_job
  real, real_mgenrl = job.make_meta_train, metagenrl_job.make_mgenrl_train

  def patched(config, mesh=None, **kw):
    mt = real_mgenrl(config) if config.family == "metagenrl" else real(config, mesh, **kw)
    calls = [0]

    def run(state, n):
      out = jax.block_until_ready(mt.run(state, n))
      calls[0] += 1
      if calls[0] == k:
        os.kill(os.getpid(), signal.SIGKILL)
      return out
    return mt._replace(run=run)
  job.make_meta_train = metagenrl_job.make_mgenrl_train = patched


def kill_in_checkpoint_write(k: int) -> None:
  from meta_train import checkpoint
  real, writes = checkpoint.atomic_write, [0]

  def partial(path, data):
    if os.path.basename(path).startswith("checkpoint-"):
      writes[0] += 1
      if writes[0] == k:  # what a kill half-way through the write leaves behind
        fd, _ = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".checkpoint-", suffix=".tmp")
        os.write(fd, data[: len(data) // 2])
        os.fsync(fd)
        os.kill(os.getpid(), signal.SIGKILL)
    return real(path, data)
  checkpoint.atomic_write = partial


if __name__ == "__main__":
  mode, k, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
  from meta_train import cli
  {"after-call": kill_after_call, "checkpoint-write": kill_in_checkpoint_write}[mode](k)
  sys.exit(cli.main(argv))
