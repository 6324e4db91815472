// Host stand-in for CANN's operator registration and tiling-context headers: just enough of
// ops::OpDef, gert::TilingContext and the shape/dtype inference contexts for op_host/ to compile with
// g++, run its tiling function and describe the registered operator. Deprecated calls (e.g.
// OpParamDef::UnknownShapeFormat) are deliberately absent: using them does not compile here.
#ifndef IMG_GBPR_HOST_CHECK_OP_DEF_REGISTRY_H
#define IMG_GBPR_HOST_CHECK_OP_DEF_REGISTRY_H
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "tiling/platform/platform_ascendc.h"

namespace ge {
using graphStatus = uint32_t;
constexpr graphStatus GRAPH_SUCCESS = 0;
constexpr graphStatus GRAPH_FAILED = 0xFFFFFFFF;
enum DataType { DT_FLOAT = 0, DT_BOOL = 12, DT_INT32 = 3 };
enum Format { FORMAT_ND = 2 };
}  // namespace ge

namespace gert {
class Shape {
public:
    Shape() = default;
    Shape(std::initializer_list<int64_t> dims) : dims_(dims) {}
    size_t GetDimNum() const { return dims_.size(); }
    int64_t GetDim(size_t i) const { return i < dims_.size() ? dims_[i] : -1; }
    void SetDimNum(size_t n) { dims_.resize(n); }
    void SetDim(size_t i, int64_t v) { dims_.at(i) = v; }

private:
    std::vector<int64_t> dims_;
};

class StorageShape {
public:
    explicit StorageShape(Shape shape) : shape_(shape) {}
    const Shape &GetStorageShape() const { return shape_; }
    const Shape &GetOriginShape() const { return shape_; }

private:
    Shape shape_;
};

class RuntimeAttrs {
public:
    std::vector<int64_t> ints{0, 0};
    std::vector<float> floats{0.0f, 0.0f, 0.0f, 0.0f};
    const int64_t *GetInt(size_t i) const { return i < ints.size() ? &ints[i] : nullptr; }
    const float *GetFloat(size_t i) const { return i < floats.size() ? &floats[i] : nullptr; }
};

class TilingData {
public:
    explicit TilingData(size_t capacity) : buf_(capacity) {}
    void *GetData() { return buf_.data(); }
    size_t GetCapacity() const { return buf_.size(); }
    void SetDataSize(size_t size) { size_ = size; }
    size_t GetDataSize() const { return size_; }

private:
    std::vector<uint8_t> buf_;
    size_t size_ = 0;
};

class TilingContext {
public:
    TilingContext(StorageShape probs, RuntimeAttrs attrs, fe::PlatFormInfos platform)
        : probs_(probs), attrs_(attrs), platform_(platform), tiling_(1024)
    {}
    const StorageShape *GetInputShape(size_t i) const { return i == 0 ? &probs_ : nullptr; }
    const RuntimeAttrs *GetAttrs() const { return &attrs_; }
    fe::PlatFormInfos *GetPlatformInfo() { return &platform_; }
    void SetBlockDim(uint32_t dim) { blockDim_ = dim; }
    uint32_t GetBlockDim() const { return blockDim_; }
    void SetScheduleMode(uint32_t mode) { scheduleMode_ = mode; }
    uint32_t GetScheduleMode() const { return scheduleMode_; }
    TilingData *GetRawTilingData() { return &tiling_; }
    size_t *GetWorkspaceSizes(size_t n) { workspace_.assign(n, 0); return workspace_.data(); }
    const std::vector<size_t> &Workspace() const { return workspace_; }

private:
    StorageShape probs_;
    RuntimeAttrs attrs_;
    fe::PlatFormInfos platform_;
    TilingData tiling_;
    uint32_t blockDim_ = 0;
    uint32_t scheduleMode_ = 0;
    std::vector<size_t> workspace_;
};

class InferShapeContext {
public:
    std::vector<Shape> inputs;
    std::vector<Shape> outputs{Shape{}, Shape{}, Shape{}};
    const Shape *GetInputShape(size_t i) const { return i < inputs.size() ? &inputs[i] : nullptr; }
    Shape *GetOutputShape(size_t i) { return i < outputs.size() ? &outputs[i] : nullptr; }
};

class InferDataTypeContext {
public:
    std::vector<ge::DataType> outputs{ge::DT_FLOAT, ge::DT_FLOAT, ge::DT_FLOAT};
    void SetOutputDataType(size_t i, ge::DataType dt) { outputs.at(i) = dt; }
};
}  // namespace gert

namespace ops {
enum Option { REQUIRED = 0, OPTIONAL = 1, DYNAMIC = 2 };

struct OpParamDef {
    std::string name;
    Option option = OPTIONAL;
    std::vector<ge::DataType> types;
    std::vector<ge::Format> formats;
    OpParamDef &ParamType(Option o) { option = o; return *this; }
    OpParamDef &DataType(std::vector<ge::DataType> t) { types = t; return *this; }
    OpParamDef &Format(std::vector<ge::Format> f) { formats = f; return *this; }
};

struct OpAttrDef {
    std::string name;
    Option option = OPTIONAL;
    std::string type;
    OpAttrDef &AttrType(Option o) { option = o; return *this; }
    OpAttrDef &Int() { type = "int"; return *this; }
    OpAttrDef &Float() { type = "float"; return *this; }
};

using TilingFn = ge::graphStatus (*)(gert::TilingContext *);
using InferShapeFn = ge::graphStatus (*)(gert::InferShapeContext *);
using InferDataTypeFn = ge::graphStatus (*)(gert::InferDataTypeContext *);

struct OpAICoreDef {
    TilingFn tiling = nullptr;
    std::vector<std::string> configs;
    OpAICoreDef &SetTiling(TilingFn fn) { tiling = fn; return *this; }
    OpAICoreDef &AddConfig(const char *soc) { configs.push_back(soc); return *this; }
};

class OpDef;
inline std::vector<OpDef *> &Registry()
{
    static std::vector<OpDef *> ops;
    return ops;
}

class OpDef {
public:
    explicit OpDef(const char *name) : name_(name) {}
    OpParamDef &Input(const char *name) { return Add(inputs_, name); }
    OpParamDef &Output(const char *name) { return Add(outputs_, name); }
    OpAttrDef &Attr(const char *name) { return Add(attrs_, name); }
    OpDef &SetInferShape(InferShapeFn fn) { inferShape_ = fn; return *this; }
    OpDef &SetInferDataType(InferDataTypeFn fn) { inferDataType_ = fn; return *this; }
    OpAICoreDef &AICore() { return aicore_; }

    std::string name_;
    std::vector<OpParamDef> inputs_;
    std::vector<OpParamDef> outputs_;
    std::vector<OpAttrDef> attrs_;
    InferShapeFn inferShape_ = nullptr;
    InferDataTypeFn inferDataType_ = nullptr;
    OpAICoreDef aicore_;

private:
    template <typename Def>
    static Def &Add(std::vector<Def> &defs, const char *name)
    {
        defs.emplace_back();
        defs.back().name = name;
        return defs.back();
    }
};
}  // namespace ops

#define OP_ADD(opType)                                                         \
    static ops::opType g_op_def_##opType(#opType);                             \
    static const bool g_op_registered_##opType =                               \
        (ops::Registry().push_back(&g_op_def_##opType), true)
#endif  // IMG_GBPR_HOST_CHECK_OP_DEF_REGISTRY_H
