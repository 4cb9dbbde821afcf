// The emulator's concurrent block runner: one std::thread per CUDA thread of a
// block and a C++20 std::barrier for __syncthreads(). Built once into its own
// library (these headers are slow to compile) and handed to each kernel
// library's launcher as a function pointer; see launcher.cpp.
#include <barrier>
#include <mutex>
#include <thread>
#include <vector>

namespace {

// A block's __shared__ arrays are function-local statics of the kernel
// library, one per process (cuda_shim.h): launches that use them run one at a
// time.
std::mutex one_launch_at_a_time;

void wait(void* barrier) { static_cast<std::barrier<>*>(barrier)->arrive_and_wait(); }

}  // namespace

// Runs body(context, t, wait, barrier) on `threads` new threads t = 0, 1, ...
// at once, all sharing one barrier, and returns when all have finished.
extern "C" void gpu_tconv_run_block_threads(
        unsigned threads, void (*body)(void*, unsigned, void (*)(void*), void*), void* context) {
    std::lock_guard<std::mutex> lock(one_launch_at_a_time);
    std::barrier<> barrier(threads);
    std::vector<std::thread> workers;
    workers.reserve(threads);
    for (unsigned t = 0; t < threads; ++t) workers.emplace_back(body, context, t, &wait, &barrier);
    for (std::thread& worker : workers) worker.join();
}
