// The machine behind the host stand-in of the AscendC API (kernel_operator.h): every vector core
// ("block") of one kernel launch, its Unified Buffer, its pipes, and the global memory it shares.
//
// What it checks, so that a kernel passing here has its indexing, its UB plan and its
// synchronisation right (what it cannot say: CANN API details beyond the modelled subset, timing):
// - Blocks: every block runs the kernel with its own GetBlockIdx() and the launch's GetBlockNum(), on
//   its own thread, one block at a time in index order between SyncAll barriers (deterministic).
//   SyncAll is a barrier: a block that returns while others wait in SyncAll, or blocks calling
//   SyncAll different numbers of times, is a hang on hardware and an error here. The software
//   SyncAll's flags must be zero before the first call (CANN's contract), else an error.
// - UB: TPipe::InitBuffer allocates from the real UB size (32-byte aligned); every scalar, vector and
//   DMA access is bounds-checked against its tensor. UB starts with random bytes, and DataCopyPad's
//   padding bytes are poisoned, so nothing may be read before it is written.
// - Pipes: scalar (S), vector (V), GM->UB (MTE2) and UB->GM (MTE3) run asynchronously on hardware. A
//   shadow of every UB word records which pipe wrote it and which pipes read it, at which step; an
//   access by another pipe that is not ordered by SetFlag/WaitFlag of the matching HardEvent (or
//   PipeBarrier<PIPE_ALL>) is a hazard (read-after-write, write-after-read, write-after-write).
//   Instructions of one pipe stay in order (the compiler's automatic PIPE_V barriers).
// - Global memory: only registered operator buffers (inputs read-only, outputs, workspace) can be
//   addressed; scalar GlobalTensor access is an error (the kernel moves global data by DMA only);
//   a word written by one block and read or written by another between the same two SyncAlls is a
//   race; within a block, MTE3 writes and MTE2 reads of the same words need MTE3_MTE2 / MTE2_MTE3.
// - Counters per block and per SyncAll interval (vector instructions and bytes, scalar UB accesses,
//   DMAs and bytes per direction) feed the cost model (docs/ascend_cost_model.md).
#ifndef IMG_GBPR_HOST_CHECK_SIM_H
#define IMG_GBPR_HOST_CHECK_SIM_H

#include <array>
#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace host_check {

struct Violation : std::runtime_error {
    using std::runtime_error::runtime_error;
};
struct Abort {};  // unwinds a waiting block after another block failed

inline std::string Format(const char *fmt, ...)
{
    char buf[512];
    va_list args;
    va_start(args, fmt);
    std::vsnprintf(buf, sizeof(buf), fmt, args);
    va_end(args);
    return buf;
}

enum Pipe : int { kS = 0, kV = 1, kMte2 = 2, kMte3 = 3, kNumPipes = 4 };
inline const char *PipeName(int pipe)
{
    static const char *names[] = {"S", "V", "MTE2", "MTE3"};
    return names[pipe];
}

enum Counter : int {
    kVecInstr, kVecBytes, kScalarRead, kScalarWrite, kMte2Count, kMte2Bytes, kMte3Count, kMte3Bytes, kNumCounters
};
using Counters = std::array<uint64_t, kNumCounters>;

struct UbWord {
    uint32_t wseq = 0;
    int8_t wpipe = -1;
    uint32_t rseq[kNumPipes] = {0, 0, 0, 0};
};

struct GmWord {
    uint32_t wepoch = 0;
    uint32_t wseq = 0;
    uint32_t repoch = 0;
    uint32_t rseq = 0;
    uint64_t rmask = 0;
    int16_t wblock = -1;
    int16_t rblock = -1;
    int8_t wpipe = -1;
};

struct GmBuffer {
    std::string name;
    uint8_t *base = nullptr;
    uint64_t bytes = 0;
    bool writable = false;
    uint64_t syncBegin = 0, syncEnd = 0;  // SyncAll flag area (offsets), exempt from race tracking
    std::vector<GmWord> shadow;           // writable buffers only
};

class Machine;

