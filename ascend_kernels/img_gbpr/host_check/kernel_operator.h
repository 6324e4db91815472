// Host stand-in for the slice of the AscendC API (CANN 9.0.0, Atlas A2) that
// op_kernel/img_gbpr_allocation.cpp uses, so that the kernel source compiles with g++ and runs on
// every modelled vector core (sim.h says what is checked). Signatures follow CANN's
// include/basic_api headers; data types, alignment and count rules follow the API documentation for
// Atlas A2 (e.g. And/Or/Not only on 16-bit integers, Compare counts a multiple of 256 bytes, Select
// on half/float, UB operands 32-byte aligned). Float arithmetic is the host's IEEE float32 (gradual
// underflow included); whether the NPU's vector unit flushes subnormals is left to the NPU run.
#ifndef IMG_GBPR_HOST_CHECK_KERNEL_OPERATOR_H
#define IMG_GBPR_HOST_CHECK_KERNEL_OPERATOR_H

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "sim.h"

#define __aicore__
#define __global__
#define __gm__
using GM_ADDR = uint8_t *;
using half = _Float16;
using event_t = int32_t;

#include "img_gbpr_allocation_tiling.h"
#define GET_TILING_DATA(name, tiling) \
    const optiling::ImgGbprAllocationTilingData name = \
        *reinterpret_cast<const optiling::ImgGbprAllocationTilingData *>(tiling)

enum pipe_t { PIPE_S = 0, PIPE_V = 1, PIPE_MTE2 = 2, PIPE_MTE3 = 3, PIPE_ALL = 4 };
enum KernelMetaType {
    KERNEL_TYPE_AIV_ONLY, KERNEL_TYPE_AIC_ONLY, KERNEL_TYPE_MIX_AIV_1_0, KERNEL_TYPE_MIX_AIC_1_0,
    KERNEL_TYPE_MIX_AIC_1_1, KERNEL_TYPE_MIX_AIC_1_2
};
#define KERNEL_TASK_TYPE_DEFAULT(type) (::host_check::Cur().kernelType = static_cast<int>(type))

namespace AscendC {

using host_check::Violation;
using host_check::Format;

enum class TPosition { VECIN, VECOUT, VECCALC };
enum class CMPMODE { LT, GT, EQ, LE, GE, NE };
enum class SELMODE : uint8_t { VSEL_CMPMASK_SPR = 0, VSEL_TENSOR_SCALAR_MODE, VSEL_TENSOR_TENSOR_MODE };
enum class RoundMode { CAST_NONE = 0, CAST_RINT, CAST_FLOOR, CAST_CEIL, CAST_ROUND, CAST_TRUNC, CAST_ODD };
enum class HardEvent : uint8_t {
    MTE2_V, V_MTE2, MTE3_V, V_MTE3, MTE3_MTE2, MTE2_MTE3, S_V, V_S, S_MTE2, MTE2_S, S_MTE3, MTE3_S
};

namespace detail {
struct EventPipes {
    int src;
    int dst;
};
inline EventPipes Pipes(HardEvent event)
{
    using host_check::kMte2;
    using host_check::kMte3;
    using host_check::kS;
    using host_check::kV;
    switch (event) {
        case HardEvent::MTE2_V: return {kMte2, kV};
        case HardEvent::V_MTE2: return {kV, kMte2};
        case HardEvent::MTE3_V: return {kMte3, kV};
        case HardEvent::V_MTE3: return {kV, kMte3};
        case HardEvent::MTE3_MTE2: return {kMte3, kMte2};
        case HardEvent::MTE2_MTE3: return {kMte2, kMte3};
        case HardEvent::S_V: return {kS, kV};
        case HardEvent::V_S: return {kV, kS};
        case HardEvent::S_MTE2: return {kS, kMte2};
        case HardEvent::MTE2_S: return {kMte2, kS};
        case HardEvent::S_MTE3: return {kS, kMte3};
        case HardEvent::MTE3_S: return {kMte3, kS};
    }
    return {kS, kS};
}
}  // namespace detail

// ---- tensors --------------------------------------------------------------------------------------

template <typename T>
class LocalTensor {
public:
    LocalTensor() = default;
    LocalTensor(host_check::Block *block, uint64_t offset, uint64_t count)
        : block_(block), offset_(offset), count_(count)
    {}

    T GetValue(uint64_t i) const
    {
        Check(i, "LocalTensor::GetValue");
        host_check::Block &b = *block_;
        b.Access(host_check::kS, offset_ + i * sizeof(T), sizeof(T), false, b.Step(), "scalar GetValue");
        b.Stats()[host_check::kScalarRead] += 1;
        T value;
        std::memcpy(&value, b.ub.data() + offset_ + i * sizeof(T), sizeof(T));
        return value;
    }

