// Tiling data of ImgGbprAllocation: the operator attributes, how the T tokens are split over the
// vector cores, how each core's Unified Buffer is divided, and where the work arrays sit in the user
// workspace. The tiling function (img_gbpr_allocation.cpp) fills it; op_kernel reads it.
// 8-byte fields first, then 4-byte ones, padded to a multiple of 8 bytes.
#ifndef IMG_GBPR_ALLOCATION_TILING_H
#define IMG_GBPR_ALLOCATION_TILING_H
#include "register/tilingdata_base.h"

namespace optiling {
BEGIN_TILING_DATA_DEF(ImgGbprAllocationTilingData)
  TILING_DATA_FIELD_DEF(int64_t, numTokens);
  TILING_DATA_FIELD_DEF(int64_t, capacity);
  TILING_DATA_FIELD_DEF(int64_t, strategy);        // 0 random, 1 gbpr, 2 img_gbpr (as in eve_ms)
  TILING_DATA_FIELD_DEF(uint64_t, syncOffset);     // user-workspace byte offsets: SyncAll flags,
  TILING_DATA_FIELD_DEF(uint64_t, histOffset);     // exchanged histogram rows (two sets, alternating),
  TILING_DATA_FIELD_DEF(uint64_t, recordOffsetA);  // and two record arrays of T x 8 bytes (ping-pong)
  TILING_DATA_FIELD_DEF(uint64_t, recordOffsetB);
  TILING_DATA_FIELD_DEF(uint64_t, userWorkspaceBytes);
  TILING_DATA_FIELD_DEF(float, beta);
  TILING_DATA_FIELD_DEF(float, ratio);             // redistribution ratio W
  TILING_DATA_FIELD_DEF(uint32_t, blockNum);       // vector cores used
  TILING_DATA_FIELD_DEF(uint32_t, rangeLen);       // tokens owned by each core (a multiple of 128)
  TILING_DATA_FIELD_DEF(uint32_t, tileLen);        // tokens per input tile while computing keys
  TILING_DATA_FIELD_DEF(uint32_t, chunkRows);      // histogram rows read per DMA in an exchange
  TILING_DATA_FIELD_DEF(uint32_t, ubBytes);        // Unified Buffer bytes the kernel allocates per core
  TILING_DATA_FIELD_DEF(uint32_t, reserved);
END_TILING_DATA_DEF;

REGISTER_TILING_DATA_CLASS(ImgGbprAllocation, ImgGbprAllocationTilingData)
}  // namespace optiling
#endif  // IMG_GBPR_ALLOCATION_TILING_H
