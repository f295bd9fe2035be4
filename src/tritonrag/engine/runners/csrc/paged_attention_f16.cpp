// paged_attention's kernels for f16 tensors (one translation unit per dtype: built in parallel).
#include "paged_attention_kernels.h"

namespace tritonrag::attention {
TRITONRAG_PAGED_ATTENTION_INSTANCE(f16);
}  // namespace tritonrag::attention
