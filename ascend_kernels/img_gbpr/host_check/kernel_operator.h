// Host-side stand-in for the slice of the AscendC API that op_kernel/img_gbpr_allocation.cpp
// uses, so the kernel's algorithm can be compiled with g++ and compared with the numpy
// reference on any machine (tests/ops/test_kernels.py). It models memory only: scalar
// GetValue/SetValue on global and local tensors, TPipe/TBuf allocation, the workspace
// pointer and the tiling struct. It says nothing about CANN API or pipeline correctness,
// which only a build with CANN and a run on an NPU can check (tools/parity.py).
#ifndef IMG_GBPR_HOST_CHECK_KERNEL_OPERATOR_H
#define IMG_GBPR_HOST_CHECK_KERNEL_OPERATOR_H

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <vector>

#define __aicore__
#define __global__
#define __gm__
using GM_ADDR = uint8_t *;

#include "img_gbpr_allocation_tiling.h"
#define GET_TILING_DATA(name, tiling) \
    optiling::ImgGbprAllocationTilingData name = *reinterpret_cast<optiling::ImgGbprAllocationTilingData *>(tiling)

namespace AscendC {

enum class TPosition { VECCALC };
enum class CacheLine { SINGLE_CACHE_LINE, ENTIRE_DATA_CACHE };
enum class DcciDst { CACHELINE_ALL, CACHELINE_UB, CACHELINE_OUT, CACHELINE_ATOMIC };

template <typename T>
class GlobalTensor {
public:
    void SetGlobalBuffer(T *data, uint64_t size) { data_ = data; size_ = size; }
    T GetValue(uint64_t i) const { return data_[Index(i)]; }
    void SetValue(uint64_t i, T v) { data_[Index(i)] = v; }
    GlobalTensor operator[](uint64_t offset) const
    {
        if (offset > size_) throw std::out_of_range("GlobalTensor offset");
        GlobalTensor sub;
        sub.SetGlobalBuffer(data_ + offset, size_ - offset);
        return sub;
    }

private:
    uint64_t Index(uint64_t i) const
    {
        if (i >= size_) throw std::out_of_range("GlobalTensor index");
        return i;
    }
    T *data_ = nullptr;
    uint64_t size_ = 0;
};

template <typename T>
class LocalTensor {
public:
    LocalTensor() = default;
    LocalTensor(T *data, uint32_t size) : data_(data), size_(size) {}
    T GetValue(uint32_t i) const { return data_[Index(i)]; }
    void SetValue(uint32_t i, T v) const { data_[Index(i)] = v; }
    LocalTensor operator[](uint32_t offset) const
    {
        if (offset > size_) throw std::out_of_range("LocalTensor offset");
        return LocalTensor(data_ + offset, size_ - offset);
    }

private:
    uint32_t Index(uint32_t i) const
    {
        if (i >= size_) throw std::out_of_range("LocalTensor index");
        return i;
    }
    T *data_ = nullptr;
    uint32_t size_ = 0;
};

template <TPosition pos>
class TBuf {
public:
    template <typename T>
    LocalTensor<T> Get() { return LocalTensor<T>(reinterpret_cast<T *>(data_), bytes_ / sizeof(T)); }
    uint8_t *data_ = nullptr;
    uint32_t bytes_ = 0;
};

class TPipe {
public:
    template <TPosition pos>
    void InitBuffer(TBuf<pos> &buf, uint32_t bytes)
    {
        storage_.emplace_back(new uint8_t[bytes]);
        buf.data_ = storage_.back().get();
        buf.bytes_ = bytes;
    }

private:
    std::vector<std::unique_ptr<uint8_t[]>> storage_;
};

inline int64_t GetBlockIdx() { return 0; }
inline GM_ADDR GetUserWorkspace(GM_ADDR workspace) { return workspace; }

template <typename T, CacheLine line, DcciDst dst>
void DataCacheCleanAndInvalid(const GlobalTensor<T> &) {}

}  // namespace AscendC

#endif  // IMG_GBPR_HOST_CHECK_KERNEL_OPERATOR_H
