// Host side of ImgGbprAllocation: operator definition, shape/dtype inference and tiling.
//
// The token allocation of eve-ms (DESIGN section 3; numpy reference in
// eve_ms/ops/token_allocation.py): inputs probs [T,2] float32, is_image [T] bool,
// valid [T] bool, noise [T] float32; outputs expert [T] int32, slot [T] int32,
// counts [4] int32 (kept0, kept1, dropped, redistributed); attributes capacity,
// strategy (0 random, 1 gbpr, 2 img_gbpr), beta, redistribute_ratio.
//
// Tiling: the tokens are split into equal ranges (a multiple of 128 tokens) over up to every vector
// core, at least kMinTokensPerCore tokens a core; the Unified Buffer plan below must match
// op_kernel's PlanUb (host_check/ compares them). T is limited by one core's UB: about 36 bytes a
// token of its range plus 42 KiB, i.e. T <= ~200k tokens on 48 vector cores with 192 KiB each.
#include <cstdint>
#include <cstdio>

#include "img_gbpr_allocation_tiling.h"
#include "register/op_def_registry.h"
#include "tiling/platform/platform_ascendc.h"

namespace {
constexpr int64_t kNumCounts = 4;
constexpr int64_t kMaxStrategy = 2;
constexpr int64_t kImgGbpr = 2;
constexpr uint32_t kVecTokens = 128;         // ranges and tiles: multiples of 128 tokens
constexpr uint32_t kTileTokens = 512;        // tokens per input tile in the kernel
constexpr uint32_t kMinTokensPerCore = 512;  // below this a core's exchange costs more than its work
constexpr uint32_t kMaxCores = 512;          // one exchanged row holds 512 buckets
constexpr uint32_t kMaxTokens = 1u << 24;    // the kernel's owner computation is exact below 2^24
constexpr uint32_t kRowWords = 576;
constexpr uint32_t kBuckets = 512;
constexpr uint32_t kChunkRows = 8;
constexpr uint32_t kSyncBytesPerCore = 32;
constexpr uint64_t kGmAlign = 512;
constexpr uint32_t kScheduleBatch = 1;       // all cores start together: the kernel uses SyncAll

uint32_t RoundUp(uint32_t value, uint32_t align) { return (value + align - 1) / align * align; }
uint64_t RoundUp64(uint64_t value, uint64_t align) { return (value + align - 1) / align * align; }
uint32_t BitsBytes(uint32_t tokens) { return RoundUp(tokens / 8, 32); }

// Same buffers, same order and same sizes as PlanUb in op_kernel/img_gbpr_allocation.cpp.
uint64_t KernelUbBytes(uint32_t rangeLen, uint32_t tileLen, uint32_t blockNum, uint32_t chunkRows, bool imgGbpr)
{
    const uint32_t prepare = 46 * tileLen + 2 * RoundUp(tileLen, 32) + 2 * BitsBytes(tileLen);
    const uint32_t sorted = 8 * rangeLen + 3 * 8 * kBuckets;
    const uint32_t sizes[] = {
        4 * rangeLen,                                // expert
        4 * rangeLen,                                // slot
        imgGbpr ? 4 * rangeLen : 32,                 // other expert's key
        BitsBytes(rangeLen),                         // preference bits
        imgGbpr ? BitsBytes(rangeLen) : 32,          // offer bits
        kRowWords * 4, kRowWords * 4, kRowWords * 4, kRowWords * 4,  // row, total, before, cursor
        chunkRows * kRowWords * 4,                   // exchange chunk
        RoundUp(blockNum * kSyncBytesPerCore, 32),   // SyncAll UB workspace
        32,                                          // counts
        8 * rangeLen,                                // records
        sorted > prepare ? sorted : prepare,         // input tile / sorted runs
    };
    uint64_t total = 0;
    for (uint32_t size : sizes) {
        total += RoundUp(size, 32);
    }
    return total;
}

ge::graphStatus Fail(const char *why)
{
    std::fprintf(stderr, "ImgGbprAllocation tiling: %s\n", why);
    return ge::GRAPH_FAILED;
}
}  // namespace

