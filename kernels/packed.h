// Internal to kernels/: the scalar reference for packed weights (PackedWeights in kernels.h; the
// SIMD versions are Backend::packed_tile entries) and the activation corrections they use.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/backend.h"
#include "kernels/kernels.h"

namespace octet::kernels {

// The reference (scalar) packed tile of t (Q8_0 or Q4_0): defines the arithmetic.
PackedTileFn packed_reference_tile(DType t);

// The per-block offset correction corr (see PackedTileFn) of nb activation blocks.
void packed_corrections(DType t, const BlockQ8A* x, int64_t nb, int32_t* corr);

}  // namespace octet::kernels