    void SetValue(uint64_t i, T value) const
    {
        Check(i, "LocalTensor::SetValue");
        host_check::Block &b = *block_;
        b.Access(host_check::kS, offset_ + i * sizeof(T), sizeof(T), true, b.Step(), "scalar SetValue");
        b.Stats()[host_check::kScalarWrite] += 1;
        std::memcpy(b.ub.data() + offset_ + i * sizeof(T), &value, sizeof(T));
    }

    LocalTensor operator[](uint64_t offset) const
    {
        if (offset > count_) {
            throw Violation(Format("LocalTensor offset %llu past its %llu elements", (unsigned long long)offset,
                                   (unsigned long long)count_));
        }
        return LocalTensor(block_, offset_ + offset * sizeof(T), count_ - offset);
    }

    template <typename U>
    LocalTensor<U> ReinterpretCast() const
    {
        return LocalTensor<U>(block_, offset_, count_ * sizeof(T) / sizeof(U));
    }

    uint64_t GetSize() const { return count_; }

    // stand-in internals
    host_check::Block *Block() const { return block_; }
    uint64_t Offset() const { return offset_; }
    T *Data() const { return reinterpret_cast<T *>(block_->ub.data() + offset_); }

private:
    void Check(uint64_t i, const char *what) const
    {
        if (block_ == nullptr) {
            throw Violation(Format("%s on a tensor with no buffer", what));
        }
        if (i >= count_) {
            throw Violation(Format("block %d: %s index %llu out of its %llu elements", block_->idx, what,
                                   (unsigned long long)i, (unsigned long long)count_));
        }
    }

    host_check::Block *block_ = nullptr;
    uint64_t offset_ = 0;
    uint64_t count_ = 0;
};

template <typename T>
class GlobalTensor {
public:
    void SetGlobalBuffer(__gm__ T *data, uint64_t size)
    {
        host_check::CurrentMachine()->Find(data, size * sizeof(T), "GlobalTensor::SetGlobalBuffer");
        data_ = data;
        size_ = size;
    }

    GlobalTensor operator[](uint64_t offset) const
    {
        if (offset > size_) {
            throw Violation(Format("GlobalTensor offset %llu past its %llu elements", (unsigned long long)offset,
                                   (unsigned long long)size_));
        }
        GlobalTensor sub;
        sub.data_ = data_ + offset;
        sub.size_ = size_ - offset;
        return sub;
    }

    // The kernel moves global data by DMA only: scalar global access is an error here.
    T GetValue(uint64_t) const { throw Violation("scalar GlobalTensor::GetValue (global memory is read by DMA)"); }
    void SetValue(uint64_t, T) const { throw Violation("scalar GlobalTensor::SetValue (global memory is DMA'd)"); }

    T *Data() const { return data_; }
    uint64_t Size() const { return size_; }

private:
    T *data_ = nullptr;
    uint64_t size_ = 0;
};

// ---- resources ------------------------------------------------------------------------------------

template <TPosition pos>
class TBuf {
public:
    template <typename T>
    LocalTensor<T> Get() const
    {
        return LocalTensor<T>(block_, offset_, bytes_ / sizeof(T));
    }
    template <typename T>
    LocalTensor<T> Get(uint32_t len) const
    {
        if (len * sizeof(T) > bytes_) {
            throw Violation("TBuf::Get: more elements than the buffer holds");
        }
        return LocalTensor<T>(block_, offset_, len);
    }

    host_check::Block *block_ = nullptr;
    uint64_t offset_ = 0;
    uint64_t bytes_ = 0;
};

class TPipe {
public:
    TPipe()
    {
        host_check::Block &b = host_check::Cur();
        if (b.pipe != nullptr) {
            throw Violation("a second TPipe in one kernel");
        }
        b.pipe = this;
    }
    ~TPipe()
    {
        host_check::Block *b = host_check::CurrentBlock();
        if (b != nullptr && b->pipe == this) {
            b->pipe = nullptr;
        }
    }
    TPipe(const TPipe &) = delete;
    TPipe &operator=(const TPipe &) = delete;

    template <TPosition pos>
    void InitBuffer(TBuf<pos> &buf, uint32_t bytes)
    {
        host_check::Block &b = host_check::Cur();
        const uint64_t offset = (b.ubUsed + 31) / 32 * 32;
        if (offset + bytes > b.ub.size()) {
            throw Violation(Format("block %d: InitBuffer of %u bytes at UB offset %llu exceeds the %llu-byte UB",
                                   b.idx, bytes, (unsigned long long)offset, (unsigned long long)b.ub.size()));
        }
        buf.block_ = &b;
        buf.offset_ = offset;
        buf.bytes_ = bytes;
        b.ubUsed = offset + bytes;
        b.ubPeak = b.ubUsed > b.ubPeak ? b.ubUsed : b.ubPeak;
    }

