# Layers other than convolution (batch norm, ReLU, pooling, linear, resizing) and the losses: finite-difference
# gradient checks and semantic checks.
mn_test(test_layers SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_layers.c TIMEOUT 60)
mn_test(test_loss SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_loss.c TIMEOUT 60)
