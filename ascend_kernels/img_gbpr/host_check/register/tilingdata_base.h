// Host stand-in for CANN's tiling-data macros: a plain struct with set_<field> setters, SaveToBuffer
// and GetDataSize (the struct's bytes, as the real class serialises its fields in order).
#ifndef IMG_GBPR_HOST_CHECK_TILINGDATA_BASE_H
#define IMG_GBPR_HOST_CHECK_TILINGDATA_BASE_H
#include <cstddef>
#include <cstring>
#include <stdexcept>

#define BEGIN_TILING_DATA_DEF(name) \
    struct name {                   \
        void SaveToBuffer(void *buf, size_t capacity) const \
        { \
            if (capacity < sizeof(*this)) throw std::length_error("tiling data larger than its buffer"); \
            std::memcpy(buf, this, sizeof(*this)); \
        } \
        size_t GetDataSize() const { return sizeof(*this); }
#define TILING_DATA_FIELD_DEF(type, field) \
    type field;                            \
    void set_##field(type value) { field = value; }
#define END_TILING_DATA_DEF }
#define REGISTER_TILING_DATA_CLASS(op, cls)
#endif  // IMG_GBPR_HOST_CHECK_TILINGDATA_BASE_H
