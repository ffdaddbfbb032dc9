"""The default launcher (`launcher=parallel`): a sweep's jobs side by side, each in a process of its own.

Hydra's joblib launcher runs jobs in a pool of loky workers, and loky treats a worker's death as a broken
pool: it fails every pending job with `TerminatedWorkerError` and SIGKILLs the other workers
(`_ExecutorManagerThread.terminate_broken` -> `kill_workers`), so one job killed by SIGTERM, the kernel's
OOM killer or a segfault took its siblings with it, their records left `running`, and the sweep ended in
a traceback without its table. Here the sweep's own process starts one process per job (at most `n_jobs`
at once; `-1`: one per core, with joblib's meaning of negative values) and watches each: a job that dies
is that job's failure only. Its record is marked with the cause (`interrupted` for SIGTERM, SIGINT and
SIGKILL, `failed` otherwise), the other jobs run to completion, and the sweep ends with its table and a
non-zero exit (`sft_sweeps.callbacks.SweepExitStatus`).

Everything else is the joblib launcher's: the same job configs and ids (`execute_job`), and each job's
torch/BLAS threads limited to cores // n_jobs the way joblib limits its workers (`OMP_NUM_THREADS` and
friends, unless already set). A job sent SIGTERM stops as on Ctrl-C: its record says `interrupted`; the
sweep's own SIGTERM or Ctrl-C is passed on to its jobs, which record `interrupted` before it exits.
"""
