#include "runner/slurm_executor.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <set>

#include <fmt/format.h>

#include "core/errors.h"
#include "core/train.h"
#include "runner/collect.h"
#include "runner/slurm_commands.h"
#include "runner/store/store.h"
#include "runner/trial_result.h"
#include "runner/trial_spec.h"

namespace upcycle {

namespace {

// A word for a shell: single-quoted unless it is plain.
std::string shell_quote(const std::string& word) {
    if (!word.empty() && word.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVW"
                                                "XYZ0123456789_-+=.,/:%@") == std::string::npos) {
        return word;
    }
    std::string quoted = "'";
    for (const char c : word) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return quoted + "'";
}

// "20240501T123456Z": a folder name per submission, in time order.
std::string compact_utc_now() {
    std::string iso = utc_now_iso();  // 2024-05-01T12:34:56.789Z
    std::string out;
    for (const char c : iso.substr(0, 19)) {
        if (c != '-' && c != ':') out += c;
    }
    return out + "Z";
}

std::string label_of(const TrialRecord& t) {
    return to_string(t.method) + "-" + t.hash.substr(0, 12);
}

// One sbatch submission: array tasks of one wave that wait for the same job (or none).
struct Submission {
    std::vector<int> tasks;  // indices into the wave
    std::string depends_on;  // a job id, or a wave's task "W:I" submitted in this run, or ""
};

struct Wave {
    std::vector<TrialRecord> trials;
    std::vector<Submission> submissions;
    std::filesystem::path script;
};

void check_options(const ExecutorOptions& options) {
    const SlurmOptions& s = options.slurm;
    if (options.ranks_per_trial < 1) {
        throw UserError("", "--ranks-per-trial",
                        fmt::format("expected 1 or more, got {}", options.ranks_per_trial));
    }
    if (s.gpus_per_trial < 0) {
        throw UserError("", "--gpus-per-trial",
                        fmt::format("expected 0 or more, got {}", s.gpus_per_trial));
    }
    if (s.max_parallel < 0) {
        throw UserError("", "--max-parallel",
                        fmt::format("expected 0 (no limit) or more, got {}", s.max_parallel));
    }
    if (s.gpus_per_trial > 0 && options.device == "cpu") {
        throw UserError("", "--gpus-per-trial",
                        "GPUs for trials that train on the CPU: add --device cuda");
    }
    for (const auto& a : s.sbatch_args) {
        if (a.rfind("--", 0) != 0 || a.find('\n') != std::string::npos) {
            throw UserError("", "--sbatch-arg",
                            fmt::format("expected one long sbatch option such as "
                                        "--account=NAME, got '{}'",
                                        a));
        }
    }
}

std::string wave_script(const ExecutorOptions& options, const std::string& sweep, int wave,
                        const std::vector<TrialRecord>& trials, const std::filesystem::path& folder,
                        const std::filesystem::path& runs) {
    const SlurmOptions& s = options.slurm;
    std::string text = "#!/bin/bash\n";
    text += fmt::format(
        "# upcycle sweep {}, wave {}: each array task runs one trial in its folder under\n"
        "# {}; its output goes to logs/. submit.sh beside this file submits the waves\n"
        "# again (a trial already done ends at once).\n",
        sweep, wave, runs.string());
    text += fmt::format("#SBATCH --job-name={}\n",
                        shell_quote("upcycle-" + sweep + "-w" + std::to_string(wave)));
    text += fmt::format(
        "#SBATCH --output={}\n",
        shell_quote((folder / "logs" / fmt::format("wave-{}-%A_%a.out", wave)).string()));
    text += fmt::format("#SBATCH --ntasks={}\n", options.ranks_per_trial);
    // a task whose parent failed can never start: SLURM ends it instead of keeping it queued
    text += "#SBATCH --kill-on-invalid-dep=yes\n";
    if (!s.partition.empty()) text += fmt::format("#SBATCH --partition={}\n", s.partition);
    if (!s.time.empty()) text += fmt::format("#SBATCH --time={}\n", s.time);
    if (s.gpus_per_trial > 0) text += fmt::format("#SBATCH --gpus={}\n", s.gpus_per_trial);
    for (const auto& a : s.sbatch_args) text += "#SBATCH " + a + "\n";
    text += "set -euo pipefail\n";
    text += "case \"${SLURM_ARRAY_TASK_ID:?submit it as an array job (see submit.sh)}\" in\n";
    for (std::size_t i = 0; i < trials.size(); ++i) {
        text += fmt::format("  {}) trial={} ;;  # {}\n", i, trials[i].hash, label_of(trials[i]));
    }
    text += fmt::format(
        "  *) echo \"wave {} has no trial for array task $SLURM_ARRAY_TASK_ID\" >&2; exit 2 ;;\n"
        "esac\n",
        wave);
    std::string launch;
    if (options.ranks_per_trial > 1) {
        // The ranks are one job step. They find each other through SLURM's PMIx plugin: Open
        // MPI started by srun without it (SLURM's default MpiDefault=none) aborts in MPI_Init;
        // SLURM_MPI_TYPE where the sweep is submitted (sbatch passes it on) picks another. Each
        // rank gets the CPUs SLURM gave each task (1 unless --sbatch-arg=--cpus-per-task=C):
        // srun of SLURM 22.05 does not inherit --cpus-per-task from sbatch, and without
        // OMP_NUM_THREADS every rank would start an OpenMP thread per core of the node, N ranks
        // oversubscribing the cores N times. A rank that fails ends the step (the others may
        // be waiting for it in a collective).
        text += fmt::format(
            "# {} ranks train the trial together (one srun step); one OpenMP thread per CPU\n"
            "# that SLURM gives each rank\n"
            "export OMP_NUM_THREADS=\"${{SLURM_CPUS_PER_TASK:-1}}\"\n",
            options.ranks_per_trial);
        // GPU ranks exchange NCCL's id over TCP when srun starts them (MPI carries it only
        // under mpirun): rank 0 listens on the job's first node, at a port of the job's.
        if (options.device != "cpu") {
            text +=
                "export MASTER_ADDR=\"$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | "
                "head -n 1)\"\n"
                "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))\n";
        }
        launch = fmt::format(
            "srun --ntasks={} --cpus-per-task=\"$OMP_NUM_THREADS\" "
            "--mpi=\"${{SLURM_MPI_TYPE:-pmix}}\" --kill-on-bad-exit=1 ",
            options.ranks_per_trial);
    }
    text += fmt::format("exec {}{} run-trial \"$trial\" --runs {} --device {}\n", launch,
                        shell_quote(this_program().string()), shell_quote(runs.string()),
                        shell_quote(options.device));
    return text;
}

// "0,2,5%K"
std::string array_spec(const std::vector<int>& tasks, int max_parallel) {
    std::string spec;
    for (const int t : tasks) spec += fmt::format("{}{}", spec.empty() ? "" : ",", t);
    if (max_parallel > 0) spec += fmt::format("%{}", max_parallel);
    return spec;
}

}  // namespace

