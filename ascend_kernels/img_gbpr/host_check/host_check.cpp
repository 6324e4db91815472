// Runs op_kernel/img_gbpr_allocation.cpp on the host through kernel_operator.h (see there),
// with the work arrays in "UB" (work_in_ub = 1) or in the "GM workspace" (0).
#include <stdexcept>
#include <vector>

#include "../op_kernel/img_gbpr_allocation.cpp"

extern "C" int ImgGbprAllocationOnHost(int64_t num_tokens, float *probs, uint8_t *is_image, uint8_t *valid,
                                       float *noise, int64_t capacity, int64_t strategy, float beta, float ratio,
                                       int work_in_ub, int32_t *expert, int32_t *slot, int32_t *counts)
{
    optiling::ImgGbprAllocationTilingData tiling{};
    const int64_t stride = (num_tokens + 7) / 8 * 8;
    tiling.set_numTokens(num_tokens);
    tiling.set_capacity(capacity);
    tiling.set_strategy(strategy);
    tiling.set_workBytes(5 * stride * static_cast<int64_t>(sizeof(uint32_t)));
    tiling.set_beta(beta);
    tiling.set_ratio(ratio);
    tiling.set_workInUb(work_in_ub ? 1 : 0);
    std::vector<uint8_t> workspace(work_in_ub ? 0 : tiling.workBytes);
    try {
        img_gbpr_allocation(reinterpret_cast<GM_ADDR>(probs), is_image, valid, reinterpret_cast<GM_ADDR>(noise),
                            reinterpret_cast<GM_ADDR>(expert), reinterpret_cast<GM_ADDR>(slot),
                            reinterpret_cast<GM_ADDR>(counts), workspace.data(),
                            reinterpret_cast<GM_ADDR>(&tiling));
    } catch (const std::out_of_range &) {
        return 1;
    }
    return 0;
}
