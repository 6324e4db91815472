// Runs op_host/img_gbpr_allocation.cpp (operator definition, shape/dtype inference, tiling) on the
// host against the stand-in registration headers, and exposes it to host_check.py.
#include <cstdio>
#include <string>

#include "../op_host/img_gbpr_allocation.cpp"
#include "host_check.h"

bool RunTilingOnHost(int64_t numTokens, int64_t capacity, int64_t strategy, float beta, float ratio,
                     uint32_t aivCores, uint64_t ubBytes, HostTilingReport *report)
{
    gert::RuntimeAttrs attrs;
    attrs.ints = {capacity, strategy};
    attrs.floats = {0.0f, 0.0f, beta, ratio};
    fe::PlatFormInfos platform;
    platform.aivCores = aivCores;
    platform.ubBytes = ubBytes;
    gert::TilingContext context(gert::StorageShape(gert::Shape{numTokens, 2}), attrs, platform);
    *report = HostTilingReport{};
    const ge::graphStatus status = optiling::TilingFunc(&context);
    report->status = status == ge::GRAPH_SUCCESS ? 0 : 1;
    if (status != ge::GRAPH_SUCCESS) {
        return false;
    }
    if (context.GetRawTilingData()->GetDataSize() != sizeof(report->tiling) || context.Workspace().size() != 1) {
        report->status = 2;
        return false;
    }
    std::memcpy(&report->tiling, context.GetRawTilingData()->GetData(), sizeof(report->tiling));
    report->blockDim = context.GetBlockDim();
    report->scheduleMode = context.GetScheduleMode();
    report->workspaceBytes = context.Workspace()[0];
    return true;
}

extern "C" int ImgGbprHostTiling(int64_t numTokens, int64_t capacity, int64_t strategy, float beta, float ratio,
                                 uint32_t aivCores, uint64_t ubBytes, HostTilingReport *report)
{
    return RunTilingOnHost(numTokens, capacity, strategy, beta, ratio, aivCores, ubBytes, report) ? 0 : 1;
}

// The registered operator as JSON: inputs/outputs with dtypes and formats, attributes, SoCs.
extern "C" int ImgGbprHostOpDef(char *out, size_t capacity)
{
    std::string json = "[";
    for (size_t k = 0; k < ops::Registry().size(); ++k) {
        const ops::OpDef &op = *ops::Registry()[k];
        json += (k ? "," : "") + std::string("{\"op\":\"") + op.name_ + "\"";
        for (const char *kind : {"inputs", "outputs"}) {
            const auto &params = std::string(kind) == "inputs" ? op.inputs_ : op.outputs_;
            json += std::string(",\"") + kind + "\":[";
            for (size_t i = 0; i < params.size(); ++i) {
                json += (i ? "," : "") + std::string("{\"name\":\"") + params[i].name + "\",\"required\":" +
                        (params[i].option == ops::REQUIRED ? "true" : "false") + ",\"dtypes\":[";
                for (size_t j = 0; j < params[i].types.size(); ++j) {
                    json += (j ? "," : "") + std::to_string(params[i].types[j]);
                }
                json += "],\"formats\":[";
                for (size_t j = 0; j < params[i].formats.size(); ++j) {
                    json += (j ? "," : "") + std::to_string(params[i].formats[j]);
                }
                json += "]}";
            }
            json += "]";
        }
        json += ",\"attrs\":[";
        for (size_t i = 0; i < op.attrs_.size(); ++i) {
            json += (i ? "," : "") + std::string("{\"name\":\"") + op.attrs_[i].name + "\",\"type\":\"" +
                    op.attrs_[i].type + "\"}";
        }
        json += "],\"socs\":[";
        for (size_t i = 0; i < op.aicore_.configs.size(); ++i) {
            json += (i ? "," : "") + std::string("\"") + op.aicore_.configs[i] + "\"";
        }
        json += std::string("],\"tiling\":") + (op.aicore_.tiling ? "true" : "false") +
                ",\"infer_shape\":" + (op.inferShape_ ? "true" : "false") +
                ",\"infer_dtype\":" + (op.inferDataType_ ? "true" : "false") + "}";
    }
    json += "]";
    if (json.size() + 1 > capacity) {
        return 1;
    }
    std::memcpy(out, json.c_str(), json.size() + 1);
    return 0;
}

// Shape inference for probs [rows, cols] and masks of length maskLen: output lengths, or -1 on failure.
extern "C" int ImgGbprHostInferShape(int64_t rows, int64_t cols, int64_t maskLen, int64_t *lengths)
{
    gert::InferShapeContext context;
    context.inputs = {gert::Shape{rows, cols}, gert::Shape{maskLen}, gert::Shape{maskLen}, gert::Shape{maskLen}};
    if (ge::InferShape(&context) != ge::GRAPH_SUCCESS) {
        return 1;
    }
    gert::InferDataTypeContext types;
    ge::InferDataType(&types);
    for (size_t i = 0; i < 3; ++i) {
        if (context.outputs[i].GetDimNum() != 1 || types.outputs[i] != ge::DT_INT32) {
            return 2;
        }
        lengths[i] = context.outputs[i].GetDim(0);
    }
    return 0;
}