struct Block {
    int idx = 0;
    std::vector<uint8_t> ub;
    std::vector<UbWord> shadow;
    uint64_t ubUsed = 0;
    uint64_t ubPeak = 0;
    uint32_t seq = 0;
    uint32_t visible[kNumPipes][kNumPipes] = {};
    std::map<int, uint32_t> flags;  // (event, id) -> step of SetFlag
    void *pipe = nullptr;           // the live TPipe
    int syncCount = 0;
    int kernelType = -1;
    std::vector<Counters> epochStats{Counters{}};

    uint32_t Step() { return ++seq; }
    Counters &Stats()
    {
        if (epochStats.size() <= static_cast<size_t>(syncCount)) {
            epochStats.resize(syncCount + 1, Counters{});
        }
        return epochStats[syncCount];
    }

    // One access of `pipe` to UB bytes [offset, offset + bytes) at step `step`.
    void Access(int pipe, uint64_t offset, uint64_t bytes, bool write, uint32_t step, const char *what)
    {
        if (bytes == 0) {
            return;
        }
        if (offset + bytes > ub.size()) {
            throw Violation(Format("block %d: %s touches UB bytes [%llu, %llu) beyond the %llu-byte UB", idx, what,
                                   (unsigned long long)offset, (unsigned long long)(offset + bytes),
                                   (unsigned long long)ub.size()));
        }
        for (uint64_t w = offset / 4; w < (offset + bytes + 3) / 4; ++w) {
            UbWord &word = shadow[w];
            if (word.wpipe >= 0 && word.wpipe != pipe && word.wseq > visible[word.wpipe][pipe]) {
                throw Violation(Format("block %d: %s %s UB byte %llu written by %s without a %s_%s sync", idx,
                                       what, write ? "overwrites" : "reads", (unsigned long long)(w * 4),
                                       PipeName(word.wpipe), PipeName(word.wpipe), PipeName(pipe)));
            }
            if (write) {
                for (int q = 0; q < kNumPipes; ++q) {
                    if (q != pipe && word.rseq[q] > visible[q][pipe]) {
                        throw Violation(Format("block %d: %s overwrites UB byte %llu still being read by %s "
                                               "without a %s_%s sync", idx, what, (unsigned long long)(w * 4),
                                               PipeName(q), PipeName(q), PipeName(pipe)));
                    }
                }
                word.wpipe = static_cast<int8_t>(pipe);
                word.wseq = step;
            } else {
                word.rseq[pipe] = step;
            }
        }
    }

    void Barrier()
    {
        for (auto &row : visible) {
            for (auto &v : row) {
                v = seq;
            }
        }
    }
};

class Machine {
public:
    Machine(int blocks, uint64_t ubBytes, uint32_t seed) : blocks_(blocks)
    {
        for (int i = 0; i < blocks; ++i) {
            Block &b = blocks_[i];
            b.idx = i;
            b.ub.resize(ubBytes);
            std::mt19937 gen(seed + 7919u * static_cast<uint32_t>(i));
            for (auto &byte : b.ub) {
                byte = static_cast<uint8_t>(gen());
            }
            b.shadow.resize((ubBytes + 3) / 4);
        }
    }

    void AddGm(const std::string &name, void *base, uint64_t bytes, bool writable)
    {
        GmBuffer buf;
        buf.name = name;
        buf.base = static_cast<uint8_t *>(base);
        buf.bytes = bytes;
        buf.writable = writable;
        if (writable) {
            buf.shadow.resize((bytes + 3) / 4);
        }
        gm_.push_back(std::move(buf));
    }

    void SetSyncArea(const void *begin, uint64_t bytes)
    {
        GmBuffer &buf = Find(begin, bytes, "SyncAll flag area");
        syncBase_ = static_cast<const uint8_t *>(begin);
        buf.syncBegin = syncBase_ - buf.base;
        buf.syncEnd = buf.syncBegin + bytes;
    }

