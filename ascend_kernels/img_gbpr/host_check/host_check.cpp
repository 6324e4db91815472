// Runs op_kernel/img_gbpr_allocation.cpp on the host: the tiling function decides the launch (block
// count, UB plan, workspace), then every block runs on the modelled machine (sim.h), with poisoned
// outputs and workspace. Exposed to host_check.py through ImgGbprHostRun.
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "../op_kernel/img_gbpr_allocation.cpp"
#include "host_check.h"

extern "C" int ImgGbprHostRun(int64_t numTokens, const float *probs, const uint8_t *isImage, const uint8_t *valid,
                              const float *noise, int64_t capacity, int64_t strategy, float beta, float ratio,
                              uint32_t aivCores, uint64_t ubBytes, int32_t *expert, int32_t *slot, int32_t *counts,
                              uint64_t *stats, uint64_t statsCapacity, HostRunReport *report)
{
    *report = HostRunReport{};
    auto fail = [&](const std::string &why) {
        std::snprintf(report->error, sizeof(report->error), "%s", why.c_str());
        return 1;
    };
    if (!RunTilingOnHost(numTokens, capacity, strategy, beta, ratio, aivCores, ubBytes, &report->tiling)) {
        return fail("the tiling function failed");
    }
    const HostTilingReport &t = report->tiling;
    const uint64_t T = static_cast<uint64_t>(numTokens);
    std::vector<uint8_t> workspace(t.workspaceBytes, 0xAB);  // the framework does not zero it
    std::fill(expert, expert + T, 0x5A5A5A5A);
    std::fill(slot, slot + T, 0x5A5A5A5A);
    std::fill(counts, counts + 4, 0x5A5A5A5A);
    try {
        host_check::Machine machine(static_cast<int>(t.blockDim), ubBytes, 2024u);
        machine.AddGm("probs", const_cast<float *>(probs), 8 * T, false);
        machine.AddGm("is_image", const_cast<uint8_t *>(isImage), T, false);
        machine.AddGm("valid", const_cast<uint8_t *>(valid), T, false);
        machine.AddGm("noise", const_cast<float *>(noise), 4 * T, false);
        machine.AddGm("expert", expert, 4 * T, true);
        machine.AddGm("slot", slot, 4 * T, true);
        machine.AddGm("counts", counts, 16, true);
        uint8_t *user = workspace.data() + AscendC::kHostSystemWorkspace;
        if (t.workspaceBytes < AscendC::kHostSystemWorkspace + t.tiling.userWorkspaceBytes) {
            return fail("the workspace size does not cover the user workspace");
        }
        machine.AddGm("workspace", user, t.tiling.userWorkspaceBytes, true);
        machine.SetSyncArea(user + t.tiling.syncOffset, 32ull * t.blockDim);
        optiling::ImgGbprAllocationTilingData tiling = t.tiling;
        machine.Run([&] {
            img_gbpr_allocation(reinterpret_cast<GM_ADDR>(const_cast<float *>(probs)), const_cast<uint8_t *>(isImage),
                                const_cast<uint8_t *>(valid), reinterpret_cast<GM_ADDR>(const_cast<float *>(noise)),
                                reinterpret_cast<GM_ADDR>(expert), reinterpret_cast<GM_ADDR>(slot),
                                reinterpret_cast<GM_ADDR>(counts), workspace.data(),
                                reinterpret_cast<GM_ADDR>(&tiling));
        });
        auto &blocks = machine.Blocks();
        report->blocks = static_cast<uint32_t>(blocks.size());
        report->aivOnly = 1;
        for (auto &b : blocks) {
            report->epochs = std::max<uint32_t>(report->epochs, static_cast<uint32_t>(b.epochStats.size()));
            report->ubPeak = std::max<uint64_t>(report->ubPeak, b.ubPeak);
            report->aivOnly &= b.kernelType == KERNEL_TYPE_AIV_ONLY ? 1u : 0u;
        }
        report->syncAlls = static_cast<uint32_t>(blocks[0].syncCount);
        const uint64_t needed = uint64_t{report->epochs} * blocks.size() * host_check::kNumCounters;
        if (stats != nullptr && needed <= statsCapacity) {
            std::fill(stats, stats + needed, 0);
            for (size_t b = 0; b < blocks.size(); ++b) {
                for (size_t e = 0; e < blocks[b].epochStats.size(); ++e) {
                    for (int c = 0; c < host_check::kNumCounters; ++c) {
                        stats[(e * blocks.size() + b) * host_check::kNumCounters + c] = blocks[b].epochStats[e][c];
                    }
                }
            }
        }
    } catch (const host_check::Violation &err) {
        return fail(err.what());
    }
    return 0;
}