namespace optiling {
static ge::graphStatus TilingFunc(gert::TilingContext *context)
{
    const gert::StorageShape *probsShape = context->GetInputShape(0);
    const gert::RuntimeAttrs *attrs = context->GetAttrs();
    if (probsShape == nullptr || attrs == nullptr) {
        return Fail("missing input shape or attributes");
    }
    const gert::Shape &shape = probsShape->GetStorageShape();
    if (shape.GetDimNum() != 2 || shape.GetDim(1) != 2 || shape.GetDim(0) < 1) {
        return Fail("probs must have shape [T, 2] with T >= 1");
    }
    const int64_t numTokens = shape.GetDim(0);
    const int64_t *capacity = attrs->GetInt(0);
    const int64_t *strategy = attrs->GetInt(1);
    const float *beta = attrs->GetFloat(2);
    const float *ratio = attrs->GetFloat(3);
    if (capacity == nullptr || strategy == nullptr || beta == nullptr || ratio == nullptr) {
        return Fail("missing attribute");
    }
    if (numTokens >= static_cast<int64_t>(kMaxTokens)) {
        return Fail("T must be below 2^24 tokens");
    }
    if (*capacity < 0 || *capacity > numTokens || *strategy < 0 || *strategy > kMaxStrategy ||
        !(*ratio >= 0.0f && *ratio <= 1.0f)) {
        return Fail("capacity must be in [0, T], strategy in {0, 1, 2}, redistribute_ratio in [0, 1]");
    }

    auto platform = platform_ascendc::PlatformAscendC(context->GetPlatformInfo());
    const uint32_t cores = platform.GetCoreNumAiv();
    uint64_t ubSize = 0;
    platform.GetCoreMemSize(platform_ascendc::CoreMemType::UB, ubSize);
    if (cores == 0) {
        return Fail("the platform reports no vector core");
    }
    const uint32_t tokens = static_cast<uint32_t>(numTokens);
    uint32_t blockNum = (tokens + kMinTokensPerCore - 1) / kMinTokensPerCore;
    blockNum = blockNum < cores ? blockNum : cores;
    blockNum = blockNum < kMaxCores ? blockNum : kMaxCores;
    const uint32_t rangeLen = RoundUp((tokens + blockNum - 1) / blockNum, kVecTokens);
    blockNum = (tokens + rangeLen - 1) / rangeLen;  // no core without tokens
    const uint32_t tileLen = rangeLen < kTileTokens ? rangeLen : kTileTokens;
    const uint32_t chunkRows = blockNum < kChunkRows ? blockNum : kChunkRows;
    const bool imgGbpr = *strategy == kImgGbpr;
    const uint64_t ubBytes = KernelUbBytes(rangeLen, tileLen, blockNum, chunkRows, imgGbpr);
    if (ubBytes > ubSize) {
        std::fprintf(stderr, "ImgGbprAllocation tiling: T = %lld needs %llu bytes of UB per core on %u cores, "
                     "the SoC has %llu\n", static_cast<long long>(numTokens), static_cast<unsigned long long>(ubBytes),
                     blockNum, static_cast<unsigned long long>(ubSize));
        return ge::GRAPH_FAILED;
    }

    // User workspace: SyncAll flags, two sets of exchanged rows, two record arrays.
    const uint64_t syncOffset = 0;
    const uint64_t histOffset = RoundUp64(syncOffset + uint64_t{blockNum} * kSyncBytesPerCore, kGmAlign);
    const uint64_t recordOffsetA = RoundUp64(histOffset + 2ull * blockNum * kRowWords * 4, kGmAlign);
    const uint64_t recordOffsetB = RoundUp64(recordOffsetA + 8ull * tokens, kGmAlign);
    const uint64_t userBytes = RoundUp64(recordOffsetB + 8ull * tokens, kGmAlign);

    ImgGbprAllocationTilingData tiling;
    tiling.set_numTokens(numTokens);
    tiling.set_capacity(*capacity);
    tiling.set_strategy(*strategy);
    tiling.set_syncOffset(syncOffset);
    tiling.set_histOffset(histOffset);
    tiling.set_recordOffsetA(recordOffsetA);
    tiling.set_recordOffsetB(recordOffsetB);
    tiling.set_userWorkspaceBytes(userBytes);
    tiling.set_beta(*beta);
    tiling.set_ratio(*ratio);
    tiling.set_blockNum(blockNum);
    tiling.set_rangeLen(rangeLen);
    tiling.set_tileLen(tileLen);
    tiling.set_chunkRows(chunkRows);
    tiling.set_ubBytes(static_cast<uint32_t>(ubBytes));
    tiling.set_reserved(0);
    context->SetBlockDim(blockNum);
    context->SetScheduleMode(kScheduleBatch);
    tiling.SaveToBuffer(context->GetRawTilingData()->GetData(), context->GetRawTilingData()->GetCapacity());
    context->GetRawTilingData()->SetDataSize(tiling.GetDataSize());

    size_t *workspace = context->GetWorkspaceSizes(1);
    workspace[0] = platform.GetLibApiWorkSpaceSize() + static_cast<size_t>(userBytes);
    return ge::GRAPH_SUCCESS;
}
}  // namespace optiling