    int32_t FetchEventID(HardEvent) const { return 0; }
};

inline TPipe *GetTPipePtr()
{
    auto *pipe = static_cast<TPipe *>(host_check::Cur().pipe);
    if (pipe == nullptr) {
        throw Violation("GetTPipePtr without a live TPipe");
    }
    return pipe;
}

inline int64_t GetBlockIdx() { return host_check::Cur().idx; }
inline int64_t GetBlockNum() { return host_check::CurrentMachine()->NumBlocks(); }

// System workspace of the stand-in platform (PlatformAscendC::GetLibApiWorkSpaceSize returns the same).
constexpr uint64_t kHostSystemWorkspace = 1 << 16;
inline GM_ADDR GetUserWorkspace(GM_ADDR workspace) { return workspace + kHostSystemWorkspace; }

// ---- synchronisation -----------------------------------------------------------------------------

template <HardEvent event>
void SetFlag(int32_t id)
{
    host_check::Block &b = host_check::Cur();
    const int key = static_cast<int>(event) * 8 + id;
    if (id < 0 || id > 7) {
        throw Violation("SetFlag: event id outside 0..7");
    }
    if (b.flags.count(key) != 0) {
        throw Violation(Format("block %d: SetFlag twice on one event and id without WaitFlag", b.idx));
    }
    b.flags[key] = b.seq;
}

template <HardEvent event>
void WaitFlag(int32_t id)
{
    host_check::Block &b = host_check::Cur();
    const int key = static_cast<int>(event) * 8 + id;
    auto it = b.flags.find(key);
    if (it == b.flags.end()) {
        throw Violation(Format("block %d: WaitFlag without a matching SetFlag: the pipe would wait forever", b.idx));
    }
    const detail::EventPipes p = detail::Pipes(event);
    uint32_t &visible = b.visible[p.src][p.dst];
    visible = it->second > visible ? it->second : visible;
    b.flags.erase(it);
}

template <pipe_t pipe>
void PipeBarrier()
{
    if (pipe == PIPE_ALL) {
        host_check::Cur().Barrier();
    }
    // single-pipe barriers order one pipe, which the model keeps in order anyway
}

template <bool isAIVOnly = true>
void SyncAll(const GlobalTensor<int32_t> &gmWorkspace, const LocalTensor<int32_t> &ubWorkspace,
             const int32_t usedCores = 0)
{
    host_check::Block &b = host_check::Cur();
    host_check::Machine &m = *host_check::CurrentMachine();
    if (!isAIVOnly || usedCores != 0) {
        throw Violation("SyncAll: only the all-core, AIV-only software SyncAll is modelled");
    }
    if (b.kernelType != KERNEL_TYPE_AIV_ONLY) {
        throw Violation("the software SyncAll is for pure vector (KERNEL_TYPE_AIV_ONLY) kernels");
    }
    const uint64_t words = 8ull * m.NumBlocks();
    if (gmWorkspace.Size() < words || ubWorkspace.GetSize() < words) {
        throw Violation(Format("SyncAll: workspaces must hold GetBlockNum() * 32 bytes (%llu int32)",
                               (unsigned long long)words));
    }
    // The library's SyncAll starts with PipeBarrier<PIPE_ALL> and uses the UB workspace as scratch.
    b.Barrier();
    const uint32_t step = b.Step();
    b.Access(host_check::kS, ubWorkspace.Offset(), words * 4, true, step, "SyncAll UB workspace");
    std::memset(ubWorkspace.Data(), 0xA5, words * 4);
    m.SyncAll(b);
    b.Barrier();
}

// ---- data movement ---------------------------------------------------------------------------------

namespace detail {
inline void CheckUbAligned(uint64_t offset, const char *what)
{
    if (offset % 32 != 0) {
        throw Violation(Format("%s: UB address %llu is not 32-byte aligned", what, (unsigned long long)offset));
    }
}

template <typename T>
void CheckRoom(const LocalTensor<T> &t, uint64_t bytes, const char *what)
{
    if (bytes > t.GetSize() * sizeof(T)) {
        throw Violation(Format("block %d: %s needs %llu UB bytes, the tensor has %llu", t.Block()->idx, what,
                               (unsigned long long)bytes, (unsigned long long)(t.GetSize() * sizeof(T))));
    }
}

template <typename T>
void CheckGm(const GlobalTensor<T> &t, uint64_t bytes, const char *what)
{
    if (bytes > t.Size() * sizeof(T)) {
        throw Violation(Format("%s: %llu bytes past the end of the global tensor (%llu bytes)", what,
                               (unsigned long long)bytes, (unsigned long long)(t.Size() * sizeof(T))));
    }
}
}  // namespace detail

struct DataCopyExtParams {
    DataCopyExtParams() {}
    DataCopyExtParams(uint16_t count, uint32_t len, uint32_t srcStrideIn, uint32_t dstStrideIn, uint32_t rsvIn)
        : blockCount(count), blockLen(len), srcStride(srcStrideIn), dstStride(dstStrideIn), rsv(rsvIn)
    {}
    uint16_t blockCount = 1;
    uint32_t blockLen = 0;
    uint32_t srcStride = 0;
    uint32_t dstStride = 0;
    uint32_t rsv = 0;
};

template <typename T>
struct DataCopyPadExtParams {
    DataCopyPadExtParams() {}
    DataCopyPadExtParams(bool isPadValue, uint8_t leftPadValue, uint8_t rightPadValue, T padValue)
        : isPad(isPadValue), leftPadding(leftPadValue), rightPadding(rightPadValue), paddingValue(padValue)
    {}
    bool isPad = false;
    uint8_t leftPadding = 0;
    uint8_t rightPadding = 0;
    T paddingValue = 0;
};

// GM -> UB, count elements, count * sizeof(T) a multiple of 32 bytes.
template <typename T>
void DataCopy(const LocalTensor<T> &dst, const GlobalTensor<T> &src, uint32_t count)
{
    host_check::Block &b = *dst.Block();
    const uint64_t bytes = uint64_t{count} * sizeof(T);
    if (bytes % 32 != 0) {
        throw Violation("DataCopy: count * sizeof(T) must be a multiple of 32 bytes (use DataCopyPad)");
    }
    detail::CheckUbAligned(dst.Offset(), "DataCopy GM->UB");
    detail::CheckRoom(dst, bytes, "DataCopy GM->UB");
    detail::CheckGm(src, bytes, "DataCopy GM->UB");
    const uint32_t step = b.Step();
    host_check::CurrentMachine()->GmAccess(b, host_check::kMte2, src.Data(), bytes, false, step, "DataCopy GM->UB");
    b.Access(host_check::kMte2, dst.Offset(), bytes, true, step, "DataCopy GM->UB");
    std::memcpy(dst.Data(), src.Data(), bytes);
    b.Stats()[host_check::kMte2Count] += 1;
    b.Stats()[host_check::kMte2Bytes] += bytes;
}

// UB -> GM, same rules.
template <typename T>
void DataCopy(const GlobalTensor<T> &dst, const LocalTensor<T> &src, uint32_t count)
{
    host_check::Block &b = *src.Block();
    const uint64_t bytes = uint64_t{count} * sizeof(T);
    if (bytes % 32 != 0) {
        throw Violation("DataCopy: count * sizeof(T) must be a multiple of 32 bytes (use DataCopyPad)");
    }
    detail::CheckUbAligned(src.Offset(), "DataCopy UB->GM");
    detail::CheckRoom(src, bytes, "DataCopy UB->GM");
    detail::CheckGm(dst, bytes, "DataCopy UB->GM");
    const uint32_t step = b.Step();
    b.Access(host_check::kMte3, src.Offset(), bytes, false, step, "DataCopy UB->GM");
    host_check::CurrentMachine()->GmAccess(b, host_check::kMte3, dst.Data(), bytes, true, step, "DataCopy UB->GM");
    std::memcpy(dst.Data(), src.Data(), bytes);
    b.Stats()[host_check::kMte3Count] += 1;
    b.Stats()[host_check::kMte3Bytes] += bytes;
}

// GM -> UB, any byte length; each block lands 32-byte aligned and is padded to 32 bytes with dummy
// data (poisoned here: the kernel must not read it).
template <typename T>
void DataCopyPad(const LocalTensor<T> &dst, const GlobalTensor<T> &src, const DataCopyExtParams &params,
                 const DataCopyPadExtParams<T> &pad)
{
    host_check::Block &b = *dst.Block();
    if (pad.leftPadding != 0 || pad.rightPadding != 0) {
        throw Violation("DataCopyPad: left/right padding is not modelled");
    }
    if (params.blockLen % sizeof(T) != 0) {
        throw Violation("DataCopyPad: blockLen must be a multiple of sizeof(T)");
    }
    detail::CheckUbAligned(dst.Offset(), "DataCopyPad GM->UB");
    const uint64_t padded = (uint64_t{params.blockLen} + 31) / 32 * 32;
    const uint64_t ubBytes = params.blockCount * padded + (params.blockCount > 0 ? (params.blockCount - 1) : 0) *
                                                               uint64_t{params.dstStride} * 32;
    const uint64_t gmBytes = params.blockCount * uint64_t{params.blockLen} +
                             (params.blockCount > 0 ? (params.blockCount - 1) : 0) * uint64_t{params.srcStride};
    detail::CheckRoom(dst, ubBytes, "DataCopyPad GM->UB");
    detail::CheckGm(src, gmBytes, "DataCopyPad GM->UB");
    const uint32_t step = b.Step();
    const auto *from = reinterpret_cast<const uint8_t *>(src.Data());
    uint8_t *to = reinterpret_cast<uint8_t *>(dst.Data());
    for (uint32_t k = 0; k < params.blockCount; ++k) {
        const uint64_t gmOff = k * (uint64_t{params.blockLen} + params.srcStride);
        const uint64_t ubOff = k * (padded + uint64_t{params.dstStride} * 32);
        host_check::CurrentMachine()->GmAccess(b, host_check::kMte2, from + gmOff, params.blockLen, false, step,
                                               "DataCopyPad GM->UB");
        b.Access(host_check::kMte2, dst.Offset() + ubOff, padded, true, step, "DataCopyPad GM->UB");
        std::memcpy(to + ubOff, from + gmOff, params.blockLen);
        std::memset(to + ubOff + params.blockLen, 0xFE, padded - params.blockLen);
    }
    b.Stats()[host_check::kMte2Count] += 1;
    b.Stats()[host_check::kMte2Bytes] += params.blockCount * uint64_t{params.blockLen};
}

// UB -> GM, any byte length; each block is read from a 32-byte aligned UB address.
template <typename T>
void DataCopyPad(const GlobalTensor<T> &dst, const LocalTensor<T> &src, const DataCopyExtParams &params)
{
    host_check::Block &b = *src.Block();
    if (params.blockLen % sizeof(T) != 0) {
        throw Violation("DataCopyPad: blockLen must be a multiple of sizeof(T)");
    }
    detail::CheckUbAligned(src.Offset(), "DataCopyPad UB->GM");
    const uint64_t padded = (uint64_t{params.blockLen} + 31) / 32 * 32;
    const uint64_t ubBytes = params.blockCount * padded + (params.blockCount > 0 ? (params.blockCount - 1) : 0) *
                                                               uint64_t{params.srcStride} * 32;
    const uint64_t gmBytes = params.blockCount * uint64_t{params.blockLen} +
                             (params.blockCount > 0 ? (params.blockCount - 1) : 0) * uint64_t{params.dstStride};
    detail::CheckRoom(src, ubBytes, "DataCopyPad UB->GM");
    detail::CheckGm(dst, gmBytes, "DataCopyPad UB->GM");
    const uint32_t step = b.Step();
    const uint8_t *from = reinterpret_cast<const uint8_t *>(src.Data());
    auto *to = reinterpret_cast<uint8_t *>(dst.Data());
    for (uint32_t k = 0; k < params.blockCount; ++k) {
        const uint64_t ubOff = k * (padded + uint64_t{params.srcStride} * 32);
        const uint64_t gmOff = k * (uint64_t{params.blockLen} + params.dstStride);
        b.Access(host_check::kMte3, src.Offset() + ubOff, params.blockLen, false, step, "DataCopyPad UB->GM");
        host_check::CurrentMachine()->GmAccess(b, host_check::kMte3, to + gmOff, params.blockLen, true, step,
                                               "DataCopyPad UB->GM");
        std::memcpy(to + gmOff, from + ubOff, params.blockLen);
    }
    b.Stats()[host_check::kMte3Count] += 1;
    b.Stats()[host_check::kMte3Bytes] += params.blockCount * uint64_t{params.blockLen};
}

// ---- vector instructions ---------------------------------------------------------------------------

namespace detail {
// One vector instruction: checks alignment and extents, orders it against the other pipes, counts it.
class VecOp {
public:
    VecOp(host_check::Block &block, const char *name) : b_(block), name_(name), step_(block.Step()) {}
    template <typename T>
    void Read(const LocalTensor<T> &t, uint64_t count)
    {
        Touch(t, count * sizeof(T), false);
    }
    template <typename T>
    void Write(const LocalTensor<T> &t, uint64_t count)
    {
        Touch(t, count * sizeof(T), true);
    }
    void Done(uint64_t bytes)
    {
        b_.Stats()[host_check::kVecInstr] += 1;
        b_.Stats()[host_check::kVecBytes] += (bytes + 255) / 256 * 256;
    }

private:
    template <typename T>
    void Touch(const LocalTensor<T> &t, uint64_t bytes, bool write)
    {
        if (t.Block() != &b_) {
            throw Violation(Format("%s: operand from another core's UB", name_));
        }
        CheckUbAligned(t.Offset(), name_);
        CheckRoom(t, bytes, name_);
        b_.Access(host_check::kV, t.Offset(), bytes, write, step_, name_);
    }