    GmBuffer &Find(const void *addr, uint64_t bytes, const char *what)
    {
        const auto *p = static_cast<const uint8_t *>(addr);
        for (auto &buf : gm_) {
            if (p >= buf.base && p + bytes <= buf.base + buf.bytes) {
                return buf;
            }
        }
        throw Violation(Format("%s: global bytes [%p, +%llu) lie outside every operator buffer", what, addr,
                               (unsigned long long)bytes));
    }

    // One DMA access of block `b` to global bytes [addr, addr + bytes) at step `step`.
    void GmAccess(Block &b, int pipe, const void *addr, uint64_t bytes, bool write, uint32_t step, const char *what)
    {
        if (bytes == 0) {
            return;
        }
        GmBuffer &buf = Find(addr, bytes, what);
        if (write && !buf.writable) {
            throw Violation(Format("block %d: %s writes the input %s", b.idx, what, buf.name.c_str()));
        }
        if (buf.shadow.empty()) {
            return;
        }
        const uint64_t begin = static_cast<const uint8_t *>(addr) - buf.base;
        const uint64_t me = static_cast<uint64_t>(b.idx);
        for (uint64_t w = begin / 4; w < (begin + bytes + 3) / 4; ++w) {
            if (w * 4 >= buf.syncBegin && w * 4 < buf.syncEnd) {
                continue;
            }
            GmWord &word = buf.shadow[w];
            const bool sameInterval = word.wblock >= 0 && word.wepoch == epoch_;
            if (sameInterval && word.wblock != b.idx) {
                throw Violation(Format("block %d: %s %s %s word %llu that block %d wrote since the last SyncAll "
                                       "(race)", b.idx, what, write ? "overwrites" : "reads", buf.name.c_str(),
                                       (unsigned long long)w, word.wblock));
            }
            if (sameInterval && word.wpipe != pipe && word.wseq > b.visible[word.wpipe][pipe]) {
                throw Violation(Format("block %d: %s %s %s word %llu written by %s without a %s_%s sync", b.idx, what,
                                       write ? "overwrites" : "reads", buf.name.c_str(), (unsigned long long)w,
                                       PipeName(word.wpipe), PipeName(word.wpipe), PipeName(pipe)));
            }
            if (write) {
                if (word.repoch == epoch_ && (word.rmask & ~(1ull << me)) != 0) {
                    throw Violation(Format("block %d: %s overwrites %s word %llu that another block read since "
                                           "the last SyncAll (race)", b.idx, what, buf.name.c_str(),
                                           (unsigned long long)w));
                }
                if (word.repoch == epoch_ && word.rblock == b.idx && pipe != kMte2 &&
                    word.rseq > b.visible[kMte2][pipe]) {
                    throw Violation(Format("block %d: %s overwrites %s word %llu still being read by MTE2 without a "
                                           "MTE2_%s sync", b.idx, what, buf.name.c_str(), (unsigned long long)w,
                                           PipeName(pipe)));
                }
                word.wblock = static_cast<int16_t>(b.idx);
                word.wepoch = epoch_;
                word.wseq = step;
                word.wpipe = static_cast<int8_t>(pipe);
            } else {
                if (word.repoch != epoch_) {
                    word.repoch = epoch_;
                    word.rmask = 0;
                }
                word.rmask |= 1ull << me;
                word.rblock = static_cast<int16_t>(b.idx);
                word.rseq = step;
            }
        }
    }

    // Runs `kernel` on every block; throws Violation with the first error.
    void Run(const std::function<void()> &kernel);

    // SyncAll: flags in the zeroed area count the calls; every block waits for the others.
    void SyncAll(Block &b)
    {
        if (syncBase_ == nullptr) {
            throw Violation("SyncAll called but the launch has no SyncAll flag area");
        }
        auto *flag = reinterpret_cast<int32_t *>(const_cast<uint8_t *>(syncBase_) + 32 * b.idx);
        if (*flag != b.syncCount) {
            throw Violation(Format("block %d: SyncAll #%d finds its flag at %d, expected %d: the flags were not "
                                   "zeroed before the first SyncAll (or were zeroed again later), the cores would "
                                   "wait forever", b.idx, b.syncCount + 1, *flag, b.syncCount));
        }
        *flag += 1;
        Arrive(b);
        b.syncCount += 1;
    }