namespace ge {
static ge::graphStatus InferShape(gert::InferShapeContext *context)
{
    const gert::Shape *probs = context->GetInputShape(0);
    if (probs == nullptr || probs->GetDimNum() != 2 || probs->GetDim(1) != 2) {
        return GRAPH_FAILED;
    }
    const int64_t numTokens = probs->GetDim(0);
    for (size_t i = 1; i < 4; ++i) {
        const gert::Shape *mask = context->GetInputShape(i);
        if (mask == nullptr || mask->GetDimNum() != 1 || mask->GetDim(0) != numTokens) {
            return GRAPH_FAILED;
        }
    }
    const int64_t lengths[3] = {numTokens, numTokens, kNumCounts};
    for (size_t i = 0; i < 3; ++i) {
        gert::Shape *out = context->GetOutputShape(i);
        if (out == nullptr) {
            return GRAPH_FAILED;
        }
        out->SetDimNum(1);
        out->SetDim(0, lengths[i]);
    }
    return GRAPH_SUCCESS;
}

static ge::graphStatus InferDataType(gert::InferDataTypeContext *context)
{
    for (size_t i = 0; i < 3; ++i) {
        context->SetOutputDataType(i, ge::DT_INT32);
    }
    return GRAPH_SUCCESS;
}
}  // namespace ge

namespace ops {
class ImgGbprAllocation : public OpDef {
public:
    explicit ImgGbprAllocation(const char *name) : OpDef(name)
    {
        this->Input("probs").ParamType(REQUIRED).DataType({ge::DT_FLOAT}).Format({ge::FORMAT_ND});
        this->Input("is_image").ParamType(REQUIRED).DataType({ge::DT_BOOL}).Format({ge::FORMAT_ND});
        this->Input("valid").ParamType(REQUIRED).DataType({ge::DT_BOOL}).Format({ge::FORMAT_ND});
        this->Input("noise").ParamType(REQUIRED).DataType({ge::DT_FLOAT}).Format({ge::FORMAT_ND});
        this->Output("expert").ParamType(REQUIRED).DataType({ge::DT_INT32}).Format({ge::FORMAT_ND});
        this->Output("slot").ParamType(REQUIRED).DataType({ge::DT_INT32}).Format({ge::FORMAT_ND});
        this->Output("counts").ParamType(REQUIRED).DataType({ge::DT_INT32}).Format({ge::FORMAT_ND});
        this->Attr("capacity").AttrType(REQUIRED).Int();
        this->Attr("strategy").AttrType(REQUIRED).Int();
        this->Attr("beta").AttrType(REQUIRED).Float();
        this->Attr("redistribute_ratio").AttrType(REQUIRED).Float();

        this->SetInferShape(ge::InferShape).SetInferDataType(ge::InferDataType);
        this->AICore().SetTiling(optiling::TilingFunc);
        // Atlas A2 (910B): the SoC the build preset compiles for (CMakePresets.json, ASCEND_COMPUTE_UNIT).
        this->AICore().AddConfig("ascend910b");
    }
};

OP_ADD(ImgGbprAllocation);
}  // namespace ops
