// The attribute interface MindSpore hands to `ops.Custom(func_type="aot")` kernels.
//
// MindSpore passes an `AotExtra *` to `<Func>Init` (and as the `extra` argument of the
// kernel itself). The framework's own definition lives in MindSpore's source tree, not
// in the wheel's public headers, so this file declares an ABI-compatible interface:
// the virtual functions must appear in exactly this order and the data members must
// have exactly this layout, because MindSpore's object is used through this vtable.
// Kernels including it must be built with -D_GLIBCXX_USE_CXX11_ABI=0 (MindSpore's
// std::string ABI), since attribute names cross the boundary as std::string.
#ifndef EVE_MS_OPS_KERNELS_AOT_EXTRA_H_
#define EVE_MS_OPS_KERNELS_AOT_EXTRA_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

class AotKernelData {
 public:
  AotKernelData() = default;
  virtual ~AotKernelData() = default;
};

class AotExtra {
 public:
  AotExtra() = default;
  virtual ~AotExtra() = default;
  virtual bool HasAttr(std::string name) = 0;

  void SetWorkSpace(const std::vector<size_t> &workspace) { workspace_ = workspace; }
  const std::vector<size_t> &WorkSpace() const { return workspace_; }
  void SetKernelData(AotKernelData *kernel_data) { kernel_data_ = kernel_data; }
  AotKernelData *KernelData() const { return kernel_data_; }
  void DestructKernelData() {
    delete kernel_data_;
    kernel_data_ = nullptr;
  }

  // Declared in MindSpore's order (private there; access does not change the vtable).
  virtual bool GetAttrBool(std::string name) = 0;
  virtual int64_t GetAttrInt(std::string name) = 0;
  virtual float GetAttrFloat(std::string name) = 0;
  virtual std::string GetAttrStr(std::string name) = 0;
  virtual std::vector<int64_t> GetAttrIntVec(std::string name) = 0;
  virtual std::vector<float> GetAttrFloatVec(std::string name) = 0;
  virtual std::vector<std::vector<int64_t>> GetAttrInt2DVec(std::string name) = 0;
  virtual std::vector<std::vector<float>> GetAttrFloat2DVec(std::string name) = 0;

 private:
  std::vector<size_t> workspace_;
  AotKernelData *kernel_data_{nullptr};
};

#endif  // EVE_MS_OPS_KERNELS_AOT_EXTRA_H_