ExecutorSummary submit_sweep(const ExecutorOptions& options) {
    check_options(options);
    require_sbatch();
    const RegisteredSweep registered = register_sweep(options);
    const auto runs = std::filesystem::absolute(options.runs_dir).lexically_normal();
    Store store(options.db, Store::Mode::ReadWrite);
    auto say = [](const std::string& line) { fmt::print(stderr, "{}\n", line); };

    collect_results(store, registered.name, runs, say);
    const int requeued = store.requeue_died_on_cluster(registered.sweep_id);
    if (requeued > 0) {
        say(fmt::format("{} trial(s) whose SLURM job ended without a result are submitted again",
                        requeued));
    }

    // the job of each trial the cluster still holds
    std::map<int64_t, std::string> held;
    for (const auto& job : store.open_slurm_jobs(registered.name)) held[job.trial_id] = job.job_id;
    const auto trials = store.trials_of_sweep(registered.sweep_id);
    std::map<int64_t, TrialRecord> by_id;
    for (const auto& t : trials) by_id[t.id] = t;

    // waves: a trial goes one wave after its parent when both are submitted now
    std::vector<Wave> waves;
    std::map<int64_t, std::pair<int, int>> placed;  // trial id → (wave, task)
    for (const auto& t : trials) {                  // parents come before their children (ids)
        if (t.status != TrialStatus::Pending) continue;
        int wave = 0;
        std::string depends_on;
        if (t.parent) {
            const auto parent = by_id.count(*t.parent) ? by_id[*t.parent] : *store.trial(*t.parent);
            if (const auto p = placed.find(parent.id); p != placed.end()) {
                wave = p->second.first + 1;
                depends_on = fmt::format("{}:{}", p->second.first, p->second.second);
            } else if (const auto h = held.find(parent.id); h != held.end()) {
                depends_on = h->second;
            } else if (parent.status != TrialStatus::Done) {
                say(fmt::format("{} waits: its parent {} is {}{}", label_of(t), label_of(parent),
                                to_string(parent.status),
                                parent.worker.empty() ? "" : " on worker " + parent.worker));
                continue;
            }
        }
        if (static_cast<int>(waves.size()) <= wave)
            waves.resize(static_cast<std::size_t>(wave) + 1);
        Wave& w = waves[static_cast<std::size_t>(wave)];
        const int task = static_cast<int>(w.trials.size());
        w.trials.push_back(t);
        placed[t.id] = {wave, task};
        auto same = std::find_if(w.submissions.begin(), w.submissions.end(),
                                 [&](const Submission& s) { return s.depends_on == depends_on; });
        if (same == w.submissions.end()) {
            w.submissions.push_back({{}, depends_on});
            same = std::prev(w.submissions.end());
        }
        same->tasks.push_back(task);
    }

    if (waves.empty()) {
        say(fmt::format("sweep {}: nothing to submit ({} trial(s) held by SLURM jobs)",
                        registered.name, held.size()));
        return summarize_sweep(options.db, registered);
    }

    const auto folder = std::filesystem::absolute(
        (options.db.has_parent_path() ? options.db.parent_path() : std::filesystem::path(".")) /
        "slurm" / registered.name / compact_utc_now());
    std::filesystem::create_directories(folder / "logs");

    // what each task needs, in its folder, before anything is submitted
    for (const Wave& w : waves) {
        for (const auto& t : w.trials) {
            const auto dir = trial_directory(runs, t.hash);
            std::optional<TrialRecord> parent;
            if (t.parent)
                parent = by_id.count(*t.parent) ? by_id[*t.parent] : *store.trial(*t.parent);
            write_trial_spec(dir, trial_spec_of(t, parent, runs));
            // an earlier attempt's failure must not be read as this one's
            std::error_code ignored;
            std::filesystem::remove(trial_result_path(dir), ignored);
        }
    }

    std::string submit_sh = fmt::format(
        "#!/bin/bash\n# Submits sweep {} as `upcycle run --executor slurm` did; run it again to "
        "resubmit by hand.\nset -euo pipefail\ncd \"$(dirname \"$0\")\"\n",
        registered.name);
    std::map<std::pair<int, int>, std::string> job_of;   // (wave, task) → "ARRAYJOB_TASK"
    std::map<std::pair<int, int>, std::string> job_var;  // (wave, task) → "${jN}_TASK"
    int submitted = 0, submission_count = 0;
    for (std::size_t wi = 0; wi < waves.size(); ++wi) {
        Wave& w = waves[wi];
        const int wave = static_cast<int>(wi);
        w.script = folder / fmt::format("wave-{}.sbatch", wave);
        std::ofstream(w.script) << wave_script(options, registered.name, wave, w.trials, folder,
                                               runs);
        for (const Submission& s : w.submissions) {
            std::vector<std::string> args{"--array=" +
                                          array_spec(s.tasks, options.slurm.max_parallel)};
            std::string dependency, dependency_sh;
            if (!s.depends_on.empty()) {
                const auto colon = s.depends_on.find(':');
                if (colon == std::string::npos) {
                    dependency = dependency_sh = s.depends_on;
                } else {
                    const std::pair<int, int> key{std::stoi(s.depends_on.substr(0, colon)),
                                                  std::stoi(s.depends_on.substr(colon + 1))};
                    dependency = job_of.at(key);
                    dependency_sh = job_var.at(key);
                }
                args.push_back("--dependency=afterok:" + dependency);
            }
            args.push_back(w.script.string());
            const std::string array_job = sbatch_submit(args);
            const std::string var = fmt::format("j{}", ++submission_count);
            submit_sh +=
                fmt::format("{}=$(sbatch --parsable --array={}{} {})\n", var,
                            array_spec(s.tasks, options.slurm.max_parallel),
                            dependency_sh.empty() ? "" : " --dependency=afterok:" + dependency_sh,
                            w.script.filename().string());
            for (const int task : s.tasks) {
                const std::string job_id = fmt::format("{}_{}", array_job, task);
                job_of[{wave, task}] = job_id;
                job_var[{wave, task}] = fmt::format("${{{}}}_{}", var, task);
                SlurmJobRecord record;
                record.job_id = job_id;
                record.trial_id = w.trials[static_cast<std::size_t>(task)].id;
                record.runs_dir = runs.string();
                record.script = w.script.string();
                record.output =
                    (folder / "logs" / fmt::format("wave-{}-{}.out", wave, job_id)).string();
                store.record_slurm_submission(record);
                ++submitted;
            }
            std::ofstream(folder / "submit.sh") << submit_sh;  // what is submitted so far
            say(fmt::format("submitted wave {}: job array {} ({} trial(s){})", wave, array_job,
                            s.tasks.size(), dependency.empty() ? "" : ", after job " + dependency));
        }
    }
    std::ofstream(folder / "submit.sh") << submit_sh;
    std::filesystem::permissions(folder / "submit.sh", std::filesystem::perms::owner_exec,
                                 std::filesystem::perm_options::add);
    say(
        fmt::format("sweep {}: {} trial(s) submitted in {} wave(s); scripts in {}; "
                    "`upcycle status {}` collects results as they finish",
                    registered.name, submitted, waves.size(), folder.string(), registered.name));
    return summarize_sweep(options.db, registered);
}

}  // namespace upcycle