    host_check::Block &b_;
    const char *name_;
    uint32_t step_;
};

template <typename T, typename... Allowed>
constexpr bool OneOf = (std::is_same<T, Allowed>::value || ...);

inline bool Compare(float a, float b, CMPMODE mode)
{
    switch (mode) {
        case CMPMODE::LT: return a < b;
        case CMPMODE::GT: return a > b;
        case CMPMODE::EQ: return a == b;
        case CMPMODE::LE: return a <= b;
        case CMPMODE::GE: return a >= b;
        case CMPMODE::NE: return a != b;
    }
    return false;
}

inline bool Bit(const uint8_t *bits, uint64_t i) { return ((bits[i / 8] >> (i % 8)) & 1u) != 0; }
}  // namespace detail

template <typename T>
void Duplicate(const LocalTensor<T> &dst, const T &value, const int32_t &count)
{
    static_assert(detail::OneOf<T, int16_t, uint16_t, half, int32_t, uint32_t, float>, "Duplicate: type");
    detail::VecOp op(*dst.Block(), "Duplicate");
    op.Write(dst, count);
    T *d = dst.Data();
    for (int32_t i = 0; i < count; ++i) {
        d[i] = value;
    }
    op.Done(uint64_t(count) * sizeof(T));
}

#define HOST_CHECK_UNARY_SCALAR(NAME, TYPES, EXPR)                                          \
    template <typename T>                                                                   \
    void NAME(const LocalTensor<T> &dst, const LocalTensor<T> &src, const T &scalar,        \
              const int32_t &count)                                                         \
    {                                                                                       \
        static_assert(detail::OneOf<T, TYPES>, #NAME ": type not supported on Atlas A2");   \
        detail::VecOp op(*dst.Block(), #NAME);                                              \
        op.Read(src, count);                                                                \
        op.Write(dst, count);                                                               \
        const T *s = src.Data();                                                            \
        T *d = dst.Data();                                                                  \
        for (int32_t i = 0; i < count; ++i) {                                               \
            const T x = s[i];                                                               \
            d[i] = static_cast<T>(EXPR);                                                    \
        }                                                                                   \
        op.Done(uint64_t(count) * sizeof(T));                                               \
    }

#define HOST_CHECK_ARITH_TYPES int16_t, half, int32_t, float
HOST_CHECK_UNARY_SCALAR(Adds, HOST_CHECK_ARITH_TYPES, x + scalar)
HOST_CHECK_UNARY_SCALAR(Muls, HOST_CHECK_ARITH_TYPES, x * scalar)
HOST_CHECK_UNARY_SCALAR(Maxs, HOST_CHECK_ARITH_TYPES, x > scalar ? x : scalar)

template <typename T>
void ShiftRight(const LocalTensor<T> &dst, const LocalTensor<T> &src, const T &scalar, const int32_t &count)
{
    static_assert(detail::OneOf<T, int16_t, uint16_t, int32_t, uint32_t>, "ShiftRight: type not supported on Atlas A2");
    if (scalar < 0 || static_cast<uint64_t>(scalar) > 8 * sizeof(T)) {
        throw Violation("ShiftRight: shift outside [0, bit width]");
    }
    detail::VecOp op(*dst.Block(), "ShiftRight");
    op.Read(src, count);
    op.Write(dst, count);
    const T *s = src.Data();
    T *d = dst.Data();
    for (int32_t i = 0; i < count; ++i) {
        // unsigned: logical shift; signed: arithmetic shift (C++20 semantics, g++ does this for C++17 too)
        const bool all = static_cast<uint64_t>(scalar) == 8 * sizeof(T);  // shifting every bit out
        d[i] = all ? static_cast<T>(std::is_signed<T>::value && s[i] < 0 ? -1 : 0) : static_cast<T>(s[i] >> scalar);
    }
    op.Done(uint64_t(count) * sizeof(T));
}

#define HOST_CHECK_BINARY(NAME, TYPES, EXPR)                                                            \
    template <typename T>                                                                               \
    void NAME(const LocalTensor<T> &dst, const LocalTensor<T> &src0, const LocalTensor<T> &src1,        \
              const int32_t &count)                                                                     \
    {                                                                                                   \
        static_assert(detail::OneOf<T, TYPES>, #NAME ": type not supported on Atlas A2");               \
        detail::VecOp op(*dst.Block(), #NAME);                                                          \
        op.Read(src0, count);                                                                           \
        op.Read(src1, count);                                                                           \
        op.Write(dst, count);                                                                           \
        const T *a = src0.Data();                                                                       \
        const T *c = src1.Data();                                                                       \
        T *d = dst.Data();                                                                              \
        for (int32_t i = 0; i < count; ++i) {                                                           \
            const T x = a[i];                                                                           \
            const T y = c[i];                                                                           \
            d[i] = static_cast<T>(EXPR);                                                                \
        }                                                                                               \
        op.Done(uint64_t(count) * sizeof(T));                                                           \
    }

HOST_CHECK_BINARY(Add, HOST_CHECK_ARITH_TYPES, static_cast<T>(x + y))
HOST_CHECK_BINARY(Sub, HOST_CHECK_ARITH_TYPES, static_cast<T>(x - y))
#define HOST_CHECK_BITS_TYPES int16_t, uint16_t
HOST_CHECK_BINARY(And, HOST_CHECK_BITS_TYPES, x & y)
HOST_CHECK_BINARY(Or, HOST_CHECK_BITS_TYPES, x | y)

template <typename T>
void Not(const LocalTensor<T> &dst, const LocalTensor<T> &src, const int32_t &count)
{
    static_assert(detail::OneOf<T, int16_t, uint16_t>, "Not: type not supported on Atlas A2");
    detail::VecOp op(*dst.Block(), "Not");
    op.Read(src, count);
    op.Write(dst, count);
    const T *s = src.Data();
    T *d = dst.Data();
    for (int32_t i = 0; i < count; ++i) {
        d[i] = static_cast<T>(~s[i]);
    }
    op.Done(uint64_t(count) * sizeof(T));
}

template <typename T>
void Abs(const LocalTensor<T> &dst, const LocalTensor<T> &src, const int32_t &count)
{
    static_assert(detail::OneOf<T, half, float>, "Abs: type not supported on Atlas A2");
    detail::VecOp op(*dst.Block(), "Abs");
    op.Read(src, count);
    op.Write(dst, count);
    const T *s = src.Data();
    T *d = dst.Data();
    for (int32_t i = 0; i < count; ++i) {
        d[i] = static_cast<T>(std::fabs(static_cast<float>(s[i])));
    }
    op.Done(uint64_t(count) * sizeof(T));
}

// Only the conversions the kernel uses, as listed for Atlas A2: uint8 -> half and half -> float (exact).
template <typename T, typename U>
void Cast(const LocalTensor<T> &dst, const LocalTensor<U> &src, const RoundMode &roundMode, const uint32_t count)
{
    static_assert((std::is_same<T, half>::value && std::is_same<U, uint8_t>::value) ||
                      (std::is_same<T, float>::value && std::is_same<U, half>::value),
                  "Cast: conversion not modelled");
    if (roundMode != RoundMode::CAST_NONE) {
        throw Violation("Cast: these exact conversions take CAST_NONE");
    }
    detail::VecOp op(*dst.Block(), "Cast");
    op.Read(src, count);
    op.Write(dst, count);
    const U *s = src.Data();
    T *d = dst.Data();
    for (uint32_t i = 0; i < count; ++i) {
        d[i] = static_cast<T>(s[i]);
    }
    op.Done(uint64_t(count) * (sizeof(T) > sizeof(U) ? sizeof(T) : sizeof(U)));
}

namespace detail {
template <typename T, typename U>
void CompareInto(const char *name, const LocalTensor<U> &dst, const LocalTensor<T> &src0, const T *src1, T scalar,
                 CMPMODE mode, uint32_t count, const LocalTensor<T> *src1Tensor)
{
    static_assert(std::is_same<U, uint8_t>::value, "Compare: the destination holds bits in uint8_t");
    static_assert(OneOf<T, half, float>, "Compare: half/float (int32_t only with EQ, not modelled)");
    if ((uint64_t{count} * sizeof(T)) % 256 != 0) {
        throw Violation(Format("%s: count * sizeof(T) must be a multiple of 256 bytes (count %u)", name, count));
    }
    VecOp op(*dst.Block(), name);
    op.Read(src0, count);
    if (src1Tensor != nullptr) {
        op.Read(*src1Tensor, count);
    }
    op.Write(dst, count / 8);
    const T *a = src0.Data();
    uint8_t *d = dst.Data();
    std::vector<uint8_t> bits(count / 8, 0);
    for (uint32_t i = 0; i < count; ++i) {
        const float y = static_cast<float>(src1 != nullptr ? src1[i] : scalar);
        if (Compare(static_cast<float>(a[i]), y, mode)) {
            bits[i / 8] |= static_cast<uint8_t>(1u << (i % 8));
        }
    }
    std::memcpy(d, bits.data(), bits.size());
    op.Done(uint64_t(count) * sizeof(T));
}
}  // namespace detail

template <typename T, typename U>
void Compare(const LocalTensor<U> &dst, const LocalTensor<T> &src0, const LocalTensor<T> &src1, CMPMODE cmpMode,
             uint32_t count)
{
    detail::CompareInto("Compare", dst, src0, src1.Data(), T(0), cmpMode, count, &src1);
}

template <typename T, typename U>
void Compares(const LocalTensor<U> &dst, const LocalTensor<T> &src0, const T src1Scalar, CMPMODE cmpMode,
              uint32_t count)
{
    detail::CompareInto<T, U>("Compares", dst, src0, nullptr, src1Scalar, cmpMode, count, nullptr);
}

// Mode 2 (VSEL_TENSOR_TENSOR_MODE): bit i of selMask picks src0[i] (1) or src1[i] (0); a bit move.
template <typename T, typename U>
void Select(const LocalTensor<T> &dst, const LocalTensor<U> &selMask, const LocalTensor<T> &src0,
            const LocalTensor<T> &src1, SELMODE selMode, uint32_t count)
{
    static_assert(detail::OneOf<T, half, float>, "Select: half/float on Atlas A2");
    static_assert(std::is_same<U, uint8_t>::value, "Select: the modelled mask type is uint8_t");
    if (selMode != SELMODE::VSEL_TENSOR_TENSOR_MODE) {
        throw Violation("Select: only VSEL_TENSOR_TENSOR_MODE is modelled");
    }
    detail::VecOp op(*dst.Block(), "Select");
    op.Read(selMask, (count + 7) / 8);
    op.Read(src0, count);
    op.Read(src1, count);
    op.Write(dst, count);
    const uint8_t *m = selMask.Data();
    const T *a = src0.Data();
    const T *c = src1.Data();
    std::vector<T> out(count);
    for (uint32_t i = 0; i < count; ++i) {
        out[i] = detail::Bit(m, i) ? a[i] : c[i];
    }
    std::memcpy(dst.Data(), out.data(), count * sizeof(T));
    op.Done(uint64_t(count) * sizeof(T));
}

struct GatherMaskParams {
    GatherMaskParams() {}
    GatherMaskParams(uint8_t src0BlockStrideIn, uint16_t repeatTimesIn, uint16_t src0RepeatStrideIn,
                     uint8_t src1RepeatStrideIn)
        : src0BlockStride(src0BlockStrideIn), repeatTimes(repeatTimesIn), src0RepeatStride(src0RepeatStrideIn),
          src1RepeatStride(src1RepeatStrideIn)
    {}
    uint8_t src0BlockStride = 1;
    uint16_t repeatTimes = 0;
    uint16_t src0RepeatStride = 8;
    uint8_t src1RepeatStride = 8;
};

// Built-in patterns, normal mode: each repeat reads 8 blocks of 32 bytes and keeps the elements its
// pattern selects (1 even, 2 odd, 3..6 one of four, 7 all), written contiguously to dst.
template <typename T>
void GatherMask(const LocalTensor<T> &dst, const LocalTensor<T> &src0, const uint8_t src1Pattern,
                const bool reduceMode, const uint32_t mask, const GatherMaskParams &params, uint64_t &rsvdCnt)
{
    static_assert(detail::OneOf<T, int16_t, uint16_t, half, int32_t, uint32_t, float>, "GatherMask: type");
    if (reduceMode || mask != 0) {
        throw Violation("GatherMask: only normal mode (reduceMode false, mask 0) is modelled");
    }
    if (src1Pattern < 1 || src1Pattern > 7 || params.repeatTimes == 0 || params.repeatTimes > 255) {
        throw Violation("GatherMask: built-in pattern in [1, 7] and 1..255 repeats");
    }
    constexpr uint64_t perBlock = 32 / sizeof(T);
    constexpr uint64_t perRepeat = 256 / sizeof(T);
    const uint64_t span = (uint64_t{params.repeatTimes} - 1) * params.src0RepeatStride * perBlock +
                          7 * uint64_t{params.src0BlockStride} * perBlock + perBlock;
    detail::VecOp op(*dst.Block(), "GatherMask");
    op.Read(src0, span);
    const T *s = src0.Data();
    std::vector<T> out;
    for (uint64_t r = 0; r < params.repeatTimes; ++r) {
        for (uint64_t e = 0; e < perRepeat; ++e) {
            const uint64_t block = e / perBlock;
            const uint64_t at = r * params.src0RepeatStride * perBlock + block * params.src0BlockStride * perBlock +
                                e % perBlock;
            bool keep = false;
            switch (src1Pattern) {
                case 1: keep = e % 2 == 0; break;
                case 2: keep = e % 2 == 1; break;
                case 7: keep = true; break;
                default: keep = e % 4 == static_cast<uint64_t>(src1Pattern - 3); break;
            }
            if (keep) {
                out.push_back(s[at]);
            }
        }
    }
    op.Write(dst, out.size());
    std::memcpy(dst.Data(), out.data(), out.size() * sizeof(T));
    rsvdCnt = out.size();
    op.Done(uint64_t{params.repeatTimes} * 256);
}

}  // namespace AscendC

#endif  // IMG_GBPR_HOST_CHECK_KERNEL_OPERATOR_H
