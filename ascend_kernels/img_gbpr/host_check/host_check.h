// C interface of the host check (host_check.cpp, tiling_check.cpp), used by host_check.py.
#ifndef IMG_GBPR_HOST_CHECK_H
#define IMG_GBPR_HOST_CHECK_H
#include <cstdint>

#include "img_gbpr_allocation_tiling.h"

struct HostTilingReport {
    int32_t status;         // 0: the tiling function succeeded
    uint32_t blockDim;
    uint32_t scheduleMode;
    uint32_t reserved;
    uint64_t workspaceBytes;  // system + user workspace asked of the framework
    optiling::ImgGbprAllocationTilingData tiling;
};

struct HostRunReport {
    HostTilingReport tiling;
    uint32_t blocks;        // blocks that ran
    uint32_t epochs;        // SyncAll intervals (SyncAll calls + 1)
    uint32_t syncAlls;      // SyncAll calls per block
    uint32_t aivOnly;       // every block declared KERNEL_TYPE_AIV_ONLY
    uint64_t ubPeak;        // largest UB allocation of any block, bytes
    char error[1024];       // first violation, empty on success
};

// Runs op_host's tiling function for a probs [T, 2] input on a SoC with `aivCores` vector cores and
// `ubBytes` of UB each.
bool RunTilingOnHost(int64_t numTokens, int64_t capacity, int64_t strategy, float beta, float ratio,
                     uint32_t aivCores, uint64_t ubBytes, HostTilingReport *report);
#endif  // IMG_GBPR_HOST_CHECK_H