    int NumBlocks() const { return static_cast<int>(blocks_.size()); }
    std::vector<Block> &Blocks() { return blocks_; }
    uint32_t Epoch() const { return epoch_; }

private:
    enum State { kReady, kWaiting, kDone };

    void PassBaton(int from)  // with mu_ held
    {
        const int n = NumBlocks();
        for (int k = 1; k <= n; ++k) {
            const int i = (from + k) % n;
            if (state_[i] == kReady) {
                current_ = i;
                return;
            }
        }
        int waiting = 0;
        int done = 0;
        for (State s : state_) {
            waiting += s == kWaiting;
            done += s == kDone;
        }
        if (waiting == 0) {
            current_ = -1;  // everyone finished
            return;
        }
        if (done > 0) {
            Fail(Format("%d block(s) returned while %d wait in SyncAll: on hardware the waiting cores never "
                        "resume", done, waiting));
            return;
        }
        epoch_ += 1;  // barrier released
        for (int i = 0; i < n; ++i) {
            auto *flag = reinterpret_cast<int32_t *>(const_cast<uint8_t *>(syncBase_) + 32 * i);
            *flag = static_cast<int32_t>(epoch_);  // the first SyncAll rewrites its flag until all arrive
            state_[i] = kReady;
        }
        current_ = 0;
    }

    void Fail(const std::string &why)  // with mu_ held
    {
        if (error_.empty()) {
            error_ = why;
        }
        aborted_ = true;
        current_ = -1;
    }

    void WaitTurn(int i, std::unique_lock<std::mutex> &lock)
    {
        cv_.wait(lock, [&] { return aborted_ || current_ == i; });
        if (aborted_) {
            throw Abort{};
        }
    }

    void Arrive(Block &b)
    {
        std::unique_lock<std::mutex> lock(mu_);
        state_[b.idx] = kWaiting;
        PassBaton(b.idx);
        cv_.notify_all();
        WaitTurn(b.idx, lock);
    }

    std::vector<Block> blocks_;
    std::vector<GmBuffer> gm_;
    const uint8_t *syncBase_ = nullptr;
    uint32_t epoch_ = 0;
    std::mutex mu_;
    std::condition_variable cv_;
    std::vector<State> state_;
    int current_ = 0;
    bool aborted_ = false;
    std::string error_;
};

inline Machine *&CurrentMachine()
{
    static Machine *machine = nullptr;
    return machine;
}

inline Block *&CurrentBlock()
{
    thread_local Block *block = nullptr;
    return block;
}

inline Block &Cur()
{
    Block *b = CurrentBlock();
    if (b == nullptr) {
        throw Violation("AscendC call outside a kernel launch");
    }
    return *b;
}

inline void Machine::Run(const std::function<void()> &kernel)
{
    const int n = NumBlocks();
    state_.assign(n, kReady);
    current_ = 0;
    aborted_ = false;
    error_.clear();
    CurrentMachine() = this;
    std::vector<std::thread> threads;
    for (int i = 0; i < n; ++i) {
        threads.emplace_back([this, i, &kernel] {
            CurrentBlock() = &blocks_[i];
            std::unique_lock<std::mutex> lock(mu_);
            try {
                WaitTurn(i, lock);
                lock.unlock();
                try {
                    kernel();
                    lock.lock();
                } catch (const Violation &err) {
                    lock.lock();
                    Fail(err.what());
                } catch (const std::exception &err) {
                    lock.lock();
                    Fail(Format("block %d: %s", i, err.what()));
                }
            } catch (const Abort &) {
                if (!lock.owns_lock()) {
                    lock.lock();
                }
            }
            state_[i] = kDone;
            if (!aborted_) {
                PassBaton(i);
            }
            cv_.notify_all();
            CurrentBlock() = nullptr;
        });
    }
    for (auto &t : threads) {
        t.join();
    }
    CurrentMachine() = nullptr;
    if (!error_.empty()) {
        throw Violation(error_);
    }
}

}  // namespace host_check

#endif  // IMG_GBPR_HOST_CHECK_SIM_H
