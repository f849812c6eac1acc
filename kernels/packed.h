// Internal to kernels/: the scalar reference for packed weights (PackedWeights in kernels.h; the
// SIMD versions are Backend::packed_tile entries).
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/backend.h"
#include "kernels/kernels.h"

namespace octet::kernels {

// The reference (scalar) packed tile of t (Q8_0 or Q4_0): defines the arithmetic.
PackedTileFn packed_reference_tile(DType t);

// Turns nb activation block sums (QuantizeActFn's) into the blocks' offset corrections (see
// PackedTileFn), in place.
void sums_to_corrections(DType t, int32_t* sums, int64_t nb);

}  // namespace octet::kernels
