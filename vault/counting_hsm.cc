#include "vault/counting_hsm.h"

namespace tokenvault {

CountingHsm::CountingHsm(std::shared_ptr<hsm::Hsm> inner)
    : inner_(std::move(inner)),
      calls_(metrics::Registry::Global().Counter("tokenvault_hsm_calls_total",
                                                 "Calls to the HSM, by operation.")),
      errors_(metrics::Registry::Global().Counter(
          "tokenvault_hsm_errors_total", "HSM calls that failed (not found and exists excluded), by operation.")) {}

}  // namespace tokenvault
