#include "kernels/cpu/process_setup.h"

#include <unistd.h>

#include <cstdlib>

#include "kernels/cpu/blas_setup.h"

namespace upcycle {

namespace {

constexpr const char* kWaitPolicyVariable = "OMP_WAIT_POLICY";
constexpr const char* kSpinCountVariable = "GOMP_SPINCOUNT";
// Set with the policy, so a description can tell upcycle's choice from the person's.
constexpr const char* kChosenByUpcycleVariable = "UPCYCLE_OMP_WAIT_POLICY_DEFAULT";

bool environment_chose_waiting() {
    return std::getenv(kWaitPolicyVariable) != nullptr ||
           std::getenv(kSpinCountVariable) != nullptr;
}

}  // namespace

void prepare_process(int argc, char** argv) {
    if (argc < 1 || argv == nullptr) return;
    if (std::getenv(kProcessReexecMarker) != nullptr) return;  // already re-executed once
    const auto coretype = openblas_coretype_to_set();
    const bool set_wait_policy = !environment_chose_waiting();
    if (!coretype && !set_wait_policy) return;
    if (coretype) set_openblas_coretype(*coretype);
    if (set_wait_policy) {
        setenv(kWaitPolicyVariable, "passive", 1);
        setenv(kChosenByUpcycleVariable, "1", 1);
    }
    if (setenv(kProcessReexecMarker, "1", 1) != 0) return;
    execv("/proc/self/exe", argv);
    // exec failed: keep running with whatever the libraries picked.
}

std::string openmp_wait_description() {
    if (std::getenv(kChosenByUpcycleVariable) != nullptr) return "passive (upcycle's default)";
    if (const char* policy = std::getenv(kWaitPolicyVariable)) {
        return std::string(policy) + " (" + kWaitPolicyVariable + " from the environment)";
    }
    if (const char* spins = std::getenv(kSpinCountVariable)) {
        return std::string("spin count ") + spins + " (" + kSpinCountVariable +
               " from the environment)";
    }
    return "libgomp's default";
}

}  // namespace upcycle
