#pragma once
// `upcycle run SWEEP --executor slurm`: the sweep's trials as SLURM job arrays. The results
// database stays on this host (SQLite must not be shared over a network filesystem); each
// array task runs one trial by hash (`upcycle run-trial`) in its folder under the runs folder,
// which the cluster's nodes share, and writes files only. Per wave (trials whose parents are
// done or submitted in an earlier wave) one sbatch script, kept with a submit.sh that submits
// it all again by hand under <db folder>/slurm/SWEEP/<time>/; a continuation's task depends
// on its parent's (--dependency=afterok). Before it submits, it collects what finished
// (runner/collect.h), and submits only what is not done and not held by a job, so running it
// again resubmits what a time limit, a node failure or a cancel ended, resuming from its
// checkpoint.
#include "runner/executor.h"

namespace upcycle {

ExecutorSummary submit_sweep(const ExecutorOptions& options);

}  // namespace upcycle
