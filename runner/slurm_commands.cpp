#include "runner/slurm_commands.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <set>
#include <sstream>

#include <fmt/format.h>

#include "core/errors.h"

namespace upcycle {

namespace {

// The states in which a job has ended for good (squeue --states, sacct State).
const std::set<std::string>& ended_states() {
    static const std::set<std::string> states{
        "COMPLETED", "FAILED",    "TIMEOUT",  "CANCELLED", "NODE_FAIL",   "OUT_OF_MEMORY",
        "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED",   "SPECIAL_EXIT"};
    return states;
}

std::vector<std::string> split(const std::string& text, char separator) {
    std::vector<std::string> parts;
    std::string part;
    std::istringstream in(text);
    while (std::getline(in, part, separator)) parts.push_back(part);
    if (!text.empty() && text.back() == separator) parts.emplace_back();
    return parts;
}

std::string trim(const std::string& s) {
    const auto first = s.find_first_not_of(" \t\r\n");
    if (first == std::string::npos) return "";
    return s.substr(first, s.find_last_not_of(" \t\r\n") - first + 1);
}

// The array job of "123_4" (sacct takes array jobs and lists their tasks).
std::string array_job_of(const std::string& job_id) { return job_id.substr(0, job_id.find('_')); }

}  // namespace

std::optional<std::filesystem::path> find_on_path(const std::string& program) {
    const char* path = std::getenv("PATH");
    if (!path) return std::nullopt;
    for (const auto& dir : split(path, ':')) {
        const auto candidate = std::filesystem::path(dir.empty() ? "." : dir) / program;
        if (::access(candidate.c_str(), X_OK) == 0 && !std::filesystem::is_directory(candidate)) {
            return candidate;
        }
    }
    return std::nullopt;
}

std::filesystem::path this_program() {
    std::error_code ec;
    const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (ec) throw std::runtime_error("cannot find this program's path: " + ec.message());
    return self;
}

CommandOutput run_command(const std::vector<std::string>& argv) {
    CommandOutput result;
    int fds[2];
    if (argv.empty() || ::pipe(fds) != 0) return result;
    const pid_t pid = ::fork();
    if (pid < 0) {
        ::close(fds[0]);
        ::close(fds[1]);
        return result;
    }
    if (pid == 0) {
        ::dup2(fds[1], STDOUT_FILENO);
        ::dup2(fds[1], STDERR_FILENO);
        ::close(fds[0]);
        ::close(fds[1]);
        std::vector<char*> args;
        for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        ::execvp(args[0], args.data());
        _exit(127);
    }
    ::close(fds[1]);
    char buffer[4096];
    ssize_t n;
    while ((n = ::read(fds[0], buffer, sizeof(buffer))) != 0) {
        if (n < 0) {
            if (errno == EINTR) continue;
            break;
        }
        result.output.append(buffer, static_cast<std::size_t>(n));
    }
    ::close(fds[0]);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return result;
}

std::filesystem::path require_sbatch() {
    const auto sbatch = find_on_path("sbatch");
    if (!sbatch) {
        throw UserError("", "--executor slurm",
                        "sbatch is not on PATH: submit from a host of the SLURM cluster (where "
                        "sbatch, squeue and sacct are installed; Debian: slurm-client), or run "
                        "on this machine with --executor local");
    }
    return *sbatch;
}

std::string sbatch_submit(const std::vector<std::string>& args) {
    std::vector<std::string> argv{"sbatch", "--parsable"};
    argv.insert(argv.end(), args.begin(), args.end());
    const CommandOutput out = run_command(argv);
    // --parsable prints "JOBID" or "JOBID;CLUSTER" on a line of its own (warnings may come
    // with it: stderr is read too)
    std::string id;
    for (const auto& line : split(out.output, '\n')) {
        const std::string first = trim(line).substr(0, trim(line).find(';'));
        if (!first.empty() && first.find_first_not_of("0123456789") == std::string::npos) {
            id = first;
        }
    }
    if (out.exit_code != 0 || id.empty() ||
        id.find_first_not_of("0123456789") != std::string::npos) {
        std::string command;
        for (const auto& a : argv) command += (command.empty() ? "" : " ") + a;
        throw UserError("", "sbatch",
                        fmt::format("`{}` refused the job (exit {}): {}", command, out.exit_code,
                                    trim(out.output)));
    }
    return id;
}

SlurmJobStates query_slurm_jobs(const std::vector<std::string>& job_ids) {
    SlurmJobStates states;
    if (job_ids.empty()) return states;
    states.squeue_found = find_on_path("squeue").has_value();
    if (!states.squeue_found) {
        states.notes.push_back(
            "squeue is not on PATH: the states of the cluster's jobs are "
            "unknown here (collect on a host of the cluster)");
        return states;
    }
    const std::set<std::string> wanted(job_ids.begin(), job_ids.end());
    // %i the job (ARRAY_TASK with -r), %T its state, %r the reason, %N its nodes
    const CommandOutput queue = run_command(
        {"squeue", "--noheader", "--array", "--states=all", "--me", "--format=%i|%T|%r|%N"});
    if (queue.exit_code == 0) {
        for (const auto& line : split(queue.output, '\n')) {
            const auto f = split(line, '|');
            if (f.size() < 4 || !wanted.count(trim(f[0]))) continue;
            const std::string reason = trim(f[2]);
            states.jobs[trim(f[0])] = {trim(f[1]), reason == "None" ? "" : reason, trim(f[3])};
        }
    } else {
        states.notes.push_back(
            fmt::format("squeue failed (exit {}): {}", queue.exit_code, trim(queue.output)));
    }

    std::set<std::string> unknown_arrays;
    for (const auto& id : job_ids) {
        if (!states.jobs.count(id)) unknown_arrays.insert(array_job_of(id));
    }
    if (unknown_arrays.empty() || !find_on_path("sacct")) return states;
    std::string list;
    for (const auto& a : unknown_arrays) list += (list.empty() ? "" : ",") + a;
    const CommandOutput acct =
        run_command({"sacct", "--noheader", "--parsable2", "--allocations",
                     "--format=JobID,State,ExitCode,NodeList", "--jobs=" + list});
    if (acct.exit_code != 0) {
        states.notes.push_back(
            fmt::format("sacct failed (exit {}): {}", acct.exit_code, trim(acct.output)));
        return states;
    }
    for (const auto& line : split(acct.output, '\n')) {
        const auto f = split(line, '|');
        if (f.size() < 4 || !wanted.count(trim(f[0])) || states.jobs.count(trim(f[0]))) continue;
        // "CANCELLED by 0": the state, then who; the exit code "0:9" says the signal
        const std::string state_text = trim(f[1]);
        const std::string state = state_text.substr(0, state_text.find(' '));
        std::string reason = trim(state_text.substr(state.size()));
        const std::string code = trim(f[2]);
        if (!code.empty() && code != "0:0") {
            reason += (reason.empty() ? "" : ", ") + std::string("exit code ") + code;
        }
        states.jobs[trim(f[0])] = {state, reason, trim(f[3])};
    }
    return states;
}

bool slurm_state_is_active(const std::string& state) { return !ended_states().count(state); }

}  // namespace upcycle
