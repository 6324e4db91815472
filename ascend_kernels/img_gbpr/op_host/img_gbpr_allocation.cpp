// Host side of ImgGbprAllocation: operator definition, shape/dtype inference and tiling.
//
// The token allocation of eve-ms (DESIGN section 3; numpy reference in
// eve_ms/ops/token_allocation.py): inputs probs [T,2] float32, is_image [T] bool,
// valid [T] bool, noise [T] float32; outputs expert [T] int32, slot [T] int32,
// counts [4] int32 (kept0, kept1, dropped, redistributed); attributes capacity,
// strategy (0 random, 1 gbpr, 2 img_gbpr), beta, redistribute_ratio.
#include <cstdint>

#include "img_gbpr_allocation_tiling.h"
#include "register/op_def_registry.h"
#include "tiling/platform/platform_ascendc.h"

namespace {
constexpr int64_t kWorkArrays = 5;        // sort keys and tokens (x2, ping-pong) + per-token state
constexpr int64_t kAlignElems = 8;        // 32-byte alignment of each uint32 work array
constexpr uint64_t kUbHeadroom = 16 * 1024;  // UB left to the framework
constexpr int64_t kNumCounts = 4;
constexpr int64_t kMaxStrategy = 2;
}  // namespace

namespace optiling {
static ge::graphStatus TilingFunc(gert::TilingContext *context)
{
    const gert::StorageShape *probsShape = context->GetInputShape(0);
    const gert::RuntimeAttrs *attrs = context->GetAttrs();
    if (probsShape == nullptr || attrs == nullptr) {
        return ge::GRAPH_FAILED;
    }
    const gert::Shape &shape = probsShape->GetStorageShape();
    if (shape.GetDimNum() != 2 || shape.GetDim(1) != 2 || shape.GetDim(0) < 1) {
        return ge::GRAPH_FAILED;
    }
    const int64_t numTokens = shape.GetDim(0);
    const int64_t *capacity = attrs->GetInt(0);
    const int64_t *strategy = attrs->GetInt(1);
    const float *beta = attrs->GetFloat(2);
    const float *ratio = attrs->GetFloat(3);
    if (capacity == nullptr || strategy == nullptr || beta == nullptr || ratio == nullptr) {
        return ge::GRAPH_FAILED;
    }
    if (*capacity < 0 || *capacity > numTokens || *strategy < 0 || *strategy > kMaxStrategy ||
        !(*ratio >= 0.0f && *ratio <= 1.0f)) {
        return ge::GRAPH_FAILED;
    }

    auto platform = platform_ascendc::PlatformAscendC(context->GetPlatformInfo());
    uint64_t ubSize = 0;
    platform.GetCoreMemSize(platform_ascendc::CoreMemType::UB, ubSize);
    const int64_t stride = (numTokens + kAlignElems - 1) / kAlignElems * kAlignElems;
    const int64_t workBytes = kWorkArrays * stride * static_cast<int64_t>(sizeof(uint32_t));
    const bool workInUb = static_cast<uint64_t>(workBytes) + kUbHeadroom <= ubSize;

    ImgGbprAllocationTilingData tiling;
    tiling.set_numTokens(numTokens);
    tiling.set_capacity(*capacity);
    tiling.set_strategy(*strategy);
    tiling.set_workBytes(workBytes);
    tiling.set_beta(*beta);
    tiling.set_ratio(*ratio);
    tiling.set_workInUb(workInUb ? 1 : 0);
    tiling.set_reserved(0);
    // One core: the allocation is a global decision over all T tokens (see op_kernel).
    context->SetBlockDim(1);
    tiling.SaveToBuffer(context->GetRawTilingData()->GetData(), context->GetRawTilingData()->GetCapacity());
    context->GetRawTilingData()->SetDataSize(tiling.GetDataSize());

    size_t *workspace = context->GetWorkspaceSizes(1);
    workspace[0] = platform.GetLibApiWorkSpaceSize() + (workInUb ? 0 : static_cast<size_t>(workBytes));
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
        this->Input("probs").ParamType(REQUIRED).DataType({ge::DT_FLOAT}).Format({ge::FORMAT_ND})
            .UnknownShapeFormat({ge::FORMAT_ND});
        this->Input("is_image").ParamType(REQUIRED).DataType({ge::DT_BOOL}).Format({ge::FORMAT_ND})
            .UnknownShapeFormat({ge::FORMAT_ND});
        this->Input("valid").ParamType(REQUIRED).DataType({ge::DT_BOOL}).Format({ge::FORMAT_ND})
            .UnknownShapeFormat({ge::FORMAT_ND});
        this->Input("noise").ParamType(REQUIRED).DataType({ge::DT_FLOAT}).Format({ge::FORMAT_ND})
            .UnknownShapeFormat({ge::FORMAT_ND});
        this->Output("expert").ParamType(REQUIRED).DataType({ge::DT_INT32}).Format({ge::FORMAT_ND})
            .UnknownShapeFormat({ge::FORMAT_ND});
        this->Output("slot").ParamType(REQUIRED).DataType({ge::DT_INT32}).Format({ge::FORMAT_ND})
            .UnknownShapeFormat({ge::FORMAT_ND});
        this->Output("counts").ParamType(REQUIRED).DataType({ge::DT_INT32}).Format({ge::FORMAT_ND})
            .UnknownShapeFormat({ge::FORMAT_ND});
        this->Attr("capacity").AttrType(REQUIRED).Int();
        this->Attr("strategy").AttrType(REQUIRED).Int();
        this->Attr("beta").AttrType(REQUIRED).Float();
        this->Attr("redistribute_ratio").AttrType(REQUIRED).Float();

        this->SetInferShape(ge::InferShape).SetInferDataType(ge::InferDataType);
        this->AICore().SetTiling(optiling::TilingFunc);
        // Atlas A2 (910B); other SoCs need their DataCacheCleanAndInvalid variant checked first.
        this->AICore().AddConfig("ascend910b");
    }
};

OP_ADD(ImgGbprAllocation);
}  // namespace ops
