#include "runner/trial_on_ranks.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "core/errors.h"
#include "runner/slurm_commands.h"

namespace upcycle {

int run_trial_on_local_ranks(const std::string& hash, const std::filesystem::path& runs_dir,
                             const LocalRanks& ranks, const std::function<bool()>& should_stop) {
    if (!find_on_path("mpirun")) {
        throw UserError("", "--ranks-per-trial",
                        "mpirun is not on PATH: several ranks per trial run under Open MPI "
                        "(Debian: openmpi-bin), or use --ranks-per-trial 1");
    }
    const std::vector<std::string> argv{
        "mpirun", "-np", std::to_string(ranks.ranks),
        // the other workers' ranks share these cores: no rank is bound to one, and more ranks
        // than cores is allowed (each then gets fewer threads)
        "--oversubscribe", "--bind-to", "none", "-x", "OMP_NUM_THREADS", this_program().string(),
        "run-trial", hash, "--runs", runs_dir.string(), "--device", ranks.device};
    const std::string threads = std::to_string(ranks.threads_per_rank);
    const pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error("fork failed starting mpirun");
    if (pid == 0) {
        // a process group of its own: a Ctrl-C meant for the sweep reaches the ranks as the stop
        // below, not as mpirun's SIGINT, which would kill them before they checkpoint
        ::setpgid(0, 0);
        ::setenv("OMP_NUM_THREADS", threads.c_str(), 1);
        std::vector<char*> args;
        for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        ::execvp(args[0], args.data());
        _exit(127);
    }
    bool stop_sent = false;
    int status = 0;
    for (;;) {
        const pid_t done = ::waitpid(pid, &status, WNOHANG);
        if (done == pid) break;
        if (done < 0 && errno != EINTR) throw std::runtime_error("lost track of mpirun");
        if (!stop_sent && should_stop()) {
            // mpirun passes SIGUSR1 on to every rank (a SIGTERM it would follow with SIGKILL
            // a second later); run-trial takes it as a request to checkpoint and stop
            ::kill(pid, SIGUSR1);
            stop_sent = true;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace upcycle
