// Host stand-in for CANN's PlatformAscendC: the core count and UB size of the SoC under test, set by
// the host check (host_check.cpp) instead of read from the device's platform information.
#ifndef IMG_GBPR_HOST_CHECK_PLATFORM_ASCENDC_H
#define IMG_GBPR_HOST_CHECK_PLATFORM_ASCENDC_H
#include <cstdint>

namespace fe {
struct PlatFormInfos {
    uint32_t aivCores = 48;
    uint64_t ubBytes = 196608;
};
}  // namespace fe

namespace platform_ascendc {
enum class CoreMemType { L0_A = 0, L0_B = 1, L0_C = 2, L1 = 3, L2 = 4, UB = 5, HBM = 6, FB = 7, BT = 8, RESERVED };

class PlatformAscendC {
public:
    explicit PlatformAscendC(fe::PlatFormInfos *info) : info_(info) {}
    uint32_t GetCoreNumAiv() const { return info_->aivCores; }
    uint32_t GetCoreNumAic() const { return info_->aivCores / 2; }
    void GetCoreMemSize(const CoreMemType &type, uint64_t &size) const
    {
        size = type == CoreMemType::UB ? info_->ubBytes : 0;
    }
    uint32_t GetLibApiWorkSpaceSize() const { return 1u << 16; }  // = AscendC::kHostSystemWorkspace

private:
    fe::PlatFormInfos *info_;
};
}  // namespace platform_ascendc
#endif  // IMG_GBPR_HOST_CHECK_PLATFORM_ASCENDC_H
