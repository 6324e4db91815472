// Tiling data of ImgGbprAllocation: the operator attributes and where the kernel keeps its
// work arrays (Unified Buffer when they fit, else the user workspace in global memory).
// 8-byte fields first, then 4-byte ones, padded to a multiple of 8 bytes.
#ifndef IMG_GBPR_ALLOCATION_TILING_H
#define IMG_GBPR_ALLOCATION_TILING_H
#include "register/tilingdata_base.h"

namespace optiling {
BEGIN_TILING_DATA_DEF(ImgGbprAllocationTilingData)
  TILING_DATA_FIELD_DEF(int64_t, numTokens);
  TILING_DATA_FIELD_DEF(int64_t, capacity);
  TILING_DATA_FIELD_DEF(int64_t, strategy);   // 0 random, 1 gbpr, 2 img_gbpr (as in eve_ms)
  TILING_DATA_FIELD_DEF(int64_t, workBytes);  // bytes of the work arrays: kWorkArrays * T * 4
  TILING_DATA_FIELD_DEF(float, beta);
  TILING_DATA_FIELD_DEF(float, ratio);        // redistribution ratio W
  TILING_DATA_FIELD_DEF(uint32_t, workInUb);  // 1: work arrays in UB, 0: in the GM user workspace
  TILING_DATA_FIELD_DEF(uint32_t, reserved);
END_TILING_DATA_DEF;

REGISTER_TILING_DATA_CLASS(ImgGbprAllocation, ImgGbprAllocationTilingData)
}  // namespace optiling
#endif  // IMG_GBPR_ALLOCATION_TILING_H
