// Host-side stand-in for CANN's tiling-data macros: a plain struct with set_<field> setters.
#ifndef IMG_GBPR_HOST_CHECK_TILINGDATA_BASE_H
#define IMG_GBPR_HOST_CHECK_TILINGDATA_BASE_H
#define BEGIN_TILING_DATA_DEF(name) struct name {
#define TILING_DATA_FIELD_DEF(type, field) \
    type field;                            \
    void set_##field(type value) { field = value; }
#define END_TILING_DATA_DEF }
#define REGISTER_TILING_DATA_CLASS(op, cls)
#endif  // IMG_GBPR_HOST_CHECK_TILINGDATA_BASE_H
