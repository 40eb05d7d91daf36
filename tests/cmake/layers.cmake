# Layers other than convolution (batch norm, ReLU, pooling, linear, resizing) and the losses: finite-difference
# gradient checks and semantic checks.
mn_test(test_layers SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_layers.c TIMEOUT 60)
mn_test(test_loss SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_loss.c TIMEOUT 60)
# The BLIS sgemm wrapper: every operand orientation (and the transposed k-contiguous operand) against a loop nest.
mn_test(test_gemm SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_gemm.c TIMEOUT 60 LABELS nn)
# Winograd F(2x2x2, 3x3x3) convolution path (any padding and dilation) against the loop nests, and the per-layer
# choice (MEDNET_CONV_ALGO).
mn_test(test_winograd SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_winograd.c TIMEOUT 120 LABELS nn)
mn_test(test_winograd4 SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_winograd4.c TIMEOUT 120 LABELS nn)
mn_test(test_stem SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_stem.c TIMEOUT 120 LABELS nn)
mn_test(test_direct SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_direct.c TIMEOUT 300 LABELS nn)
