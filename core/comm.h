#pragma once
// The communicator: what training needs from the other ranks of a data- or expert-parallel
// job. One process is simply the 1-rank case (LocalCommunicator, whose collectives move and
// round nothing); an MPI or NCCL communicator implements the same interface later, over the
// device buffers of its rank's backend, without the trainer changing.
#include "core/tensor.h"

namespace upcycle {

enum class ReduceOp {
    Sum,      // every rank gets Σ over ranks
    Average,  // every rank gets Σ over ranks / size()
};

class Communicator {
public:
    virtual ~Communicator() = default;

    virtual int rank() const = 0;  // this process's rank, 0 ≤ rank() < size()
    virtual int size() const = 0;  // ranks in the job

    // Collective (every rank calls it, in the same order): buffer, a float32 tensor on this
    // rank's backend with the same shape on every rank, becomes the elementwise reduction of
    // all ranks' buffers, in place.
    virtual void all_reduce(Tensor& buffer, ReduceOp op) = 0;
    // Collective: returns once every rank has entered it.
    virtual void barrier() = 0;

    // Data parallelism, between the backward passes and the optimizer step: every rank's
    // gradients [parameters] become the mean over ranks. Each rank's gradient is the mean over
    // its own equal share of the batch, so the mean over ranks is the whole batch's.
    // Virtual so that a communicator may reduce in buckets, overlapped with the backward.
    virtual void all_reduce_gradients(Tensor& gradients) {
        all_reduce(gradients, ReduceOp::Average);
    }
};

// One process, one rank: the sum and the mean over ranks are the rank's own buffer.
class LocalCommunicator final : public Communicator {
public:
    int rank() const override { return 0; }
    int size() const override { return 1; }
    void all_reduce(Tensor& buffer, ReduceOp op) override;
    void barrier() override {}
};

// The process-wide 1-rank communicator (what a training run uses unless given another).
Communicator& local_communicator();

}  // namespace upcycle
